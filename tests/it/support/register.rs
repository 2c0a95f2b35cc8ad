//! A linearizability checker for a compare-and-set register, the model of the KV
//! workload of the Jepsen-style test (`jepsen.rs`): clients read one key with
//! `?consistent` (its value and `ModifyIndex`) and write new unique values with
//! `PUT ?cas=<the ModifyIndex they last read>`.
//!
//! **The model** is Consul's semantics for one key that nothing deletes. The register is
//! *absent* until the first write, then holds a value and its *version*, the
//! `ModifyIndex`: the Raft index of the write that set it. A read returns the state (404
//! for absent). `cas(N, v)` succeeds (`true`) iff `N` is the current version, `N = 0`
//! meaning absent; the state becomes `v` at a version greater than every earlier one
//! (Raft indexes grow). Any other `N` fails (`false`) and changes nothing.
//!
//! A client cannot learn the version its own write got (the answer is only `true`), so
//! the checker maps versions to writes through the reads. Every value is written once,
//! so a value names one write and that write's version: all reads that return a value
//! must return the same `ModifyIndex` with it, and no two values may share one. A cas
//! names a version its client read, so it names the value read with it: `cas(N, v)`
//! succeeds iff the state is the value read at `N` (or absent, for 0). A value no read
//! ever returned has a version no cas names (the checker reports a cas naming an index
//! that no read returned as a history error): once such a value is the state, no read
//! and no cas can succeed, and only refusals fit. That makes the state a function of
//! the value alone, and the search works on values. The growth of versions is checked
//! on its own: a write that took effect from version `N`, and was read at `J`, needs
//! `J > N`.
//!
//! **Outcomes.** [`Outcome::Ok`] is a read that returned or a cas answered `true`;
//! [`Outcome::Refused`] a cas answered `false`, which took effect as a refusal: at its
//! point in the order the version was not `N`; [`Outcome::Failed`] definitely had no
//! effect (refused before it reached the log, or never sent); [`Outcome::Unknown`] (a
//! timeout, a 5xx, a closed connection) may have taken effect at any point after its
//! invocation, or never. Failed operations and reads that did not return are left out.
//! The history is linearizable iff one total order of the remaining operations (every
//! `Ok` and `Refused` one, any subset of the `Unknown` ones), consistent with real time
//! (an operation that completed before another was invoked comes first), satisfies the
//! model.
//!
//! **The search** is Wing and Gong's with Lowe's memoization (the one Knossos and
//! Porcupine use, in `linearization.rs` with the register as its model, as `history.rs`
//! uses it with a set): take the operations in order of invocation,
//! linearize any whose invocation precedes every pending completion and that the model
//! allows in the current state, cache each (set of linearized operations, state)
//! already explored, and backtrack when a completion is reached with its operation still
//! pending. Before it, unknown writes are narrowed, each step exact:
//!
//! - an unknown cas whose value some read returned took effect, before that read (or an
//!   acknowledged cas naming its version) completed: it becomes an ordinary operation
//!   ending at the earliest such completion;
//! - an unknown cas whose value no read returned leaves the register stuck if it takes
//!   effect (see above), after which only refusals fit: it stays optional, useful only
//!   up to the last completion of a refused cas, and is dropped if no refusal completes
//!   after its invocation.
//!
//! The unit tests below compare [`check`] with a brute-force search over every order of
//! small random histories.
//!
//! Besides the search, [`check`] reports what is visible without it, with the records
//! involved, since that explains a failure best: a read of a value no one wrote (or whose
//! cas failed or was refused, or that was sent after the read), one value at two
//! versions or two values at one, a version that did not grow, two acknowledged cas from
//! the same version, and stale reads (a read that began after a cas from `N` was
//! acknowledged and returned a version not above `N`, or below the version the cas's
//! value was read at; a read that returned an older version than a read completed
//! before it began). None of these fires on a linearizable history.
//!
//! The test keeps each history small by moving to a new key every few seconds: a
//! history is linearizable iff each key's is (linearizability is local), and
//! [`check_each_key`] checks them one by one.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

pub use super::history::Nanos;
use super::linearization::{self, Deepest, Failure, Model, Search};

/// What a successful read returned for a present key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// The value.
    pub value: String,
    /// Its `ModifyIndex`.
    pub index: u64,
}

/// What a client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// A `?consistent` read; once it returned, what it found: `None` for an absent key.
    Read(Option<Version>),
    /// Write `value` if the key's `ModifyIndex` is `expect` (0: if the key is absent).
    Cas {
        /// The version the write names.
        expect: u64,
        /// The new value, unique in the history.
        value: String,
    },
}

/// What the client heard back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A read returned; a cas answered `true`.
    Ok,
    /// A cas answered `false`: it was ordered, and its version was not the current one.
    Refused,
    /// Definitely no effect (refused before it reached the log, or never sent).
    Failed,
    /// No answer, or one that does not say: a cas may take effect at any time after its
    /// invocation, or never; a read tells nothing.
    Unknown,
}

/// One operation of one client on one key.
#[derive(Debug, Clone)]
pub struct Record {
    /// Which client (for messages only).
    pub client: usize,
    /// The key: [`check_each_key`] checks each key's history on its own.
    pub key: String,
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
        let outcome = match (&self.op, self.outcome) {
            (Op::Cas { .. }, Outcome::Ok) => "true",
            (Op::Cas { .. }, Outcome::Refused) => "false",
            (_, Outcome::Ok) => "ok",
            (_, Outcome::Refused) => "refused",
            (_, Outcome::Failed) => "failed",
            (_, Outcome::Unknown) => "unknown",
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
        write!(f, "{}: ", self.key)?;
        match &self.op {
            Op::Read(_) if self.outcome != Outcome::Ok => write!(f, "read"),
            Op::Read(None) => write!(f, "read -> absent"),
            Op::Read(Some(v)) => write!(f, "read -> {} @ {}", v.value, v.index),
            Op::Cas { expect, value } => write!(f, "cas {expect} -> {value}"),
        }
    }
}

/// What [`check`] found.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Every violation found, each with the records involved; empty when the history is
    /// linearizable.
    pub problems: Vec<String>,
    /// Keys checked.
    pub keys: usize,
    /// Successful reads, each a constraint of the search.
    pub reads_checked: usize,
    /// Operations the search had to order (after dropping failed ones and narrowing
    /// unknown ones).
    pub ops_searched: usize,
    /// Unknown cas whose value was read: they took effect.
    pub unknown_required: usize,
    /// Unknown cas kept as optional operations.
    pub unknown_optional: usize,
    /// Unknown cas dropped as having no visible effect.
    pub unknown_dropped: usize,
    /// Steps the search took.
    pub search_steps: u64,
}

/// The search gives up (and says so as a problem) after this many steps per key.
pub const SEARCH_BUDGET: u64 = 100_000_000;

/// Checks the history of each key on its own and adds the verdicts up.
pub fn check_each_key(history: &[Record]) -> Verdict {
    let mut keys: BTreeMap<&str, Vec<Record>> = BTreeMap::new();
    for r in history {
        keys.entry(&r.key).or_default().push(r.clone());
    }
    let mut total = Verdict::default();
    for (key, mut records) in keys {
        records.sort_by_key(|r| r.invoke);
        let v = check(&records);
        total
            .problems
            .extend(v.problems.into_iter().map(|p| format!("key {key}: {p}")));
        total.keys += 1;
        total.reads_checked += v.reads_checked;
        total.ops_searched += v.ops_searched;
        total.unknown_required += v.unknown_required;
        total.unknown_optional += v.unknown_optional;
        total.unknown_dropped += v.unknown_dropped;
        total.search_steps += v.search_steps;
    }
    total
}

/// Checks the history of one key; see the module documentation.
pub fn check(history: &[Record]) -> Verdict {
    let mut verdict = Verdict {
        keys: 1,
        ..Verdict::default()
    };
    let values = Values::index(history, &mut verdict.problems);
    visible_problems(history, &values, &mut verdict.problems);
    let ops = narrow(history, &values, &mut verdict);
    verdict.reads_checked = history
        .iter()
        .filter(|r| matches!(r.op, Op::Read(_)) && r.outcome == Outcome::Ok)
        .count();
    verdict.ops_searched = ops.len();
    let mut search = Search::new(ops, Register { state: ABSENT });
    match search.run(SEARCH_BUDGET) {
        Ok(()) => {}
        Err(Failure::Budget) => verdict.problems.push(format!(
            "inconclusive: the linearizability search gave up after {SEARCH_BUDGET} steps"
        )),
        Err(Failure::NoOrder) => verdict.problems.push(explain(&search, history, &values)),
    }
    verdict.search_steps = search.steps;
    verdict
}

/// The state the register is in: [`ABSENT`], or the number of a written value.
type State = u32;
const ABSENT: State = 0;
/// What a read of a value no client wrote wants: a state that never occurs.
const GHOST: State = u32::MAX;
/// What a cas naming a version no read returned expects: a state that never occurs.
const NOWHERE: State = u32::MAX - 1;

/// The written values by number (from 1), and the versions reads returned them at.
struct Values {
    /// Value `n` is `names[n - 1]`, written by record `writes[n - 1]`.
    names: Vec<String>,
    writes: Vec<usize>,
    number: HashMap<String, State>,
    /// The version reads returned with each value (from 1), and one such read.
    version_of: HashMap<State, (u64, usize)>,
    /// The value reads returned at each version, and one such read.
    value_at: BTreeMap<u64, (State, usize)>,
}

impl Values {
    fn index(history: &[Record], problems: &mut Vec<String>) -> Values {
        let mut values = Values {
            names: Vec::new(),
            writes: Vec::new(),
            number: HashMap::new(),
            version_of: HashMap::new(),
            value_at: BTreeMap::new(),
        };
        for (i, r) in history.iter().enumerate() {
            if let Op::Cas { value, .. } = &r.op {
                if let Some(n) = values.number.get(value) {
                    problems.push(format!(
                        "history error: {value} written twice: {}; {r}",
                        history[values.writes[*n as usize - 1]]
                    ));
                    continue;
                }
                values.names.push(value.clone());
                values.writes.push(i);
                values
                    .number
                    .insert(value.clone(), values.names.len() as State);
            }
        }
        for (i, r) in history.iter().enumerate() {
            let (Op::Read(Some(seen)), Outcome::Ok) = (&r.op, r.outcome) else {
                continue;
            };
            let n = values.state_of(&seen.value);
            if n != GHOST {
                match values.version_of.get(&n) {
                    Some((index, j)) if *index != seen.index => {
                        problems.push(format!("one value at two versions: {}; {r}", history[*j]))
                    }
                    Some(_) => {}
                    None => {
                        values.version_of.insert(n, (seen.index, i));
                    }
                }
            }
            match values.value_at.get(&seen.index) {
                Some((m, j)) if *m != n || (n == GHOST && r.op != history[*j].op) => {
                    problems.push(format!("two values at one version: {}; {r}", history[*j]))
                }
                Some(_) => {}
                None => {
                    values.value_at.insert(seen.index, (n, i));
                }
            }
        }
        values
    }

    fn state_of(&self, value: &str) -> State {
        self.number.get(value).copied().unwrap_or(GHOST)
    }

    /// The state a cas naming version `expect` needs.
    fn expected(&self, expect: u64) -> State {
        if expect == 0 {
            return ABSENT;
        }
        self.value_at.get(&expect).map_or(NOWHERE, |(n, _)| *n)
    }

    fn name(&self, state: State) -> String {
        match state {
            ABSENT => "absent".into(),
            GHOST | NOWHERE => "(none)".into(),
            n => {
                let name = &self.names[n as usize - 1];
                match self.version_of.get(&n) {
                    Some((index, _)) => format!("{name} @ {index}"),
                    None => format!("{name} (never read)"),
                }
            }
        }
    }
}

/// The version a successful read returned (0 for absent).
fn read_version(r: &Record) -> Option<u64> {
    match (&r.op, r.outcome) {
        (Op::Read(seen), Outcome::Ok) => Some(seen.as_ref().map_or(0, |v| v.index)),
        _ => None,
    }
}

/// The violations visible without the search (see the module documentation).
fn visible_problems(history: &[Record], values: &Values, problems: &mut Vec<String>) {
    let reads: Vec<&Record> = history
        .iter()
        .filter(|r| read_version(r).is_some())
        .collect();
    for read in &reads {
        let Op::Read(Some(seen)) = &read.op else {
            continue;
        };
        let n = values.state_of(&seen.value);
        if n == GHOST {
            problems.push(format!(
                "a read returned {}, which no client wrote: {read}",
                seen.value
            ));
            continue;
        }
        let write = &history[values.writes[n as usize - 1]];
        match write.outcome {
            Outcome::Failed => problems.push(format!(
                "a read returned {}, whose write definitely failed: {read}; {write}",
                seen.value
            )),
            Outcome::Refused => problems.push(format!(
                "a read returned {}, whose cas was answered false: {read}; {write}",
                seen.value
            )),
            _ if write.invoke > read.complete => problems.push(format!(
                "a read returned {} before its write was sent: {read}; {write}",
                seen.value
            )),
            _ => {}
        }
    }
    let mut acknowledged: BTreeMap<u64, &Record> = BTreeMap::new();
    // For each read, the acknowledged cas that completed before it began and leaves the
    // highest floor under the versions it may return.
    let mut floors: Vec<Option<(u64, &Record)>> = vec![None; reads.len()];
    for (i, w) in history.iter().enumerate() {
        let Op::Cas { expect, value } = &w.op else {
            continue;
        };
        let n = values.state_of(value);
        if values.writes.get(n as usize - 1) != Some(&i) {
            continue;
        }
        // A write that was read took effect, and versions grow.
        if let Some((index, j)) = values.version_of.get(&n)
            && index <= expect
        {
            problems.push(format!(
                "the version did not grow: a cas from {expect} was read at {index}: {w}; {}",
                history[*j]
            ));
        }
        if w.outcome != Outcome::Ok {
            continue;
        }
        if let Some(first) = acknowledged.insert(*expect, w) {
            problems.push(format!(
                "two cas from version {expect} both acknowledged: {first}; {w}"
            ));
        }
        // Every read that began after the acknowledgement returns a later version.
        let floor = values
            .version_of
            .get(&n)
            .map_or(expect + 1, |(index, _)| (*index).max(expect + 1));
        for (read, slot) in reads.iter().zip(&mut floors) {
            if read.invoke > w.complete && slot.is_none_or(|(f, _)| f < floor) {
                *slot = Some((floor, w));
            }
        }
    }
    for (read, floor) in reads.iter().zip(floors) {
        let index = read_version(read).unwrap_or_default();
        if let Some((floor, w)) = floor
            && index < floor
        {
            problems.push(format!(
                "stale read: it returned version {index}, older than a cas acknowledged \
                 before it began: {read}; {w}"
            ));
        }
    }
    // Reads in real-time order never go back.
    let mut by_complete = reads.clone();
    by_complete.sort_by_key(|r| r.complete);
    let mut sorted = reads;
    sorted.sort_by_key(|r| r.invoke);
    let mut newest: Option<&Record> = None;
    let mut done = by_complete.iter().peekable();
    for read in sorted {
        while let Some(r) = done.next_if(|r| r.complete < read.invoke) {
            if newest.is_none_or(|n| read_version(n) < read_version(r)) {
                newest = Some(r);
            }
        }
        if let Some(n) = newest
            && read_version(read) < read_version(n)
        {
            problems.push(format!(
                "stale read: it returned an older version than a read completed before \
                 it began: {read}; {n}"
            ));
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    /// A read that returned this state.
    Read(State),
    /// An effective cas from one state to another.
    Cas(State, State),
    /// A refused cas: the state was not this one.
    Refused(State),
}

/// An operation as the search sees it.
type Lin = linearization::Lin<Kind>;

/// Turns the history into the search's operations (see the module documentation).
fn narrow(history: &[Record], values: &Values, verdict: &mut Verdict) -> Vec<Lin> {
    let mut ops = Vec::new();
    let refusals: Vec<&Record> = history
        .iter()
        .filter(|r| matches!(r.op, Op::Cas { .. }) && r.outcome == Outcome::Refused)
        .collect();
    for (i, r) in history.iter().enumerate() {
        let lin = |kind, ret, required| Lin {
            kind,
            invoke: r.invoke,
            ret,
            required,
            record: i,
        };
        match (&r.op, r.outcome) {
            (_, Outcome::Failed) | (Op::Read(_), Outcome::Unknown | Outcome::Refused) => {}
            (Op::Read(seen), Outcome::Ok) => {
                let want = seen.as_ref().map_or(ABSENT, |v| values.state_of(&v.value));
                ops.push(lin(Kind::Read(want), r.complete, true));
            }
            (Op::Cas { expect, value }, outcome) => {
                let from = values.expected(*expect);
                if *expect != 0 && from == NOWHERE {
                    verdict.problems.push(format!(
                        "history error: a cas names version {expect}, which no read \
                         returned: {r}"
                    ));
                }
                let to = values.state_of(value);
                if values.writes.get(to as usize - 1) != Some(&i) {
                    // A second write of a value (a history error): never effective.
                    continue;
                }
                match outcome {
                    Outcome::Ok => ops.push(lin(Kind::Cas(from, to), r.complete, true)),
                    Outcome::Refused => ops.push(lin(Kind::Refused(from), r.complete, true)),
                    _ => {
                        let read = values.version_of.get(&to).map(|(index, _)| *index);
                        let seen = history
                            .iter()
                            .filter(|q| match (&q.op, q.outcome) {
                                (Op::Read(Some(v)), Outcome::Ok) => v.value == *value,
                                (Op::Cas { expect, .. }, Outcome::Ok) => Some(*expect) == read,
                                _ => false,
                            })
                            .map(|q| q.complete)
                            .min();
                        let useful = refusals
                            .iter()
                            .filter(|q| q.complete >= r.invoke)
                            .map(|q| q.complete)
                            .max();
                        match (seen, useful) {
                            (Some(at), _) => {
                                verdict.unknown_required += 1;
                                ops.push(lin(Kind::Cas(from, to), at.max(r.invoke), true));
                            }
                            (None, Some(until)) => {
                                verdict.unknown_optional += 1;
                                ops.push(lin(Kind::Cas(from, to), until, false));
                            }
                            (None, None) => verdict.unknown_dropped += 1,
                        }
                    }
                }
            }
        }
    }
    ops
}

/// The register as the search sees it: the value it holds.
struct Register {
    state: State,
}

impl Model for Register {
    type Kind = Kind;
    /// The state before.
    type Undo = State;
    type Snapshot = State;

    fn apply(&mut self, kind: Kind) -> Option<State> {
        let after = match kind {
            Kind::Read(want) => (self.state == want).then_some(self.state),
            Kind::Cas(from, to) => (self.state == from).then_some(to),
            Kind::Refused(from) => (self.state != from).then_some(self.state),
        }?;
        Some(std::mem::replace(&mut self.state, after))
    }

    fn undo(&mut self, _: Kind, before: State) {
        self.state = before;
    }

    /// Optional writes make the state more than a function of which operations were
    /// linearized: the cache keeps it too.
    fn memo(&self) -> Option<u64> {
        Some(u64::from(self.state))
    }

    fn snapshot(&self) -> State {
        self.state
    }
}

/// Describes where the search got stuck.
fn explain(search: &Search<Register>, history: &[Record], values: &Values) -> String {
    let Some(Deepest { depth, op, state }) = search.deepest else {
        return "the register's history is not linearizable".into();
    };
    let stuck = search.ops[op];
    let mut text = format!(
        "the register's history is not linearizable: no order of the operations \
         explains it. The longest explained prefix has {depth} of {} operations; \
         then no order places\n  {}\nwhose window ends before later operations \
         begin; the register then held {}\noperations overlapping it:",
        search.ops.len(),
        history[stuck.record],
        values.name(state),
    );
    text.push_str(&search.overlapping(op, 40, |i| {
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

    use Outcome::{Failed, Ok as Acked, Refused, Unknown};

    fn rec(client: usize, op: Op, invoke: u64, complete: u64, outcome: Outcome) -> Record {
        Record {
            client,
            key: "k".into(),
            via: String::new(),
            op,
            invoke,
            complete,
            outcome,
        }
    }

    fn read(seen: Option<(&str, u64)>, a: u64, b: u64) -> Record {
        let seen = seen.map(|(value, index)| Version {
            value: value.into(),
            index,
        });
        rec(1, Op::Read(seen), a, b, Acked)
    }

    fn cas(expect: u64, value: &str, a: u64, b: u64, outcome: Outcome) -> Record {
        let op = Op::Cas {
            expect,
            value: value.into(),
        };
        rec(0, op, a, b, outcome)
    }

    fn problems(history: &[Record]) -> Vec<String> {
        check(history).problems
    }

    fn ok(history: &[Record]) -> bool {
        problems(history).is_empty()
    }

    /// Whether the search alone (not the visible checks) accepts the history.
    fn search_ok(history: &[Record]) -> bool {
        let mut v = Verdict::default();
        let values = Values::index(history, &mut v.problems);
        let ops = narrow(history, &values, &mut v);
        Search::new(ops, Register { state: ABSENT })
            .run(SEARCH_BUDGET)
            .is_ok()
    }

    fn has(problems: &[String], text: &str) -> bool {
        problems.iter().any(|p| p.contains(text))
    }

    #[test]
    fn a_linearizable_history_passes() {
        let h = [
            read(None, 0, 5),
            cas(0, "a", 10, 20, Acked),
            read(Some(("a", 7)), 15, 25), // concurrent with the create: may see it
            cas(7, "b", 30, 40, Acked),
            cas(7, "c", 32, 42, Refused), // lost the race
            read(Some(("a", 7)), 31, 35), // concurrent with the winner: may miss it
            read(Some(("b", 9)), 45, 50),
            cas(9, "d", 55, 60, Acked),
            cas(9, "e", 65, 70, Refused), // from an old version: refused
            read(Some(("d", 12)), 75, 80),
        ];
        let v = check(&h);
        assert!(v.problems.is_empty(), "{:#?}", v.problems);
        assert_eq!(v.reads_checked, 5);
    }

    #[test]
    fn concurrent_writers_may_win_in_either_order() {
        // Both creates overlap; b won, so a must have been refused (or come never).
        let h = [
            cas(0, "a", 0, 20, Refused),
            cas(0, "b", 5, 15, Acked),
            read(Some(("b", 3)), 25, 30),
        ];
        assert!(ok(&h));
        // Both acknowledged: one of them cannot have found the key absent.
        let h = [
            cas(0, "a", 0, 20, Acked),
            cas(0, "b", 5, 15, Acked),
            read(Some(("b", 3)), 25, 30),
        ];
        let p = problems(&h);
        assert!(
            has(&p, "two cas from version 0 both acknowledged"),
            "{p:#?}"
        );
        assert!(!search_ok(&h));
    }

    #[test]
    fn a_stale_read_after_an_acknowledged_cas_fails() {
        let h = [
            cas(0, "a", 0, 5, Acked),
            read(Some(("a", 4)), 10, 15),
            cas(4, "b", 20, 30, Acked),
            read(Some(("a", 4)), 35, 40),
        ];
        let p = problems(&h);
        assert!(has(&p, "stale read"), "{p:#?}");
        assert!(has(&p, "not linearizable"), "{p:#?}");
        assert!(!search_ok(&h));
        // Also when a later read returns the new value.
        let mut later = h.to_vec();
        later.push(read(Some(("b", 6)), 45, 50));
        assert!(has(&problems(&later), "stale read"));
        assert!(!search_ok(&later));
        // An absent key after an acknowledged create.
        let h = [cas(0, "a", 0, 5, Acked), read(None, 10, 15)];
        assert!(has(&problems(&h), "stale read"));
        assert!(!search_ok(&h));
    }

    #[test]
    fn reads_in_real_time_order_cannot_go_back() {
        let h = [
            cas(0, "a", 0, 5, Acked),
            read(Some(("a", 4)), 10, 15),
            cas(4, "b", 20, 100, Acked),
            read(Some(("b", 6)), 30, 40),
            read(Some(("a", 4)), 50, 60),
        ];
        let p = problems(&h);
        assert!(has(&p, "older version than a read completed"), "{p:#?}");
        assert!(!search_ok(&h));
        // Concurrent reads may see either.
        let h = [
            cas(0, "a", 0, 5, Acked),
            read(Some(("a", 4)), 10, 15),
            cas(4, "b", 20, 100, Acked),
            read(Some(("b", 6)), 30, 40),
            read(Some(("a", 4)), 35, 60),
        ];
        assert!(ok(&h));
    }

    #[test]
    fn two_cas_from_the_same_version_cannot_both_be_acknowledged() {
        let h = [
            cas(0, "a", 0, 5, Acked),
            read(Some(("a", 4)), 10, 15),
            cas(4, "b", 20, 30, Acked),
            cas(4, "c", 40, 50, Acked),
        ];
        let p = problems(&h);
        assert!(has(&p, "two cas from version 4"), "{p:#?}");
        assert!(!search_ok(&h));
        // The second one refused is right.
        let mut h = h.to_vec();
        h[3].outcome = Refused;
        assert!(ok(&h));
    }

    #[test]
    fn a_read_of_a_value_never_written_fails() {
        let h = [cas(0, "a", 0, 5, Acked), read(Some(("ghost", 4)), 10, 15)];
        let p = problems(&h);
        assert!(has(&p, "which no client wrote"), "{p:#?}");
        assert!(!search_ok(&h));
        let h = [read(Some(("ghost", 4)), 10, 15)];
        assert!(!search_ok(&h));
    }

    #[test]
    fn a_refused_or_failed_cas_has_no_effect() {
        for outcome in [Refused, Failed] {
            let h = [
                cas(0, "a", 0, 5, Acked),
                read(Some(("a", 4)), 10, 15),
                cas(0, "b", 20, 30, outcome),
                read(Some(("b", 6)), 35, 40),
            ];
            assert!(!ok(&h), "{outcome:?}");
            assert!(!search_ok(&h), "{outcome:?}");
        }
    }

    #[test]
    fn a_refusal_needs_another_version() {
        // Nothing else wrote: a cas from the current version must succeed.
        let h = [
            cas(0, "a", 0, 5, Acked),
            read(Some(("a", 4)), 10, 15),
            cas(4, "b", 20, 30, Refused),
        ];
        assert!(!ok(&h));
        // A concurrent write explains it, even one whose answer was lost and whose
        // value no one read.
        let h = [
            cas(0, "a", 0, 5, Acked),
            read(Some(("a", 4)), 10, 15),
            cas(4, "c", 18, 40, Unknown),
            cas(4, "b", 20, 30, Refused),
        ];
        let v = check(&h);
        assert!(v.problems.is_empty(), "{:#?}", v.problems);
        assert_eq!(v.unknown_optional, 1);
        // But not one sent after the refusal completed.
        let h = [
            cas(0, "a", 0, 5, Acked),
            read(Some(("a", 4)), 10, 15),
            cas(4, "b", 20, 30, Refused),
            cas(4, "c", 35, 40, Unknown),
        ];
        let v = check(&h);
        assert!(!v.problems.is_empty());
        assert_eq!(v.unknown_dropped, 1);
        // A create refused on an absent key.
        let h = [cas(0, "a", 0, 5, Refused), read(None, 10, 15)];
        assert!(!ok(&h));
    }

    #[test]
    fn an_unknown_cas_may_take_effect_late_or_never() {
        let late = [
            cas(0, "a", 0, 5, Unknown),
            read(None, 10, 15),
            read(Some(("a", 9)), 20, 25),
        ];
        let v = check(&late);
        assert!(v.problems.is_empty(), "{:#?}", v.problems);
        assert_eq!(v.unknown_required, 1);
        let never = [
            cas(0, "a", 0, 5, Unknown),
            read(None, 10, 15),
            cas(0, "b", 20, 25, Acked),
            read(Some(("b", 9)), 30, 35),
        ];
        let v = check(&never);
        assert!(v.problems.is_empty(), "{:#?}", v.problems);
        assert_eq!(v.unknown_dropped, 1);
        // Once read it stays until a cas from its version.
        let flickers = [
            cas(0, "a", 0, 5, Unknown),
            read(Some(("a", 9)), 10, 15),
            read(None, 20, 25),
        ];
        assert!(!ok(&flickers));
        // And it cannot be read before it was sent.
        let early = [read(Some(("a", 9)), 0, 5), cas(0, "a", 10, 15, Unknown)];
        assert!(has(&problems(&early), "before its write was sent"));
        assert!(!search_ok(&early));
    }

    #[test]
    fn versions_are_one_to_one_with_values_and_grow() {
        let h = [
            cas(0, "a", 0, 5, Acked),
            read(Some(("a", 4)), 10, 15),
            read(Some(("a", 5)), 20, 25),
        ];
        assert!(has(&problems(&h), "one value at two versions"));
        let h = [
            cas(0, "a", 0, 5, Acked),
            read(Some(("a", 4)), 10, 15),
            cas(4, "b", 20, 25, Acked),
            read(Some(("b", 4)), 30, 35),
        ];
        assert!(has(&problems(&h), "two values at one version"));
        let h = [
            cas(0, "a", 0, 5, Acked),
            read(Some(("a", 4)), 10, 15),
            cas(4, "b", 20, 25, Acked),
            read(Some(("b", 3)), 30, 35),
        ];
        let p = problems(&h);
        assert!(has(&p, "the version did not grow"), "{p:#?}");
    }

    #[test]
    fn each_key_is_checked_on_its_own() {
        let mut h = vec![
            cas(0, "a", 0, 5, Acked),
            read(Some(("a", 4)), 10, 15),
            cas(0, "b", 0, 5, Acked),
            read(Some(("b", 6)), 10, 15),
        ];
        h[2].key = "other".into();
        h[3].key = "other".into();
        let v = check_each_key(&h);
        assert!(v.problems.is_empty(), "{:#?}", v.problems);
        assert_eq!((v.keys, v.reads_checked), (2, 2));
        // The same history on one key: two creates acknowledged.
        assert!(!ok(&h
            .iter()
            .cloned()
            .map(|mut r| {
                r.key = "k".into();
                r
            })
            .collect::<Vec<_>>()));
    }

    /// A small deterministic generator (splitmix64).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// A small history of two or three clients, produced by a real register executing
    /// each operation at a point inside its window (an unknown one possibly later, or
    /// never); then, unless `truthful`, one thing in it is changed at random.
    fn random_history(rng: &mut Rng, truthful: bool) -> Vec<Record> {
        struct Planned {
            client: usize,
            cas: bool,
            a: u64,
            b: u64,
            /// When it takes effect (`None`: never).
            at: Option<(u64, u64)>,
            outcome: Outcome,
        }
        let clients = 2 + rng.below(2) as usize;
        let mut plan = Vec::new();
        for client in 0..clients {
            let mut clock = rng.below(10);
            for _ in 0..1 + rng.below(3) {
                let a = clock + rng.below(5);
                let b = a + rng.below(15);
                clock = b + 1;
                let cas = rng.below(2) == 0;
                let outcome = match rng.below(8) {
                    0 => Failed,
                    1 | 2 => Unknown,
                    _ => Acked,
                };
                let point = a + rng.below(b - a + 1);
                let at = match outcome {
                    Failed => None,
                    Unknown if !cas => None,
                    Unknown => match rng.below(3) {
                        0 => None,
                        1 => Some(point),
                        _ => Some(point + rng.below(20)),
                    },
                    _ => Some(point),
                };
                plan.push(Planned {
                    client,
                    cas,
                    a,
                    b,
                    at: at.map(|t| (t, rng.next())),
                    outcome,
                });
            }
        }
        // Execute in order of effect; a cas names its client's last read version.
        let mut order: Vec<usize> = (0..plan.len()).collect();
        order.sort_by_key(|i| plan[*i].at);
        let mut state: Option<Version> = None;
        let mut next_index = 1;
        let mut last_read = vec![0u64; clients];
        let mut returned: Vec<u64> = vec![0];
        let mut h: Vec<Option<Record>> = (0..plan.len()).map(|_| None).collect();
        // Ops that never take effect still name a version: the last one read.
        for i in order
            .iter()
            .copied()
            .filter(|i| plan[*i].at.is_some())
            .chain(order.iter().copied().filter(|i| plan[*i].at.is_none()))
        {
            let p = &plan[i];
            let mut outcome = p.outcome;
            let op = if p.cas {
                let expect = if rng.below(4) == 0 {
                    returned[rng.below(returned.len() as u64) as usize]
                } else {
                    last_read[p.client]
                };
                let value = format!("v{i}");
                if p.at.is_some() {
                    let current = state.as_ref().map_or(0, |v| v.index);
                    if current == expect {
                        next_index += 1 + rng.below(3);
                        state = Some(Version {
                            value: value.clone(),
                            index: next_index,
                        });
                    } else if outcome == Acked {
                        outcome = Refused;
                    }
                }
                Op::Cas { expect, value }
            } else {
                let seen = if p.at.is_some() { state.clone() } else { None };
                if outcome == Acked {
                    let index = seen.as_ref().map_or(0, |v| v.index);
                    last_read[p.client] = index;
                    returned.push(index);
                }
                Op::Read(seen)
            };
            h[i] = Some(rec(p.client, op, p.a, p.b, outcome));
        }
        let mut h: Vec<Record> = h.into_iter().map(Option::unwrap).collect();
        if !truthful {
            let i = rng.below(h.len() as u64) as usize;
            let pairs: Vec<Option<Version>> = h
                .iter()
                .filter_map(|r| match &r.op {
                    Op::Read(seen) if r.outcome == Acked => Some(seen.clone()),
                    _ => None,
                })
                .collect();
            let r = &mut h[i];
            match &mut r.op {
                Op::Read(seen) => {
                    r.outcome = Acked;
                    *seen = match rng.below(4) {
                        0 => None,
                        1 => Some(Version {
                            value: "ghost".into(),
                            index: 1 + rng.below(8),
                        }),
                        2 => seen.clone().map(|mut v| {
                            v.index = 1 + rng.below(8);
                            v
                        }),
                        _ if pairs.is_empty() => None,
                        _ => pairs[rng.below(pairs.len() as u64) as usize].clone(),
                    };
                }
                Op::Cas { expect, .. } => match rng.below(3) {
                    0 => r.outcome = if r.outcome == Acked { Refused } else { Acked },
                    1 => {
                        let versions: Vec<u64> = pairs
                            .iter()
                            .map(|v| v.as_ref().map_or(0, |v| v.index))
                            .collect();
                        *expect = *versions
                            .get(rng.below(versions.len() as u64 + 1) as usize)
                            .unwrap_or(&0);
                    }
                    _ => {
                        r.invoke = r.invoke.saturating_sub(rng.below(10));
                        r.complete = r.invoke + rng.below(10);
                    }
                },
            }
        }
        h.sort_by_key(|r| r.invoke);
        h
    }

    /// The definition, by brute force: some order of the operations that took effect
    /// (every acknowledged or refused one, any unknown cas), consistent with real time,
    /// in which each read returns the state and each cas succeeds iff it names the
    /// current version, versions growing with each write. A write's version is the one
    /// reads returned with its value (the first such read; unknown if none).
    fn brute_force(history: &[Record]) -> bool {
        let ops: Vec<&Record> = history
            .iter()
            .filter(|r| match (&r.op, r.outcome) {
                (_, Failed) => false,
                (Op::Read(_), outcome) => outcome == Acked,
                (Op::Cas { .. }, _) => true,
            })
            .collect();
        let version_of = |value: &str| {
            history.iter().find_map(|r| match (&r.op, r.outcome) {
                (Op::Read(Some(v)), Acked) if v.value == value => Some(v.index),
                _ => None,
            })
        };
        // The state: absent, or a value and its version (`None`: never read).
        type St = Option<(String, Option<u64>)>;
        fn go(
            ops: &[&Record],
            left: &mut Vec<bool>,
            state: &St,
            version_of: &dyn Fn(&str) -> Option<u64>,
        ) -> bool {
            let completed = |r: &Record| r.outcome != Unknown;
            if !(0..ops.len()).any(|i| left[i] && completed(ops[i])) {
                return true;
            }
            for i in 0..ops.len() {
                if !left[i]
                    || (0..ops.len()).any(|j| {
                        left[j] && j != i && completed(ops[j]) && ops[j].complete < ops[i].invoke
                    })
                {
                    continue;
                }
                left[i] = false;
                let r = ops[i];
                let found = match &r.op {
                    Op::Read(seen) => {
                        let fits = match (seen, state) {
                            (None, None) => true,
                            (Some(v), Some((value, index))) => {
                                v.value == *value && Some(v.index) == *index
                            }
                            _ => false,
                        };
                        fits && go(ops, left, state, version_of)
                    }
                    Op::Cas { expect, value } => {
                        let current = match state {
                            None => Some(0),
                            Some((_, index)) => *index,
                        };
                        let matches = current == Some(*expect);
                        let next = version_of(value);
                        let grows = next.is_none_or(|n| n > *expect);
                        let applied = matches
                            && grows
                            && r.outcome != Refused
                            && go(ops, left, &Some((value.clone(), next)), version_of);
                        let refused =
                            r.outcome == Refused && !matches && go(ops, left, state, version_of);
                        let skipped = r.outcome == Unknown && go(ops, left, state, version_of);
                        applied || refused || skipped
                    }
                };
                left[i] = true;
                if found {
                    return true;
                }
            }
            false
        }
        go(&ops, &mut vec![true; ops.len()], &None, &version_of)
    }

    #[test]
    fn the_checker_agrees_with_brute_force_on_random_histories() {
        let mut rng = Rng(5);
        let (mut yes, mut no, mut skipped) = (0, 0, 0);
        let (mut optional, mut required, mut refusals) = (0, 0, 0);
        for round in 0..20_000 {
            let truthful = round % 2 == 0;
            let h = random_history(&mut rng, truthful);
            let v = check(&h);
            if v.problems.iter().any(|p| p.contains("history error")) {
                assert!(!truthful, "round {round}: {:#?}\n{h:#?}", v.problems);
                skipped += 1;
                continue;
            }
            let expected = brute_force(&h);
            if truthful {
                assert!(expected, "round {round}: a truthful history failed: {h:#?}");
            }
            assert_eq!(
                v.problems.is_empty(),
                expected,
                "round {round}: {:#?}\n{h:#?}",
                v.problems
            );
            // The search alone decides, too, once the versions map one to one onto
            // values and grow (checked apart from it); the other checks only explain.
            let versions = ["two versions", "one version", "did not grow"];
            if !v
                .problems
                .iter()
                .any(|p| versions.iter().any(|t| p.contains(t)))
            {
                assert_eq!(search_ok(&h), expected, "round {round}: {h:#?}");
            }
            if expected {
                yes += 1;
            } else {
                no += 1;
            }
            optional += usize::from(v.unknown_optional > 0);
            required += usize::from(v.unknown_required > 0);
            refusals += usize::from(h.iter().any(|r| r.outcome == Refused));
        }
        eprintln!(
            "{yes} linearizable, {no} not ({skipped} skipped); {optional} with an optional \
             cas, {required} with a required one, {refusals} with a refusal"
        );
        assert!(
            yes > 5000 && no > 3000 && optional > 100 && required > 500 && refusals > 2000,
            "{yes} linearizable, {no} not ({skipped} skipped); {optional} with an optional \
             cas, {required} with a required one, {refusals} with a refusal"
        );
    }

    #[test]
    fn a_long_concurrent_history_is_checked_quickly() {
        // Four clients, each reading and then writing from what it read, 2000 operations,
        // one answer in 20 to a write lost.
        let mut rng = Rng(3);
        let mut h = Vec::new();
        let mut clock = [0u64; 4];
        let mut last = [0u64; 4];
        let mut planned = Vec::new();
        for n in 0..2000 {
            let c = rng.below(4) as usize;
            let a = clock[c] + rng.below(5);
            let b = a + 1 + rng.below(20);
            clock[c] = b + 1;
            planned.push((a + rng.below(b - a), c, n, a, b, rng.below(2) == 0));
        }
        planned.sort();
        let mut state: Option<Version> = None;
        let mut index = 0;
        for (_, c, n, a, b, is_read) in planned {
            if is_read {
                last[c] = state.as_ref().map_or(0, |v| v.index);
                h.push(rec(c, Op::Read(state.clone()), a, b, Acked));
            } else {
                let current = state.as_ref().map_or(0, |v| v.index);
                let value = format!("v{n}");
                let outcome = if current == last[c] {
                    index += 2;
                    state = Some(Version {
                        value: value.clone(),
                        index,
                    });
                    Acked
                } else {
                    Refused
                };
                let op = Op::Cas {
                    expect: last[c],
                    value,
                };
                // Some answers lost, whether the write took effect or not.
                let outcome = if rng.below(20) == 0 { Unknown } else { outcome };
                h.push(rec(c, op, a, b, outcome));
            }
        }
        h.sort_by_key(|r| r.invoke);
        let started = std::time::Instant::now();
        let v = check(&h);
        assert!(v.problems.is_empty(), "{:#?}", v.problems);
        assert!(v.unknown_required + v.unknown_optional + v.unknown_dropped > 10);
        eprintln!(
            "{} ops ({} unknown required, {} optional, {} dropped), {} steps in {:?}",
            v.ops_searched,
            v.unknown_required,
            v.unknown_optional,
            v.unknown_dropped,
            v.search_steps,
            started.elapsed()
        );
        // Turn one refusal late in the history into an acknowledgement.
        let i = h
            .iter()
            .rposition(|r| r.outcome == Refused)
            .expect("some refusal");
        h[i].outcome = Acked;
        assert!(!check(&h).problems.is_empty());
    }
}
