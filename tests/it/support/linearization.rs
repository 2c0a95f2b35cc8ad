//! The search for a linearization shared by the Jepsen-style checkers: Wing and Gong's
//! algorithm with Lowe's memoization (the search Knossos and Porcupine use), for any
//! sequential [`Model`]. `history.rs` (a set of unique ids) and `register.rs` (a
//! compare-and-set register) each read a history, narrow its unknown operations as their
//! model allows, and hand the result to a [`Search`] with their model's initial state.
//!
//! The operations are taken in order of invocation, from a doubly linked list of call
//! and return events. The search linearizes any operation whose call comes before every
//! pending return and that the model allows in the current state, caches each set of
//! linearized operations already explored (with the state, when the state is not a
//! function of that set), and backtracks when it reaches the return of an operation it
//! has not linearized. An optional operation (a write that may never have taken effect)
//! has no return event: it may be linearized while no operation invoked after the end
//! of its window has been, or left out.

use std::collections::HashSet;

use super::history::Nanos;

/// A sequential specification, with its current state: what the search asks of it.
pub trait Model {
    /// What an operation does, as the model sees it.
    type Kind: Copy;
    /// What [`Model::undo`] needs to revert an application.
    type Undo;
    /// The state as [`Search::deepest`] reports it.
    type Snapshot;

    /// Applies `kind` if the model allows it in the current state; otherwise leaves the
    /// state as it is and returns `None`.
    fn apply(&mut self, kind: Self::Kind) -> Option<Self::Undo>;

    /// Reverts the application of `kind` that returned `undo`.
    fn undo(&mut self, kind: Self::Kind, undo: Self::Undo);

    /// The state, for the cache, when it is not a function of which operations were
    /// linearized; `None` when it is.
    fn memo(&self) -> Option<u64>;

    /// The state, for explaining a failure.
    fn snapshot(&self) -> Self::Snapshot;
}

/// An operation as the search sees it.
#[derive(Debug, Clone, Copy)]
pub struct Lin<K> {
    /// What it does.
    pub kind: K,
    /// When it was invoked.
    pub invoke: Nanos,
    /// Completion of a required operation; for an optional one, the latest point at which
    /// taking effect still matters.
    pub ret: Nanos,
    /// Must take effect (else: may, within `[invoke, ret]`, or never).
    pub required: bool,
    /// Index of the record in the history.
    pub record: usize,
}

/// Why [`Search::run`] found no linearization.
pub enum Failure {
    /// There is none.
    NoOrder,
    /// The step budget ran out first.
    Budget,
}

/// The deepest point the search reached.
pub struct Deepest<S> {
    /// How many operations were linearized.
    pub depth: usize,
    /// The operation (in [`Search::ops`]) whose return was reached before it could be
    /// placed.
    pub op: usize,
    /// The model's state then.
    pub state: S,
}

/// Wing–Gong–Lowe search over a doubly linked list of call and return events.
pub struct Search<M: Model> {
    /// The operations, in order of invocation.
    pub ops: Vec<Lin<M::Kind>>,
    model: M,
    /// Events in time order: `(op, is_return)`; node 0 is the head, the last the tail.
    events: Vec<(usize, bool)>,
    next: Vec<usize>,
    prev: Vec<usize>,
    call_node: Vec<usize>,
    ret_node: Vec<Option<usize>>,
    /// Steps taken.
    pub steps: u64,
    /// Where the search got stuck deepest, once it has.
    pub deepest: Option<Deepest<M::Snapshot>>,
}

struct Frame<U> {
    op: usize,
    undo: U,
    max_invoke: Nanos,
    max_op: Option<usize>,
}

impl<M: Model> Search<M> {
    /// A search for an order of `ops` that `model`, in its current state, allows.
    pub fn new(mut ops: Vec<Lin<M::Kind>>, model: M) -> Search<M> {
        ops.sort_by_key(|o| (o.invoke, o.record));
        let mut events: Vec<(Nanos, bool, usize)> = Vec::with_capacity(ops.len() * 2);
        for (i, o) in ops.iter().enumerate() {
            events.push((o.invoke, false, i));
            if o.required {
                events.push((o.ret, true, i));
            }
        }
        // At equal times calls come first: operations that touch are concurrent.
        events.sort_unstable();
        let n = events.len();
        let mut call_node = vec![0; ops.len()];
        let mut ret_node = vec![None; ops.len()];
        let mut nodes = Vec::with_capacity(n + 2);
        nodes.push((usize::MAX, false));
        for (k, (_, is_ret, op)) in events.iter().enumerate() {
            if *is_ret {
                ret_node[*op] = Some(k + 1);
            } else {
                call_node[*op] = k + 1;
            }
            nodes.push((*op, *is_ret));
        }
        nodes.push((usize::MAX, false));
        Search {
            ops,
            model,
            events: nodes,
            next: (1..=n + 1).chain([n + 1]).collect(),
            prev: [0].into_iter().chain(0..=n).collect(),
            call_node,
            ret_node,
            steps: 0,
            deepest: None,
        }
    }

    fn unlink(&mut self, node: usize) {
        let (p, n) = (self.prev[node], self.next[node]);
        self.next[p] = n;
        self.prev[n] = p;
    }

    fn relink(&mut self, node: usize) {
        let (p, n) = (self.prev[node], self.next[node]);
        self.next[p] = node;
        self.prev[n] = node;
    }

    /// Searches, for at most `budget` steps, for an order that linearizes every required
    /// operation.
    pub fn run(&mut self, budget: u64) -> Result<(), Failure> {
        let words = self.ops.len().div_ceil(64);
        let mut bits = vec![0u64; words];
        // Words before `full` are all ones.
        let mut full = 0usize;
        let mut cache: HashSet<Vec<u64>> = HashSet::new();
        let mut stack: Vec<Frame<M::Undo>> = Vec::new();
        let mut max_invoke: Nanos = 0;
        let mut max_op: Option<usize> = None;
        let mut required_left = self.ops.iter().filter(|o| o.required).count();
        let tail = self.events.len() - 1;
        let mut entry = self.next[0];
        loop {
            if required_left == 0 {
                return Ok(());
            }
            self.steps += 1;
            if self.steps > budget {
                return Err(Failure::Budget);
            }
            let (op, is_ret) = if entry == tail {
                // Only optional calls were left; cannot happen while a required op is
                // pending, but backtrack rather than loop.
                (usize::MAX, true)
            } else {
                self.events[entry]
            };
            if !is_ret {
                let o = self.ops[op];
                let allowed = o.required || max_invoke <= o.ret;
                if allowed && let Some(undo) = self.model.apply(o.kind) {
                    bits[op / 64] |= 1 << (op % 64);
                    while full < words && bits[full] == u64::MAX {
                        full += 1;
                    }
                    let top = max_op.map_or(op, |m| m.max(op));
                    let mut key = Vec::with_capacity(4);
                    key.push(full as u64);
                    key.extend(self.model.memo());
                    if top / 64 >= full {
                        key.extend_from_slice(&bits[full..=top / 64]);
                    }
                    if cache.insert(key) {
                        stack.push(Frame {
                            op,
                            undo,
                            max_invoke,
                            max_op,
                        });
                        max_invoke = max_invoke.max(o.invoke);
                        max_op = Some(top);
                        self.unlink(self.call_node[op]);
                        if let Some(r) = self.ret_node[op] {
                            self.unlink(r);
                        }
                        if o.required {
                            required_left -= 1;
                        }
                        entry = self.next[0];
                        continue;
                    }
                    bits[op / 64] &= !(1 << (op % 64));
                    full = full.min(op / 64);
                    self.model.undo(o.kind, undo);
                }
                entry = self.next[entry];
            } else {
                if op != usize::MAX && self.deepest.as_ref().is_none_or(|d| stack.len() > d.depth) {
                    self.deepest = Some(Deepest {
                        depth: stack.len(),
                        op,
                        state: self.model.snapshot(),
                    });
                }
                let Some(frame) = stack.pop() else {
                    return Err(Failure::NoOrder);
                };
                let op = frame.op;
                self.model.undo(self.ops[op].kind, frame.undo);
                bits[op / 64] &= !(1 << (op % 64));
                full = full.min(op / 64);
                max_invoke = frame.max_invoke;
                max_op = frame.max_op;
                if let Some(r) = self.ret_node[op] {
                    self.relink(r);
                }
                self.relink(self.call_node[op]);
                if self.ops[op].required {
                    required_left += 1;
                }
                entry = self.next[self.call_node[op]];
            }
        }
    }

    /// The operations whose windows overlap that of `ops[op]`, one line each (at most
    /// `limit`, then how many more), each as `show` writes its record, with the window an
    /// unknown one was narrowed to. `show` gives a record's text and whether its outcome
    /// was unknown.
    pub fn overlapping(
        &self,
        op: usize,
        limit: usize,
        show: impl Fn(usize) -> (String, bool),
    ) -> String {
        let stuck = self.ops[op];
        let mut overlapping: Vec<&Lin<M::Kind>> = self
            .ops
            .iter()
            .filter(|o| o.invoke <= stuck.ret && o.ret >= stuck.invoke && o.record != stuck.record)
            .collect();
        overlapping.sort_by_key(|o| o.invoke);
        let mut text = String::new();
        for o in overlapping.iter().take(limit) {
            let (record, unknown) = show(o.record);
            let narrowed = if unknown {
                format!(
                    " (narrowed: {} until {:.6} s)",
                    if o.required { "required" } else { "optional" },
                    o.ret as f64 / 1e9
                )
            } else {
                String::new()
            };
            text.push_str(&format!("\n  {record}{narrowed}"));
        }
        if overlapping.len() > limit {
            text.push_str(&format!("\n  … and {} more", overlapping.len() - limit));
        }
        text
    }
}
