//! A linearizability checker for a set of unique ids, the model of the Jepsen-style
//! catalog test (`jepsen.rs`): clients register ids (add), deregister them (remove) and
//! read the whole set.
//!
//! A history is a list of [`Record`]s: what a client asked, when it asked (invoke) and
//! when it heard back (complete), and what it heard: [`Outcome::Ok`], [`Outcome::Failed`]
//! (the request definitely had no effect) or [`Outcome::Unknown`] (a timeout or a broken
//! connection: it may take effect at any time after its invocation, or never). The
//! history is linearizable iff there is one total order of the operations that took
//! effect (every `Ok` one, any subset of the `Unknown` ones), consistent with real time
//! (an operation that completed before another was invoked comes first; operations
//! whose windows overlap may go either way), in which every successful read returns
//! exactly the set left by the operations before it.
//!
//! The ids are unique: each is registered at most once, deregistered at most once (not
//! counting attempts that definitely failed), and only after its registration was
//! acknowledged. That makes each id's life simple
//! (absent, present from its add, absent again from its remove), but it does **not**
//! let the ids be checked one by one: a read is one snapshot, so its point in the order
//! is shared by every id. Example: `add y` completes at 1; `add x` is invoked at 5 and
//! completes at 6; `remove y` is invoked at 7; a read over [2, 10] returns `{}`. For `x` alone the
//! read fits before 6, for `y` alone after 7, yet no single point explains `{}`: the set
//! was `{y}`, then `{x, y}`, then `{x}`. So the checker searches for one order of
//! everything, Wing and Gong's algorithm with Lowe's memoization (the search Knossos and
//! Porcupine use, in `linearization.rs` with the set as its model): take the operations
//! in order of invocation, linearize any one whose
//! invocation precedes every pending completion and whose effect fits the model, cache
//! each set of linearized operations already explored (the set state is a function of
//! that set), and backtrack when a completion is reached with its operation still
//! pending.
//!
//! Before the search, the unknown operations are narrowed, each step exact for this
//! model (the tests below compare the result with a brute-force search over every order
//! of small random histories):
//!
//! - an unknown add whose id no read ever saw is dropped (taking effect could only make
//!   later reads wrong); one whose id was seen must have taken effect before the first
//!   read that saw it completed, so it becomes an ordinary operation ending there;
//! - an unknown remove of an id that some read invoked after the add's end lacks must
//!   have taken effect before that read completed: again an ordinary operation; if no
//!   read lacking the id can be placed after the remove's invocation it is dropped;
//!   otherwise it stays optional, useful only up to the last such read's completion
//!   (taking effect later is the same as never).
//!
//! Besides the search, [`check`] reports the plain window violations per id with the
//! records involved (a read that saw an id before it was registered or after its
//! deregistration was acknowledged, or that missed an id acknowledged before the read
//! began and not being deregistered), because those explain a failure best.
//! [`final_state_problems`] checks the set read after the run against the acknowledged
//! writes.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use super::linearization::{self, Deepest, Failure, Model, Search};

/// Nanoseconds since the start of the run, from the monotonic clock of the process that
/// recorded the history.
pub type Nanos = u64;

/// What a client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Register (add) this id.
    Register(String),
    /// Deregister (remove) this id.
    Deregister(String),
    /// Read the whole set; holds what the read returned when it succeeded.
    Read(BTreeSet<String>),
}

/// What the client heard back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledged (a write took effect; a read returned the set).
    Ok,
    /// Definitely no effect (the request was refused or never sent).
    Failed,
    /// No answer, or one that does not say: a write may take effect at any time after
    /// its invocation, or never; a read tells nothing.
    Unknown,
}

/// One operation of one client.
#[derive(Debug, Clone)]
pub struct Record {
    /// Which client (for messages only).
    pub client: usize,
    /// Where the request went (for messages only; may be empty).
    pub via: String,
    /// What it asked.
    pub op: Op,
    /// When it was sent.
    pub invoke: Nanos,
    /// When the answer arrived (for `Unknown`: when the client gave up).
    pub complete: Nanos,
    /// What the answer said.
    pub outcome: Outcome,
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = |n: Nanos| n as f64 / 1e9;
        let outcome = match self.outcome {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::Unknown => "unknown",
        };
        write!(
            f,
            "client {} [{:.6} s, {:.6} s] {outcome} ",
            self.client,
            secs(self.invoke),
            secs(self.complete)
        )?;
        if !self.via.is_empty() {
            write!(f, "via {} ", self.via)?;
        }
        match &self.op {
            Op::Register(id) => write!(f, "register {id}"),
            Op::Deregister(id) => write!(f, "deregister {id}"),
            // `{:#}` shows every id of a read, `{}` the first few.
            Op::Read(ids) if self.outcome == Outcome::Ok && f.alternate() => {
                let all: Vec<&str> = ids.iter().map(String::as_str).collect();
                write!(f, "read -> {} ids {{{}}}", ids.len(), all.join(", "))
            }
            Op::Read(ids) if self.outcome == Outcome::Ok => {
                write!(f, "read -> {} ids {}", ids.len(), short_set(ids.iter()))
            }
            Op::Read(_) => write!(f, "read"),
        }
    }
}

fn short_set<'a>(ids: impl Iterator<Item = &'a String>) -> String {
    let ids: Vec<&String> = ids.collect();
    let shown: Vec<&str> = ids.iter().take(40).map(|s| s.as_str()).collect();
    let more = if ids.len() > shown.len() {
        format!(" … ({} more)", ids.len() - shown.len())
    } else {
        String::new()
    };
    format!("{{{}{more}}}", shown.join(", "))
}

/// What [`check`] found.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Every violation found, each with the records involved; empty when the history is
    /// linearizable.
    pub problems: Vec<String>,
    /// Successful reads, each a constraint of the search.
    pub reads_checked: usize,
    /// Operations the search had to order (after dropping failed ones and narrowing
    /// unknown ones).
    pub ops_searched: usize,
    /// Unknown writes that were narrowed into ordinary or optional operations, or
    /// dropped.
    pub unknown_required: usize,
    /// Unknown deregistrations kept as optional operations.
    pub unknown_optional: usize,
    /// Unknown writes dropped as having no visible effect.
    pub unknown_dropped: usize,
    /// Steps the search took.
    pub search_steps: u64,
}

/// The search gives up (and says so as a problem) after this many steps.
pub const SEARCH_BUDGET: u64 = 200_000_000;

/// Checks a history; see the module documentation.
pub fn check(history: &[Record]) -> Verdict {
    let mut verdict = Verdict::default();
    let ids = Ids::index(history, &mut verdict.problems);
    window_problems(history, &ids, &mut verdict.problems);
    let (ops, reads) = narrow(history, &ids, &mut verdict);
    verdict.reads_checked = reads.len();
    verdict.ops_searched = ops.len();
    let mut search = Search::new(ops, IdSet::new(reads, ids.names.len()));
    match search.run(SEARCH_BUDGET) {
        Ok(()) => {}
        Err(Failure::Budget) => verdict.problems.push(format!(
            "inconclusive: the linearizability search gave up after {SEARCH_BUDGET} steps"
        )),
        Err(Failure::NoOrder) => verdict.problems.push(explain(&search, history, &ids.names)),
    }
    verdict.search_steps = search.steps;
    verdict
}

/// Checks the set `final_ids`, read after the run healed, against the writes: every
/// acknowledged registration that was not (possibly) deregistered is there, no id whose
/// deregistration was acknowledged is, and no id that was never registered (or whose
/// registration definitely failed) is.
pub fn final_state_problems(history: &[Record], final_ids: &BTreeSet<String>) -> Vec<String> {
    let mut registered: BTreeMap<&str, &Record> = BTreeMap::new();
    let mut deregistered: BTreeMap<&str, &Record> = BTreeMap::new();
    for r in history {
        match &r.op {
            Op::Register(id) => {
                registered.insert(id, r);
            }
            Op::Deregister(id) => {
                // Attempts that definitely failed may come before the one that counts.
                let slot = deregistered.entry(id).or_insert(r);
                if slot.outcome == Outcome::Failed {
                    *slot = r;
                }
            }
            Op::Read(_) => {}
        }
    }
    let mut problems = Vec::new();
    for (id, reg) in &registered {
        let dereg = deregistered.get(id);
        let present = final_ids.contains(*id);
        let maybe_removed = dereg.is_some_and(|d| d.outcome != Outcome::Failed);
        if reg.outcome == Outcome::Ok && !maybe_removed && !present {
            problems.push(format!(
                "lost write: {id} is missing from the final read; {reg}{}",
                dereg.map(|d| format!("; {d}")).unwrap_or_default()
            ));
        }
        if let Some(d) = dereg.filter(|d| d.outcome == Outcome::Ok)
            && present
        {
            problems.push(format!(
                "deregistration undone: {id} is in the final read; {reg}; {d}"
            ));
        }
        if reg.outcome == Outcome::Failed && present {
            problems.push(format!(
                "a failed registration took effect: {id} is in the final read; {reg}"
            ));
        }
    }
    for id in final_ids {
        if !registered.contains_key(id.as_str()) {
            problems.push(format!(
                "{id} is in the final read but was never registered"
            ));
        }
    }
    problems
}

/// Ids by number, with each id's registration and deregistration.
struct Ids {
    names: Vec<String>,
    number: BTreeMap<String, u32>,
    register: Vec<Option<usize>>,
    deregister: Vec<Option<usize>>,
}

impl Ids {
    fn index(history: &[Record], problems: &mut Vec<String>) -> Ids {
        let mut ids = Ids {
            names: Vec::new(),
            number: BTreeMap::new(),
            register: Vec::new(),
            deregister: Vec::new(),
        };
        for (i, r) in history.iter().enumerate() {
            match &r.op {
                Op::Register(id) => {
                    let n = ids.number_of(id) as usize;
                    if let Some(first) = ids.register[n] {
                        problems.push(format!(
                            "history error: {id} registered twice: {}; {r}",
                            history[first]
                        ));
                    }
                    ids.register[n] = Some(i);
                }
                Op::Deregister(id) => {
                    // Attempts that definitely failed had no effect: a client may try
                    // again, and the one attempt that may have worked is the one kept.
                    let n = ids.number_of(id) as usize;
                    match ids.deregister[n].map(|first| &history[first]) {
                        Some(first) if first.outcome != Outcome::Failed => {
                            if r.outcome != Outcome::Failed {
                                problems.push(format!(
                                    "history error: {id} deregistered twice: {first}; {r}"
                                ));
                            }
                        }
                        _ => ids.deregister[n] = Some(i),
                    }
                }
                Op::Read(seen) if r.outcome == Outcome::Ok => {
                    for id in seen {
                        ids.number_of(id);
                    }
                }
                Op::Read(_) => {}
            }
        }
        ids
    }

    fn number_of(&mut self, id: &str) -> u32 {
        if let Some(n) = self.number.get(id) {
            return *n;
        }
        let n = u32::try_from(self.names.len()).expect("fewer than 2^32 ids");
        self.names.push(id.to_owned());
        self.number.insert(id.to_owned(), n);
        self.register.push(None);
        self.deregister.push(None);
        n
    }
}

/// The violations visible from one id and one read alone, with their records.
fn window_problems(history: &[Record], ids: &Ids, problems: &mut Vec<String>) {
    let mut reads: Vec<&Record> = history
        .iter()
        .filter(|r| matches!(r.op, Op::Read(_)) && r.outcome == Outcome::Ok)
        .collect();
    reads.sort_by_key(|r| r.invoke);
    for read in &reads {
        let Op::Read(seen) = &read.op else {
            continue;
        };
        for id in seen {
            let n = ids.number[id] as usize;
            let reg = ids.register[n].map(|i| &history[i]);
            let dereg = ids.deregister[n].map(|i| &history[i]);
            match reg {
                None => problems.push(format!(
                    "a read saw {id}, which was never registered: {read}"
                )),
                Some(reg) if reg.outcome == Outcome::Failed => problems.push(format!(
                    "a read saw {id}, whose registration definitely failed: {read}; {reg}"
                )),
                Some(reg) if reg.invoke > read.complete => problems.push(format!(
                    "a read saw {id} before its registration was sent: {read}; {reg}"
                )),
                Some(reg) => {
                    if let Some(d) = dereg.filter(|d| d.outcome == Outcome::Ok)
                        && d.complete < read.invoke
                    {
                        problems.push(format!(
                            "a read saw {id} after its deregistration was acknowledged: \
                             {read}; {reg}; {d}"
                        ));
                    }
                }
            }
        }
    }
    // Missing ids: every read inside [registration acknowledged, deregistration sent).
    for n in 0..ids.names.len() {
        let Some(reg) = ids.register[n].map(|i| &history[i]) else {
            continue;
        };
        if reg.outcome != Outcome::Ok {
            continue;
        }
        let dereg = ids.deregister[n]
            .map(|i| &history[i])
            .filter(|d| d.outcome != Outcome::Failed);
        let until = dereg.map_or(Nanos::MAX, |d| d.invoke);
        let first = reads.partition_point(|r| r.invoke <= reg.complete);
        for read in &reads[first..] {
            if read.invoke >= until {
                break;
            }
            let Op::Read(seen) = &read.op else {
                continue;
            };
            if read.complete < until && !seen.contains(&ids.names[n]) {
                let id = &ids.names[n];
                problems.push(format!(
                    "stale read: it missed {id}, acknowledged before it began and not \
                     being deregistered: {read}; {reg}{}",
                    dereg.map(|d| format!("; {d}")).unwrap_or_default()
                ));
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Add(u32),
    Remove(u32),
    Read(usize),
}

/// An operation as the search sees it.
type Lin = linearization::Lin<Kind>;

struct ReadSet {
    ids: Vec<u32>,
    hash: u64,
}

fn mix(id: u32) -> u64 {
    // splitmix64's finaliser: the set hash is the sum over its ids.
    let mut z = u64::from(id).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Turns the history into the search's operations (see the module documentation).
fn narrow(history: &[Record], ids: &Ids, verdict: &mut Verdict) -> (Vec<Lin>, Vec<ReadSet>) {
    let mut reads = Vec::new();
    let mut ops = Vec::new();
    // For each id, the reads that saw it; for each read, its sorted ids.
    let mut seen_by: Vec<Vec<usize>> = vec![Vec::new(); ids.names.len()];
    let mut read_records = Vec::new();
    for (i, r) in history.iter().enumerate() {
        if let (Op::Read(seen), Outcome::Ok) = (&r.op, r.outcome) {
            let mut set: Vec<u32> = seen.iter().map(|id| ids.number[id]).collect();
            set.sort_unstable();
            let hash = set.iter().fold(0u64, |h, id| h.wrapping_add(mix(*id)));
            for id in &set {
                seen_by[*id as usize].push(read_records.len());
            }
            ops.push(Lin {
                kind: Kind::Read(reads.len()),
                invoke: r.invoke,
                ret: r.complete,
                required: true,
                record: i,
            });
            reads.push(ReadSet { ids: set, hash });
            read_records.push(r);
        }
    }
    let lacks = |read: usize, id: u32| reads_lack(&reads[read], id);
    for (n, seen_by) in seen_by.iter().enumerate() {
        let id = n as u32;
        // The add: its window, if it (may have) happened.
        let add = ids.register[n].and_then(|i| {
            let r = &history[i];
            let ret = match r.outcome {
                Outcome::Ok => r.complete,
                Outcome::Failed => return None,
                Outcome::Unknown => {
                    let first_seen = seen_by.iter().map(|q| read_records[*q].complete).min();
                    let Some(seen) = first_seen else {
                        verdict.unknown_dropped += 1;
                        return None;
                    };
                    verdict.unknown_required += 1;
                    seen.max(r.invoke)
                }
            };
            Some(Lin {
                kind: Kind::Add(id),
                invoke: r.invoke,
                ret,
                required: true,
                record: i,
            })
        });
        let Some(add) = add else {
            // Never present: a remove could not change anything.
            continue;
        };
        ops.push(add);
        let Some(i) = ids.deregister[n] else {
            continue;
        };
        let r = &history[i];
        let remove = match r.outcome {
            Outcome::Ok => Some((r.complete, true)),
            Outcome::Failed => None,
            Outcome::Unknown => {
                let forced = (0..reads.len())
                    .filter(|q| read_records[*q].invoke > add.ret && lacks(*q, id))
                    .map(|q| read_records[q].complete)
                    .min();
                let useful = (0..reads.len())
                    .filter(|q| read_records[*q].complete >= r.invoke && lacks(*q, id))
                    .map(|q| read_records[q].complete)
                    .max();
                match (forced, useful) {
                    (Some(at), _) => {
                        verdict.unknown_required += 1;
                        Some((at.max(r.invoke), true))
                    }
                    (None, Some(until)) => {
                        verdict.unknown_optional += 1;
                        Some((until, false))
                    }
                    (None, None) => {
                        verdict.unknown_dropped += 1;
                        None
                    }
                }
            }
        };
        if let Some((ret, required)) = remove {
            ops.push(Lin {
                kind: Kind::Remove(id),
                invoke: r.invoke,
                ret,
                required,
                record: i,
            });
        }
    }
    (ops, reads)
}

fn reads_lack(read: &ReadSet, id: u32) -> bool {
    read.ids.binary_search(&id).is_err()
}

/// The id set as the search sees it: which ids are present, with their count and the
/// sum of their hashes, so a read is compared in one step when it differs.
struct IdSet {
    reads: Vec<ReadSet>,
    present: Vec<bool>,
    count: usize,
    hash: u64,
}

impl IdSet {
    fn new(reads: Vec<ReadSet>, ids: usize) -> IdSet {
        IdSet {
            reads,
            present: vec![false; ids],
            count: 0,
            hash: 0,
        }
    }

    /// Puts `id` in or out; whether that changed the set.
    fn set(&mut self, id: u32, present: bool) -> bool {
        let slot = &mut self.present[id as usize];
        if *slot == present {
            return false;
        }
        *slot = present;
        if present {
            self.count += 1;
            self.hash = self.hash.wrapping_add(mix(id));
        } else {
            self.count -= 1;
            self.hash = self.hash.wrapping_sub(mix(id));
        }
        true
    }
}

impl Model for IdSet {
    type Kind = Kind;
    /// Whether the operation changed the set.
    type Undo = bool;
    /// The ids present.
    type Snapshot = Vec<u32>;

    fn apply(&mut self, kind: Kind) -> Option<bool> {
        match kind {
            Kind::Add(id) => Some(self.set(id, true)),
            Kind::Remove(id) => Some(self.set(id, false)),
            Kind::Read(r) => {
                let read = &self.reads[r];
                let same = read.ids.len() == self.count
                    && read.hash == self.hash
                    && read.ids.iter().all(|id| self.present[*id as usize]);
                same.then_some(false)
            }
        }
    }

    fn undo(&mut self, kind: Kind, changed: bool) {
        if !changed {
            return;
        }
        match kind {
            Kind::Add(id) => {
                self.set(id, false);
            }
            Kind::Remove(id) => {
                self.set(id, true);
            }
            Kind::Read(_) => {}
        }
    }

    /// The set is a function of which operations were linearized.
    fn memo(&self) -> Option<u64> {
        None
    }

    fn snapshot(&self) -> Vec<u32> {
        (0..self.present.len() as u32)
            .filter(|id| self.present[*id as usize])
            .collect()
    }
}

/// Describes where the search got stuck.
fn explain(search: &Search<IdSet>, history: &[Record], names: &[String]) -> String {
    let Some(Deepest { depth, op, state }) = &search.deepest else {
        return "the consistent reads are not linearizable".into();
    };
    let stuck = search.ops[*op];
    let record = &history[stuck.record];
    let state_names: BTreeSet<String> =
        state.iter().map(|id| names[*id as usize].clone()).collect();
    let mut text = format!(
        "the consistent reads are not linearizable: no order of the operations \
         explains them. The longest explained prefix has {depth} of {} operations; \
         then no order places\n  {record}\nwhose window ends before later \
         operations begin; the set was then {} ids {}",
        search.ops.len(),
        state_names.len(),
        short_set(state_names.iter()),
    );
    if let Op::Read(seen) = &record.op {
        let extra: Vec<&String> = seen.difference(&state_names).collect();
        let missing: Vec<&String> = state_names.difference(seen).collect();
        text.push_str(&format!(
            "\n  the read has {} ids the set lacked: {}\n  and lacks {} ids the set held: {}",
            extra.len(),
            short_set(extra.into_iter()),
            missing.len(),
            short_set(missing.into_iter())
        ));
    }
    text.push_str("\noperations overlapping it:");
    text.push_str(&search.overlapping(*op, 60, |i| {
        (
            history[i].to_string(),
            history[i].outcome == Outcome::Unknown,
        )
    }));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[&str]) -> BTreeSet<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    fn rec(client: usize, op: Op, invoke: u64, complete: u64, outcome: Outcome) -> Record {
        Record {
            client,
            via: String::new(),
            op,
            invoke,
            complete,
            outcome,
        }
    }

    fn reg(id: &str, a: u64, b: u64, outcome: Outcome) -> Record {
        rec(0, Op::Register(id.into()), a, b, outcome)
    }

    fn dereg(id: &str, a: u64, b: u64, outcome: Outcome) -> Record {
        rec(0, Op::Deregister(id.into()), a, b, outcome)
    }

    fn read(ids: &[&str], a: u64, b: u64) -> Record {
        rec(1, Op::Read(set(ids)), a, b, Outcome::Ok)
    }

    fn ok(history: &[Record]) -> bool {
        let v = check(history);
        v.problems.is_empty()
    }

    /// Whether the search alone (not the window checks) accepts the history.
    fn search_ok(history: &[Record]) -> bool {
        let mut v = Verdict::default();
        let ids = Ids::index(history, &mut v.problems);
        let (ops, reads) = narrow(history, &ids, &mut v);
        let mut s = Search::new(ops, IdSet::new(reads, ids.names.len()));
        s.run(SEARCH_BUDGET).is_ok()
    }

    use Outcome::{Failed, Ok as Acked, Unknown};

    #[test]
    fn a_linearizable_history_passes() {
        let h = [
            read(&[], 0, 5),
            reg("a", 10, 20, Acked),
            read(&["a"], 15, 25), // concurrent with the add: may see it
            read(&["a"], 30, 40),
            reg("b", 45, 60, Acked),
            read(&["a"], 50, 55), // concurrent with the add of b: may miss it
            dereg("a", 70, 90, Acked),
            read(&["a", "b"], 75, 80), // concurrent with the remove: may still see a
            read(&["b"], 85, 95),
            read(&["b"], 100, 110),
        ];
        let v = check(&h);
        assert!(v.problems.is_empty(), "{:#?}", v.problems);
        assert_eq!(v.reads_checked, 7);
    }

    #[test]
    fn a_stale_read_after_an_acknowledged_write_fails() {
        let h = [reg("a", 10, 20, Acked), read(&[], 30, 40)];
        let v = check(&h);
        assert!(!v.problems.is_empty());
        assert!(
            v.problems.iter().any(|p| p.starts_with("stale read")),
            "{:#?}",
            v.problems
        );
        assert!(!search_ok(&h));
    }

    #[test]
    fn a_read_seeing_an_id_after_its_deregistration_completed_fails() {
        let h = [
            reg("a", 10, 20, Acked),
            dereg("a", 30, 40, Acked),
            read(&["a"], 50, 60),
        ];
        let v = check(&h);
        assert!(
            v.problems
                .iter()
                .any(|p| p.contains("after its deregistration was acknowledged")),
            "{:#?}",
            v.problems
        );
        assert!(!search_ok(&h));
    }

    #[test]
    fn an_unknown_write_may_appear_or_not() {
        let appears = [
            reg("a", 10, 20, Unknown),
            read(&[], 30, 40),
            read(&["a"], 50, 60),
            read(&["a"], 70, 80),
        ];
        assert!(ok(&appears));
        let never = [
            reg("a", 10, 20, Unknown),
            read(&[], 30, 40),
            read(&[], 50, 60),
        ];
        assert!(ok(&never));
        // But once seen it stays (nothing removes it).
        let flickers = [
            reg("a", 10, 20, Unknown),
            read(&["a"], 30, 40),
            read(&[], 50, 60),
        ];
        assert!(!ok(&flickers));
        // And it cannot be seen before it was sent.
        let early = [read(&["a"], 0, 5), reg("a", 10, 20, Unknown)];
        assert!(!ok(&early));
    }

    #[test]
    fn an_unknown_deregistration_may_take_effect_late_or_never() {
        let late = [
            reg("a", 0, 5, Acked),
            dereg("a", 10, 20, Unknown),
            read(&["a"], 30, 40),
            read(&[], 50, 60),
        ];
        assert!(ok(&late));
        let never = [
            reg("a", 0, 5, Acked),
            dereg("a", 10, 20, Unknown),
            read(&["a"], 30, 40),
        ];
        assert!(ok(&never));
        let comes_back = [
            reg("a", 0, 5, Acked),
            dereg("a", 10, 20, Unknown),
            read(&[], 30, 40),
            read(&["a"], 50, 60),
        ];
        assert!(!ok(&comes_back));
    }

    #[test]
    fn a_failed_write_must_not_take_effect() {
        let h = [reg("a", 10, 20, Failed), read(&["a"], 30, 40)];
        assert!(!ok(&h));
        let h = [
            reg("a", 0, 5, Acked),
            dereg("a", 10, 20, Failed),
            read(&[], 30, 40),
        ];
        assert!(!ok(&h));
        let h = [reg("a", 10, 20, Failed), read(&[], 30, 40)];
        assert!(ok(&h));
    }

    #[test]
    fn a_deregistration_may_be_retried_after_a_definite_failure() {
        let h = [
            reg("a", 0, 5, Acked),
            dereg("a", 10, 20, Failed),
            read(&["a"], 25, 30),
            dereg("a", 40, 50, Acked),
            read(&[], 60, 70),
        ];
        let v = check(&h);
        assert!(v.problems.is_empty(), "{:#?}", v.problems);
        assert!(final_state_problems(&h, &set(&[])).is_empty());
        let p = final_state_problems(&h, &set(&["a"]));
        assert!(
            p.len() == 1 && p[0].starts_with("deregistration undone"),
            "{p:?}"
        );
        // Two attempts that may both have worked are a harness error.
        let h = [
            reg("a", 0, 5, Acked),
            dereg("a", 10, 20, Unknown),
            dereg("a", 40, 50, Acked),
        ];
        assert!(check(&h).problems[0].contains("deregistered twice"));
    }

    #[test]
    fn an_id_never_registered_must_not_appear() {
        let h = [reg("a", 0, 5, Acked), read(&["a", "ghost"], 10, 20)];
        let v = check(&h);
        assert!(
            v.problems.iter().any(|p| p.contains("never registered")),
            "{:#?}",
            v.problems
        );
    }

    #[test]
    fn reads_in_real_time_order_cannot_go_back() {
        // The add is concurrent with both reads, but once a later read missed it an
        // earlier one cannot have seen it.
        let h = [
            reg("a", 0, 100, Acked),
            read(&["a"], 10, 20),
            read(&[], 30, 40),
        ];
        assert!(!ok(&h));
        let h = [
            reg("a", 0, 100, Acked),
            read(&[], 10, 20),
            read(&["a"], 30, 40),
        ];
        assert!(ok(&h));
    }

    /// The example of the module documentation: each id alone fits, the snapshot does
    /// not.
    #[test]
    fn one_read_is_one_snapshot_across_ids() {
        let h = [
            reg("y", 0, 1, Acked),
            reg("x", 5, 6, Acked),
            dereg("y", 7, 8, Acked),
            read(&[], 2, 10),
        ];
        let v = check(&h);
        assert!(
            !v.problems.iter().any(|p| p.starts_with("stale read")),
            "each id alone fits: {:#?}",
            v.problems
        );
        assert!(!v.problems.is_empty(), "but no single point explains {{}}");
        assert!(
            v.problems[0].contains("not linearizable"),
            "{}",
            v.problems[0]
        );
        // With the read seeing x the history is fine.
        let mut h = h.to_vec();
        h[3] = read(&["x"], 2, 10);
        assert!(ok(&h));
    }

    #[test]
    fn the_final_state_is_checked_against_acknowledged_writes() {
        let h = [
            reg("kept", 0, 1, Acked),
            reg("gone", 0, 1, Acked),
            dereg("gone", 2, 3, Acked),
            reg("maybe", 0, 1, Unknown),
            reg("maybe-gone", 0, 1, Acked),
            dereg("maybe-gone", 2, 3, Unknown),
            reg("refused", 0, 1, Failed),
        ];
        assert!(final_state_problems(&h, &set(&["kept", "maybe-gone"])).is_empty());
        assert!(final_state_problems(&h, &set(&["kept", "maybe"])).is_empty());
        let p = final_state_problems(&h, &set(&[]));
        assert!(
            p.len() == 1 && p[0].starts_with("lost write: kept"),
            "{p:?}"
        );
        let p = final_state_problems(&h, &set(&["kept", "gone", "refused", "nobody"]));
        assert_eq!(p.len(), 3, "{p:?}");
    }

    /// A small deterministic generator (splitmix64).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            mix(self.0 as u32) ^ mix((self.0 >> 32) as u32).rotate_left(17)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Random small histories; with `truthful`, reads report the set at a point chosen
    /// inside their window of a real execution, so the history is linearizable.
    fn random_history(rng: &mut Rng, truthful: bool) -> Vec<Record> {
        let ids = ["a", "b", "c"];
        let mut h = Vec::new();
        // (point in the execution, effect) for writes that took effect.
        let mut effects: Vec<(u64, &str, bool)> = Vec::new();
        let outcome = |rng: &mut Rng| match rng.below(4) {
            0 => Unknown,
            1 => Failed,
            _ => Acked,
        };
        for id in ids.iter().take(1 + rng.below(3) as usize) {
            let a = rng.below(20);
            let b = a + rng.below(10);
            let o = outcome(rng);
            let point = a + rng.below(b - a + 1);
            match o {
                Acked => effects.push((point, id, true)),
                Unknown if rng.below(2) == 0 => effects.push((point + rng.below(20), id, true)),
                _ => {}
            }
            h.push(reg(id, a, b, o));
            if o == Acked && rng.below(3) > 0 {
                let c = b + 1 + rng.below(10);
                let d = c + rng.below(10);
                let o = outcome(rng);
                let point = c + rng.below(d - c + 1);
                match o {
                    Acked => effects.push((point, id, false)),
                    Unknown if rng.below(2) == 0 => {
                        effects.push((point + rng.below(20), id, false))
                    }
                    _ => {}
                }
                h.push(dereg(id, c, d, o));
            }
        }
        for _ in 0..1 + rng.below(4) {
            let a = rng.below(40);
            let b = a + rng.below(15);
            let seen: Vec<&str> = if truthful {
                // Break ties the way an execution would: a read at the same instant as
                // a write sees it or not, at random.
                let point = a + rng.below(b - a + 1);
                let after = rng.below(2) == 0;
                let mut present = BTreeSet::new();
                let mut sorted = effects.clone();
                sorted.sort();
                for (t, id, add) in sorted {
                    if t < point || (t == point && after) {
                        if add {
                            present.insert(id);
                        } else {
                            present.remove(id);
                        }
                    }
                }
                present.into_iter().collect()
            } else {
                ids.iter().copied().filter(|_| rng.below(2) == 0).collect()
            };
            h.push(rec(2, Op::Read(set(&seen)), a, b, Acked));
        }
        h
    }

    /// The definition, by brute force: some order of the operations that took effect
    /// (all acknowledged ones, any unknown ones), consistent with real time, explains
    /// every successful read.
    fn brute_force(history: &[Record]) -> bool {
        let ops: Vec<&Record> = history
            .iter()
            .filter(|r| r.outcome != Failed)
            .filter(|r| !matches!(r.op, Op::Read(_)) || r.outcome == Acked)
            .collect();
        fn go(ops: &[&Record], left: &mut Vec<bool>, state: &mut BTreeSet<String>) -> bool {
            let must_precede = |p: &Record, o: &Record| p.outcome == Acked && p.complete < o.invoke;
            if !(0..ops.len()).any(|i| left[i] && ops[i].outcome == Acked) {
                return true;
            }
            for i in 0..ops.len() {
                if !left[i]
                    || (0..ops.len()).any(|j| left[j] && j != i && must_precede(ops[j], ops[i]))
                {
                    continue;
                }
                left[i] = false;
                let fits = match &ops[i].op {
                    Op::Register(id) => {
                        let added = state.insert(id.clone());
                        let r = go(ops, left, state);
                        if added {
                            state.remove(id);
                        }
                        r
                    }
                    Op::Deregister(id) => {
                        let removed = state.remove(id);
                        let r = go(ops, left, state);
                        if removed {
                            state.insert(id.clone());
                        }
                        r
                    }
                    Op::Read(seen) => *seen == *state && go(ops, left, state),
                };
                left[i] = true;
                if fits {
                    return true;
                }
                // An unknown write may also never take effect.
                if ops[i].outcome == Unknown {
                    left[i] = false;
                    let r = go(ops, left, state);
                    left[i] = true;
                    if r {
                        return true;
                    }
                }
            }
            false
        }
        go(&ops, &mut vec![true; ops.len()], &mut BTreeSet::new())
    }

    #[test]
    fn the_search_agrees_with_brute_force_on_random_histories() {
        let mut rng = Rng(7);
        let (mut yes, mut no, mut optional) = (0, 0, 0);
        for round in 0..20_000 {
            let truthful = round % 2 == 0;
            let h = random_history(&mut rng, truthful);
            let expected = brute_force(&h);
            if truthful {
                assert!(expected, "a truthful history failed brute force: {h:#?}");
            }
            assert_eq!(search_ok(&h), expected, "round {round}: {h:#?}");
            if check(&h).unknown_optional > 0 {
                optional += 1;
            }
            // The window checks only report real violations.
            if expected {
                assert!(ok(&h), "round {round}: {:#?}\n{h:#?}", check(&h).problems);
            }
            if expected {
                yes += 1;
            } else {
                no += 1;
            }
        }
        // Enough of each kind, and of the rare optional deregistrations.
        assert!(
            yes > 3000 && no > 3000 && optional > 50,
            "{yes} linearizable, {no} not, {optional} with an optional deregistration"
        );
    }

    #[test]
    fn a_long_concurrent_history_is_checked_quickly() {
        // Four clients, 4000 operations, each client's next op after its previous one.
        let mut rng = Rng(11);
        let mut h = Vec::new();
        let mut clock = [0u64; 4];
        let mut live: Vec<Vec<String>> = vec![Vec::new(); 4];
        let mut truth: Vec<(u64, String, bool)> = Vec::new();
        let mut reads = Vec::new();
        for n in 0..4000 {
            let c = rng.below(4) as usize;
            let a = clock[c] + rng.below(5);
            let b = a + 1 + rng.below(20);
            clock[c] = b + 1;
            let point = a + rng.below(b - a);
            match rng.below(3) {
                0 => {
                    let id = format!("svc-{c}-{n}");
                    truth.push((point, id.clone(), true));
                    live[c].push(id.clone());
                    h.push(rec(c, Op::Register(id), a, b, Acked));
                }
                1 if !live[c].is_empty() => {
                    let pick = rng.below(live[c].len() as u64) as usize;
                    let id = live[c].swap_remove(pick);
                    truth.push((point, id.clone(), false));
                    h.push(rec(c, Op::Deregister(id), a, b, Acked));
                }
                _ => {
                    // The set is filled in below, from the point chosen here.
                    reads.push(h.len());
                    truth.push((point, format!("#read{}", h.len()), true));
                    h.push(rec(c, Op::Read(BTreeSet::new()), a, b, Acked));
                }
            }
        }
        truth.sort();
        let mut present = BTreeSet::new();
        for (_, id, add) in &truth {
            if let Some(i) = id.strip_prefix("#read") {
                h[i.parse::<usize>().unwrap()].op = Op::Read(present.clone());
            } else if *add {
                present.insert(id.clone());
            } else {
                present.remove(id);
            }
        }
        let started = std::time::Instant::now();
        let v = check(&h);
        assert!(v.problems.is_empty(), "{:#?}", v.problems);
        assert!(v.reads_checked > 1000);
        eprintln!(
            "{} ops, {} steps in {:?}",
            v.ops_searched,
            v.search_steps,
            started.elapsed()
        );
        // Make one read stale: the checker must notice.
        let i = reads[reads.len() / 2];
        if let Op::Read(seen) = &mut h[i].op {
            seen.insert("svc-9-9".into());
        }
        assert!(!check(&h).problems.is_empty());
    }
}
