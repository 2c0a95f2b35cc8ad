//! Bounds on the load an agent puts on the servers that answer for it: reads of another
//! datacenter (over the WAN) and a client agent's reads (through a server).
//!
//! - **Coalescing**: identical stale non-blocking reads (DNS's, and `?stale` ones) in
//!   flight at the same time share one request; the first caller's request runs as a
//!   task of its own, so a caller that gives up does not cancel it for the others.
//!   Default and consistent reads are never shared: one that began before a caller's
//!   write could miss it.
//! - **Shared blocking reads**: a client agent's identical blocking reads of its own
//!   datacenter (same query, consistency, token and `?index`) held at the same time
//!   share one blocking read to a server; see [`Load::share_blocking`]. At most
//!   [`MAX_SHARED_BLOCKING`] are shared at once, the others run alone.
//! - **In-flight cap**: at most [`MAX_READS_IN_FLIGHT`] non-blocking and
//!   [`MAX_BLOCKING_IN_FLIGHT`] blocking reads per other datacenter; beyond that a read
//!   fails at once with [`RouteError::Busy`] instead of queueing. A client agent's reads
//!   of its own datacenter are bounded by the server RPC layer instead.
//! - **Cache** (Consul's `?cached`, DNS `use_cache`): answers of reads that asked for
//!   it are kept for [`MAX_ENTRY_AGE`] at most, [`MAX_ENTRIES`] of them, and served
//!   while younger than the caller's `max-age` (or on error, while younger than its
//!   `stale-if-error`). Entries are not refreshed in the background, unlike Consul's.
//! - **Unknown datacenters** a client agent asked about are remembered for
//!   [`UNKNOWN_DC_TTL`], so a storm of lookups for one costs its server one request.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use catalog::{Answer, KvAnswer, KvChange, KvChanges, Query, TxnOutcome};
use catalog::{Consistency, Principal, QueryResult, ReadOptions};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::RouteError;

/// Non-blocking reads in flight to one datacenter at most.
pub const MAX_READS_IN_FLIGHT: usize = 128;
/// Blocking reads in flight to one datacenter at most (beyond the 256 streams of one
/// WAN connection they wait for a stream, within their deadline).
pub const MAX_BLOCKING_IN_FLIGHT: usize = 1024;
/// How many reads may be in flight to one other datacenter at once, by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// Non-blocking reads ([`MAX_READS_IN_FLIGHT`] by default).
    pub reads: usize,
    /// Blocking reads ([`MAX_BLOCKING_IN_FLIGHT`] by default).
    pub blocking: usize,
}

impl Default for Caps {
    fn default() -> Caps {
        Caps {
            reads: MAX_READS_IN_FLIGHT,
            blocking: MAX_BLOCKING_IN_FLIGHT,
        }
    }
}

/// Cached answers at most.
pub const MAX_ENTRIES: usize = 1024;
/// Answers with more items than this are not cached.
pub const MAX_CACHED_ITEMS: usize = 5000;
/// Oldest a cached answer gets before it is dropped.
pub const MAX_ENTRY_AGE: Duration = Duration::from_secs(600);
/// How long a datacenter a server called unknown stays unknown to a client agent.
pub const UNKNOWN_DC_TTL: Duration = Duration::from_secs(5);
/// Distinct blocking reads shared at once at most ([`Load::share_blocking`]); beyond
/// that a blocking read runs alone.
pub const MAX_SHARED_BLOCKING: usize = 4096;
/// A shared blocking read that lands this close to its deadline ran out its wait (the
/// server counts the wait again from the request's arrival, in whole milliseconds).
const LANDING_SLACK: Duration = Duration::from_millis(100);
/// How long past its deadline a shared blocking read is waited for before its callers
/// are answered without it (the read's own transport deadlines end it before).
const LANDING_GRACE: Duration = Duration::from_secs(5);
/// How often a shared blocking read looks whether anyone still waits for it.
const ABANDONED_CHECK: Duration = Duration::from_secs(1);
/// Datacenters tracked (limits, unknown names) at most.
const MAX_TRACKED_DCS: usize = 1024;

/// How a read may use the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachePolicy {
    /// Serve a cached answer up to this old.
    pub max_age: Duration,
    /// When the read fails, serve a cached answer up to this old instead.
    pub stale_if_error: Option<Duration>,
}

/// Whether an answer came from the cache (`X-Cache`, `Age`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// From the cache, fetched this long ago.
    Hit(Duration),
    /// Fetched for this request.
    Miss,
}

/// What identifies a read for coalescing and caching.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    pub(crate) dc: String,
    pub(crate) query: Query,
    pub(crate) consistency: Consistency,
    pub(crate) max_stale: Option<Duration>,
    /// Answers are filtered for the caller's token: one cache entry per principal.
    pub(crate) principal: Principal,
    /// A blocking read's `?index` (0 for any other read).
    pub(crate) min_index: u64,
}

impl Key {
    pub(crate) fn new(dc: &str, query: &Query, options: &ReadOptions) -> Key {
        Key {
            dc: dc.to_owned(),
            query: query.clone(),
            consistency: options.consistency,
            max_stale: options.max_stale,
            principal: options.principal.clone(),
            min_index: options.min_index,
        }
    }
}

/// What a read in flight lands with (`None` until it lands).
type Landing = Option<Result<QueryResult, RouteError>>;
/// Waiting on a read in flight.
pub(crate) type Flight = watch::Receiver<Landing>;
/// Reporting how the read in flight landed.
pub(crate) type Pilot = watch::Sender<Landing>;

/// The outcome of [`Load::join`].
pub(crate) enum Joined {
    /// An identical read is in flight: wait for it.
    Flying(Flight),
    /// None is: run it and report through this.
    First(Pilot),
    /// Too many reads are in flight to track one more: run it alone.
    Full,
}

/// The in-flight caps of one datacenter.
#[derive(Debug)]
struct Limits {
    reads: Arc<Semaphore>,
    blocking: Arc<Semaphore>,
}

/// The state behind the bounds. One per agent.
#[derive(Debug, Default)]
pub(crate) struct Load {
    cache: Mutex<HashMap<Key, (Instant, QueryResult)>>,
    in_flight: Mutex<HashMap<Key, Flight>>,
    /// Shared blocking reads in flight, with the deadline each was sent with.
    blocking: Mutex<HashMap<Key, (Instant, Flight)>>,
    limits: Mutex<HashMap<String, Limits>>,
    unknown: Mutex<HashMap<String, Instant>>,
    /// Where coalesced reads run, so the agent's shutdown waits for them.
    tasks: TaskTracker,
    /// The in-flight caps per datacenter.
    caps: Caps,
}

/// How many items an answer carries, for the cache's size bound.
fn items(answer: &Answer) -> usize {
    match answer {
        Answer::Nodes(v) => v.len(),
        Answer::Services(m) => m.len(),
        Answer::ServiceNodes(v) | Answer::ServiceInstances(v) => v.len(),
        Answer::NodeServices(n) => n.as_ref().map_or(0, |n| n.services.len()),
        Answer::Node(n) => usize::from(n.is_some()),
        Answer::ServiceHealth(v) => v.len(),
        Answer::Checks(v) => v.len(),
        Answer::NodeDump(v) => v
            .iter()
            .map(|i| 1 + i.services.len() + i.checks.len())
            .sum(),
        Answer::Address(n, s) => n.len() + s.len(),
        Answer::Snapshot(_) => usize::MAX,
        Answer::PreparedQueries(v) => v.len(),
        // A value may be as large as 512 KiB: each KiB counts as an item.
        Answer::Kv(KvAnswer::Entries(v)) => v.iter().map(|e| 1 + e.value.len() / 1024).sum(),
        Answer::Kv(KvAnswer::Keys(v)) => v.len(),
        Answer::Kv(KvAnswer::Changes(KvChanges::Listed { changes, .. })) => changes
            .iter()
            .map(|c| match c {
                KvChange::Set(e) => 1 + e.value.len() / 1024,
                KvChange::Deleted { .. } => 1,
            })
            .sum(),
        Answer::Kv(KvAnswer::Changes(KvChanges::Whole { entries, .. })) => {
            entries.iter().map(|e| 1 + e.value.len() / 1024).sum()
        }
        Answer::Kv(KvAnswer::Changes(KvChanges::Unlisted(_))) => 1,
        Answer::Sessions(v) => v.len(),
        Answer::Txn(TxnOutcome::Done(v)) => v.iter().map(|e| 1 + e.value.len() / 1024).sum(),
        Answer::Txn(TxnOutcome::Failed(v)) => v.len(),
        // Tokens carry secrets: never kept.
        Answer::Acl(_) => usize::MAX,
        // A prepared query is looked up afresh for each execution.
        Answer::QueryToRun(_) => usize::MAX,
        Answer::Autopilot(_) => 1,
    }
}

impl Load {
    /// A cached answer for `key` no older than `max_age`.
    pub(crate) fn cached(&self, key: &Key, max_age: Duration) -> Option<(QueryResult, Duration)> {
        let cache = self.cache.lock().expect("cache lock");
        let (at, result) = cache.get(key)?;
        let age = at.elapsed();
        (age <= max_age).then(|| (result.clone(), age))
    }

    pub(crate) fn store(&self, key: Key, result: &QueryResult) {
        if items(&result.answer) > MAX_CACHED_ITEMS {
            return;
        }
        let now = Instant::now();
        let mut cache = self.cache.lock().expect("cache lock");
        if cache.len() >= MAX_ENTRIES && !cache.contains_key(&key) {
            cache.retain(|_, (at, _)| now.duration_since(*at) < MAX_ENTRY_AGE);
            if cache.len() >= MAX_ENTRIES
                && let Some(oldest) = cache
                    .iter()
                    .min_by_key(|(_, (at, _))| *at)
                    .map(|(k, _)| k.clone())
            {
                cache.remove(&oldest);
            }
        }
        cache.insert(key, (now, result.clone()));
    }

    /// A slot for one read to `dc`, or `Busy` when all are taken.
    pub(crate) fn permit(
        &self,
        dc: &str,
        blocking: bool,
    ) -> Result<OwnedSemaphorePermit, RouteError> {
        let semaphore = {
            let mut limits = self.limits.lock().expect("limits lock");
            if limits.len() >= MAX_TRACKED_DCS && !limits.contains_key(dc) {
                // Only known datacenters get here; this many means a name churn, and
                // dropping the idle ones' counters loses nothing.
                let caps = self.caps;
                limits.retain(|_, l| {
                    l.reads.available_permits() < caps.reads
                        || l.blocking.available_permits() < caps.blocking
                });
            }
            let limit = limits.entry(dc.to_owned()).or_insert_with(|| Limits {
                reads: Arc::new(Semaphore::new(self.caps.reads)),
                blocking: Arc::new(Semaphore::new(self.caps.blocking)),
            });
            if blocking {
                limit.blocking.clone()
            } else {
                limit.reads.clone()
            }
        };
        let limit = if blocking {
            self.caps.blocking
        } else {
            self.caps.reads
        };
        semaphore.try_acquire_owned().map_err(|_| RouteError::Busy {
            dc: dc.to_owned(),
            limit,
        })
    }

    /// State whose coalesced reads run on `tasks`.
    pub(crate) fn new(tasks: &TaskTracker, caps: Caps) -> Load {
        Load {
            tasks: tasks.clone(),
            caps,
            ..Load::default()
        }
    }

    /// Joins the read in flight for `key`, or registers a new flight.
    pub(crate) fn join(&self, key: &Key) -> Joined {
        let mut in_flight = self.in_flight.lock().expect("in-flight lock");
        if let Some(flight) = in_flight.get(key) {
            return Joined::Flying(flight.clone());
        }
        if in_flight.len() >= MAX_READS_IN_FLIGHT * 8 {
            return Joined::Full;
        }
        let (tx, rx) = watch::channel(None);
        in_flight.insert(key.clone(), rx);
        Joined::First(tx)
    }

    pub(crate) fn landed(&self, key: &Key) {
        self.in_flight.lock().expect("in-flight lock").remove(key);
    }

    /// Runs `read` for `key`, unless an identical read is in flight: then waits for that
    /// one's answer instead (until `deadline`). The first read runs as a task of its own,
    /// so a caller that gives up does not cancel it for the others; it must end by
    /// itself (every read has a deadline), and is tracked with the agent's tasks.
    pub(crate) async fn coalesce<F>(
        self: &Arc<Self>,
        key: Key,
        deadline: Instant,
        read: F,
    ) -> Result<QueryResult, RouteError>
    where
        F: Future<Output = Result<QueryResult, RouteError>> + Send + 'static,
    {
        let mut flight = match self.join(&key) {
            Joined::Full => return read.await,
            Joined::Flying(flight) => {
                metrics::counter!("gateway.coalesced", "datacenter" => key.dc.clone()).increment(1);
                flight
            }
            Joined::First(pilot) => {
                let flight = pilot.subscribe();
                let load = self.clone();
                let key = key.clone();
                self.tasks.spawn(async move {
                    let result = read.await;
                    let _ = pilot.send(Some(result));
                    load.landed(&key);
                });
                flight
            }
        };
        match tokio::time::timeout_at(deadline, flight.wait_for(Option::is_some)).await {
            Ok(Ok(landed)) => landed
                .clone()
                .unwrap_or_else(|| Err(RouteError::NoServer { dc: key.dc.clone() })),
            Ok(Err(_)) | Err(_) => Err(RouteError::NoServer { dc: key.dc }),
        }
    }

    /// Runs the blocking read `read(deadline)` for `key` (a blocking read whose own
    /// deadline is `deadline`), unless an identical one is in flight: then waits for
    /// that one's answer instead. Identical means the same datacenter, query,
    /// consistency, `max_stale`, principal and `?index`: the server would give each the
    /// same answer, and whatever differs per request (`?filter`, `?near`, rendering) is
    /// applied by the caller afterwards.
    ///
    /// Each caller keeps its own deadline. A shared read that lands with nothing new at
    /// its own deadline, before this caller's, is joined again (or sent again); a
    /// caller whose deadline comes while the shared read is still held gets the answer
    /// as it is then, from `now(deadline)` (a non-blocking read). The shared read runs
    /// as a task of its own and is dropped once nobody waits for it.
    pub(crate) async fn share_blocking<R, N, F, G>(
        self: &Arc<Self>,
        key: Key,
        deadline: Instant,
        read: R,
        now: N,
    ) -> Result<QueryResult, RouteError>
    where
        R: Fn(Instant) -> F,
        F: Future<Output = Result<QueryResult, RouteError>> + Send + 'static,
        N: FnOnce() -> G,
        G: Future<Output = Result<QueryResult, RouteError>>,
    {
        loop {
            let joined = {
                let mut blocking = self.blocking.lock().expect("blocking lock");
                if let Some((ends, flight)) = blocking.get(&key) {
                    Some((*ends, flight.clone()))
                } else if blocking.len() >= MAX_SHARED_BLOCKING {
                    None
                } else {
                    let (pilot, flight) = watch::channel(None);
                    blocking.insert(key.clone(), (deadline, flight.clone()));
                    drop(blocking);
                    self.fly_blocking(key.clone(), pilot, read(deadline));
                    Some((deadline, flight))
                }
            };
            let Some((ends, mut flight)) = joined else {
                return read(deadline).await;
            };
            if ends != deadline {
                metrics::counter!("gateway.blocking_shared").increment(1);
            }
            // A shared read that ends by this caller's deadline is waited for (it
            // answers a little after its deadline, when the server lets it go); one that
            // ends later only until this caller's deadline.
            let until = if ends <= deadline {
                deadline + LANDING_GRACE
            } else {
                deadline
            };
            let waited =
                match tokio::time::timeout_at(until, flight.wait_for(Option::is_some)).await {
                    Ok(Ok(landed)) => Some(landed.clone()),
                    // The flight was dropped without an answer (the agent is shutting down).
                    Ok(Err(_)) => Some(None),
                    // This caller's own deadline came first.
                    Err(_) => None,
                };
            let Some(landed) = waited else {
                return now().await;
            };
            match landed {
                Some(Ok(result))
                    if result.index <= key.min_index
                        && Instant::now() + LANDING_SLACK >= ends
                        && Instant::now() < deadline =>
                {
                    // The shared read ran out its own wait with nothing new: wait on.
                    continue;
                }
                Some(landed) => return landed,
                None => return Err(RouteError::NoServer { dc: key.dc }),
            }
        }
    }

    /// Runs a shared blocking read as a task; it ends when it lands or when only the
    /// map still holds its flight.
    fn fly_blocking<F>(self: &Arc<Self>, key: Key, pilot: Pilot, read: F)
    where
        F: Future<Output = Result<QueryResult, RouteError>> + Send + 'static,
    {
        let load = self.clone();
        self.tasks.spawn(async move {
            let mine = pilot.subscribe();
            let abandoned = async {
                loop {
                    tokio::time::sleep(ABANDONED_CHECK).await;
                    // The map's receiver and `mine` are the last ones: nobody waits.
                    if pilot.receiver_count() <= 2 {
                        return;
                    }
                }
            };
            let result = tokio::select! {
                result = read => Some(result),
                () = abandoned => None,
            };
            // Out of the map before the answer is told, so that a caller that joins
            // again starts a new read instead of finding this one landed.
            {
                let mut blocking = load.blocking.lock().expect("blocking lock");
                if blocking
                    .get(&key)
                    .is_some_and(|(_, flight)| flight.same_channel(&mine))
                {
                    blocking.remove(&key);
                }
            }
            if let Some(result) = result {
                let _ = pilot.send(Some(result));
            }
        });
    }

    pub(crate) fn is_unknown(&self, dc: &str) -> bool {
        let unknown = self.unknown.lock().expect("unknown lock");
        unknown
            .get(dc)
            .is_some_and(|at| at.elapsed() < UNKNOWN_DC_TTL)
    }

    pub(crate) fn mark_unknown(&self, dc: &str) {
        let mut unknown = self.unknown.lock().expect("unknown lock");
        if unknown.len() >= MAX_TRACKED_DCS {
            unknown.retain(|_, at| at.elapsed() < UNKNOWN_DC_TTL);
            if unknown.len() >= MAX_TRACKED_DCS {
                unknown.clear();
            }
        }
        unknown.insert(dc.to_owned(), Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use catalog::ReadMeta;
    use std::pin::Pin;

    fn key(n: usize) -> Key {
        Key {
            dc: "dc2".into(),
            query: Query::NodeChecks {
                node: format!("n{n}"),
            },
            consistency: Consistency::Stale,
            max_stale: None,
            principal: Principal::Anonymous,
            min_index: 0,
        }
    }

    fn result(index: u64) -> QueryResult {
        QueryResult {
            answer: Answer::Checks(vec![]),
            index,
            meta: ReadMeta {
                known_leader: true,
                last_contact: Duration::ZERO,
            },
            filtered: false,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_cache_serves_young_enough_answers_and_stays_bounded() {
        let load = Load::default();
        load.store(key(0), &result(7));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(
            load.cached(&key(0), Duration::from_secs(3))
                .map(|r| r.0.index),
            Some(7)
        );
        assert!(load.cached(&key(0), Duration::from_secs(1)).is_none());
        assert!(load.cached(&key(1), Duration::from_secs(60)).is_none());
        for n in 1..=MAX_ENTRIES + 10 {
            load.store(key(n), &result(n as u64));
        }
        assert!(load.cache.lock().unwrap().len() <= MAX_ENTRIES);
        assert!(
            load.cached(&key(MAX_ENTRIES + 10), Duration::from_secs(1))
                .is_some()
        );
    }

    #[test]
    fn permits_run_out_per_datacenter_and_come_back() {
        let load = Load::default();
        let held: Vec<_> = (0..MAX_READS_IN_FLIGHT)
            .map(|_| load.permit("dc2", false).unwrap())
            .collect();
        assert!(matches!(
            load.permit("dc2", false),
            Err(RouteError::Busy { .. })
        ));
        assert!(
            load.permit("dc2", true).is_ok(),
            "blocking reads count apart"
        );
        assert!(load.permit("dc3", false).is_ok(), "other datacenters too");
        drop(held);
        assert!(load.permit("dc2", false).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn unknown_datacenters_are_remembered_for_a_while() {
        let load = Load::default();
        assert!(!load.is_unknown("dc9"));
        load.mark_unknown("dc9");
        assert!(load.is_unknown("dc9"));
        tokio::time::advance(UNKNOWN_DC_TTL).await;
        assert!(!load.is_unknown("dc9"));
    }

    #[test]
    fn a_second_identical_read_joins_the_first() {
        let load = Load::default();
        let Joined::First(tx) = load.join(&key(0)) else {
            panic!("the first read flies");
        };
        let Joined::Flying(mut rx) = load.join(&key(0)) else {
            panic!("the second joins");
        };
        assert!(
            matches!(load.join(&key(1)), Joined::First(_)),
            "a different read flies"
        );
        tx.send(Some(Ok(result(3)))).unwrap();
        load.landed(&key(0));
        assert!(rx.borrow_and_update().as_ref().unwrap().is_ok());
        assert!(
            matches!(load.join(&key(0)), Joined::First(_)),
            "landed: a new flight"
        );
    }

    /// A blocking key: `principal` and `?index` as given.
    fn blocking_key(principal: Principal, min_index: u64) -> Key {
        Key {
            principal,
            min_index,
            ..key(0)
        }
    }

    /// A blocking read that counts how often it is sent and answers `answer` after
    /// `after` (or at its deadline, unchanged, when `after` is `None`).
    fn counted_read(
        sent: &Arc<std::sync::atomic::AtomicUsize>,
        after: Option<Duration>,
        answer: u64,
        unchanged: u64,
    ) -> impl Fn(Instant) -> Pin<Box<dyn Future<Output = Result<QueryResult, RouteError>> + Send>> + use<>
    {
        let sent = sent.clone();
        move |deadline| {
            sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Box::pin(async move {
                match after {
                    Some(after) if Instant::now() + after < deadline => {
                        tokio::time::sleep(after).await;
                        Ok(result(answer))
                    }
                    _ => {
                        tokio::time::sleep_until(deadline).await;
                        Ok(result(unchanged))
                    }
                }
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn identical_blocking_reads_share_one_read_and_different_ones_do_not() {
        use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
        let load = Arc::new(Load::new(&TaskTracker::new(), Caps::default()));
        let sent = Arc::new(AtomicUsize::new(0));
        let wait = Duration::from_secs(60);
        let start = Instant::now();
        let mut held = Vec::new();
        for (principal, index) in [
            (Principal::Anonymous, 5),
            (Principal::Anonymous, 5),
            (Principal::Anonymous, 5),
            (Principal::Token("other".into()), 5),
            (Principal::Anonymous, 4),
        ] {
            let load = load.clone();
            let read = counted_read(&sent, Some(Duration::from_secs(10)), 6, index);
            held.push(tokio::spawn(async move {
                load.share_blocking(
                    blocking_key(principal, index),
                    start + wait,
                    read,
                    || async { Ok(result(0)) },
                )
                .await
            }));
            tokio::task::yield_now().await;
        }
        for h in held {
            assert_eq!(h.await.unwrap().unwrap().index, 6);
        }
        assert_eq!(sent.load(SeqCst), 3, "one read per distinct request");
        assert!(
            load.blocking.lock().unwrap().is_empty(),
            "nothing left held"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_shared_read_that_runs_out_is_sent_again_for_those_who_wait_longer() {
        use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
        let load = Arc::new(Load::new(&TaskTracker::new(), Caps::default()));
        let sent = Arc::new(AtomicUsize::new(0));
        let start = Instant::now();
        // The first read waits 10 s, a second identical one 30 s: nothing changes, so the
        // first gets its unchanged answer at 10 s and the second at 30 s, not before.
        let (first, second) = {
            let (a, b) = (load.clone(), load.clone());
            let (ra, rb) = (
                counted_read(&sent, None, 0, 5),
                counted_read(&sent, None, 0, 5),
            );
            let key = blocking_key(Principal::Anonymous, 5);
            let k2 = key.clone();
            (
                tokio::spawn(async move {
                    let r = a
                        .share_blocking(key, start + Duration::from_secs(10), ra, || async {
                            Ok(result(0))
                        })
                        .await;
                    (r, Instant::now())
                }),
                tokio::spawn(async move {
                    tokio::task::yield_now().await;
                    let r = b
                        .share_blocking(k2, start + Duration::from_secs(30), rb, || async {
                            Ok(result(0))
                        })
                        .await;
                    (r, Instant::now())
                }),
            )
        };
        let (r, at) = first.await.unwrap();
        assert_eq!(r.unwrap().index, 5);
        assert_eq!(at, start + Duration::from_secs(10));
        let (r, at) = second.await.unwrap();
        assert_eq!(r.unwrap().index, 5);
        assert_eq!(at, start + Duration::from_secs(30));
        assert_eq!(sent.load(SeqCst), 2);

        // A caller whose deadline comes while a longer shared read is held is answered
        // by `now` at its own deadline.
        let long = {
            let load = load.clone();
            let read = counted_read(&sent, None, 0, 5);
            tokio::spawn(async move {
                load.share_blocking(
                    blocking_key(Principal::Anonymous, 5),
                    Instant::now() + Duration::from_secs(60),
                    read,
                    || async { Ok(result(0)) },
                )
                .await
            })
        };
        tokio::task::yield_now().await;
        let short_at = Instant::now() + Duration::from_secs(5);
        let read = counted_read(&sent, None, 0, 5);
        let short = load
            .share_blocking(
                blocking_key(Principal::Anonymous, 5),
                short_at,
                read,
                || async { Ok(result(7)) },
            )
            .await;
        assert_eq!(short.unwrap().index, 7, "answered by `now`");
        assert_eq!(Instant::now(), short_at);
        assert!(!long.is_finished());
        long.abort();
    }
}
