//! Sessions (`/v1/session/*`) and the KV locks they hold.
//!
//! A session belongs to a node and names health checks of that node (`serfHealth` by
//! default). It is invalidated, in the same apply that causes it, when its node leaves
//! the catalog or one of its checks turns critical or goes away; explicitly when it is
//! destroyed; and when its TTL runs out, which the leader times (crate `proconsul-lan`)
//! and writes as a destroy. An invalidated session's locks are released (`release`) or
//! its keys deleted (`delete`), and each such key refuses new locks for the session's
//! lock delay, timed on the clock of each server that applied the invalidation; only
//! the leader consults it, before it hands an acquire to Raft, so the log stays the
//! same on every server.
//!
//! Renewals go through the log as well, without changing any index (no blocking read
//! wakes): the leader sees the session's renewal count move and restarts its timer.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::state::{ApplyError, State, fold};
use super::types::Health;

/// The longest lock delay applied (Consul's cap).
pub const MAX_LOCK_DELAY: Duration = Duration::from_secs(60);
/// The lock delay of a session that names none (Consul's default).
pub const DEFAULT_LOCK_DELAY: Duration = Duration::from_secs(15);
/// The shortest TTL a session may have (Consul's `session_ttl_min`).
pub const SESSION_TTL_MIN: Duration = Duration::from_secs(10);
/// The longest TTL a session may have.
pub const SESSION_TTL_MAX: Duration = Duration::from_secs(24 * 3600);

/// What happens to a session's locks when it is invalidated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Behavior {
    /// The locks are released; the keys stay.
    #[default]
    Release,
    /// The keys are deleted.
    Delete,
}

impl Behavior {
    /// Consul's name (`release`, `delete`).
    pub fn as_str(self) -> &'static str {
        match self {
            Behavior::Release => "release",
            Behavior::Delete => "delete",
        }
    }
}

/// A session, as Consul's `Session`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Its UUID.
    pub id: String,
    /// A name for people.
    pub name: String,
    /// The node it belongs to.
    pub node: String,
    /// How long a lock it held stays unavailable after it is invalidated.
    pub lock_delay: Duration,
    /// What happens to its locks when it is invalidated.
    pub behavior: Behavior,
    /// Its TTL as given (`"30s"`), empty for none.
    pub ttl: String,
    /// Node checks it depends on.
    pub node_checks: Vec<String>,
    /// Service checks it depends on (check IDs on the node).
    pub service_checks: Vec<String>,
    /// The index it was created at.
    pub create_index: u64,
    /// The index of its last change.
    pub modify_index: u64,
    /// How many times it was renewed (the leader restarts its TTL timer when this moves).
    #[serde(default)]
    pub renewals: u64,
}

impl Session {
    /// Every check it depends on.
    pub fn checks(&self) -> impl Iterator<Item = &String> {
        self.node_checks.iter().chain(&self.service_checks)
    }

    /// The TTL, if it has one.
    pub fn ttl(&self) -> Option<Duration> {
        if self.ttl.is_empty() {
            return None;
        }
        crate::duration::parse(&self.ttl)
            .ok()
            .filter(|d| !d.is_zero())
    }
}

/// A change to the session table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionWrite {
    /// Creates a session; its index fields are ignored.
    Create(Box<Session>),
    /// Destroys a session (also what the leader writes when a TTL runs out); an unknown ID
    /// is fine.
    Destroy {
        /// Its ID.
        id: String,
    },
    /// Renews a session's TTL.
    Renew {
        /// Its ID.
        id: String,
    },
}

/// Which sessions a read returns.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SessionRead {
    /// The one with this ID (`/v1/session/info/:id`).
    Info(String),
    /// Those of a node (`/v1/session/node/:node`).
    Node(String),
    /// All of them (`/v1/session/list`).
    List,
}

/// The session table.
#[derive(Debug, Clone, Default)]
pub(super) struct Sessions {
    pub(super) by_id: BTreeMap<String, Session>,
    /// Lower-case node name → its sessions.
    pub(super) by_node: BTreeMap<String, BTreeSet<String>>,
    /// Session → the keys whose lock it holds.
    pub(super) held: BTreeMap<String, BTreeSet<String>>,
    /// Keys that refuse locks until then (lock delay), on this server's clock.
    pub(super) delayed: HashMap<String, Instant>,
}

impl Sessions {
    pub(super) fn insert(&mut self, session: Session) {
        self.by_node
            .entry(fold(&session.node))
            .or_default()
            .insert(session.id.clone());
        self.by_id.insert(session.id.clone(), session);
    }
}

impl State {
    /// Applies a change to the session table at `index`.
    pub(super) fn apply_session(
        &mut self,
        index: u64,
        write: &SessionWrite,
    ) -> Result<(), ApplyError> {
        match write {
            SessionWrite::Create(session) => self.create_session(index, session),
            SessionWrite::Destroy { id } => {
                self.invalidate_session(index, id);
                Ok(())
            }
            SessionWrite::Renew { id } => match self.sessions.by_id.get_mut(id) {
                Some(s) => {
                    s.renewals += 1;
                    Ok(())
                }
                None => Err(ApplyError::UnknownSession(id.clone())),
            },
        }
    }

    fn create_session(&mut self, index: u64, session: &Session) -> Result<(), ApplyError> {
        let refuse = |text: String| Err(ApplyError::Session(text));
        if session.id.is_empty() {
            return refuse("Missing session ID".into());
        }
        if self.sessions.by_id.contains_key(&session.id) {
            return refuse(format!("Session ID {:?} already exists", session.id));
        }
        let node_key = fold(&session.node);
        if !self.nodes.contains_key(&node_key) {
            return refuse("Missing node registration".into());
        }
        for check_id in session.checks() {
            match self.checks.get(&(node_key.clone(), fold(check_id))) {
                None => return refuse(format!("Missing check '{check_id}' registration")),
                Some(c) if c.status == Health::Critical => {
                    return refuse(format!("Check '{check_id}' is in critical state"));
                }
                Some(_) => {}
            }
        }
        let mut session = session.clone();
        session.lock_delay = session.lock_delay.min(MAX_LOCK_DELAY);
        session.create_index = index;
        session.modify_index = index;
        session.renewals = 0;
        self.sessions.insert(session);
        self.indexes.sessions = index;
        Ok(())
    }

    /// Invalidates the sessions of node `node_key` that lost their node or a check, after
    /// a change to that node at `index`.
    pub(super) fn check_sessions_of(&mut self, node_key: &str, index: u64) {
        let Some(ids) = self.sessions.by_node.get(node_key) else {
            return;
        };
        let node_gone = !self.nodes.contains_key(node_key);
        let broken: Vec<String> = ids
            .iter()
            .filter(|id| {
                let Some(s) = self.sessions.by_id.get(*id) else {
                    return false;
                };
                node_gone
                    || s.checks().any(|check_id| {
                        self.checks
                            .get(&(node_key.to_owned(), fold(check_id)))
                            .is_none_or(|c| c.status == Health::Critical)
                    })
            })
            .cloned()
            .collect();
        for id in broken {
            self.invalidate_session(index, &id);
        }
    }

    /// Removes session `id` and releases or deletes the keys it held.
    fn invalidate_session(&mut self, index: u64, id: &str) {
        let Some(session) = self.sessions.by_id.remove(id) else {
            return;
        };
        let node_key = fold(&session.node);
        if let Some(ids) = self.sessions.by_node.get_mut(&node_key) {
            ids.remove(id);
            if ids.is_empty() {
                self.sessions.by_node.remove(&node_key);
            }
        }
        self.indexes.sessions = index;
        let keys = self.sessions.held.remove(id).unwrap_or_default();
        if keys.is_empty() {
            return;
        }
        let now = Instant::now();
        // Delays that ran out are forgotten, so the table holds only live ones.
        self.sessions.delayed.retain(|_, until| *until > now);
        let until = now + session.lock_delay.min(MAX_LOCK_DELAY);
        for key in keys {
            if !session.lock_delay.is_zero() {
                self.sessions.delayed.insert(key.clone(), until);
            }
            self.changed.key(&key);
            match session.behavior {
                Behavior::Release => {
                    if let Some(e) = self.kv.entries.get_mut(&key) {
                        let e = std::sync::Arc::make_mut(e);
                        e.session = None;
                        e.modify_index = index;
                    }
                }
                Behavior::Delete => {
                    self.kv.entries.remove(&key);
                    self.kv.tombstones.insert(key, index);
                }
            }
        }
        self.indexes.kv = index;
    }

    /// Whether `key` refuses locks at `now` (an invalidated session's lock delay). Only
    /// the leader asks, before it hands an acquire to Raft.
    pub fn lock_delayed(&self, key: &str, now: Instant) -> bool {
        self.sessions
            .delayed
            .get(key)
            .is_some_and(|until| *until > now)
    }

    /// Answers a session read with the session table's index (never below 1).
    pub(super) fn query_sessions(&self, read: &SessionRead) -> (Vec<Session>, u64) {
        let list = match read {
            SessionRead::Info(id) => self.sessions.by_id.get(id).cloned().into_iter().collect(),
            SessionRead::Node(node) => self
                .sessions
                .by_node
                .get(&fold(node))
                .into_iter()
                .flatten()
                .filter_map(|id| self.sessions.by_id.get(id).cloned())
                .collect(),
            SessionRead::List => self.sessions.by_id.values().cloned().collect(),
        };
        (list, self.indexes.sessions.max(1))
    }

    /// Every session, for the leader's TTL timers.
    pub fn sessions(&self) -> impl Iterator<Item = &Session> {
        self.sessions.by_id.values()
    }

    /// Records that `session` holds `key`.
    pub(super) fn hold(&mut self, session: &str, key: &str) {
        self.sessions
            .held
            .entry(session.to_owned())
            .or_default()
            .insert(key.to_owned());
    }

    /// Records that `session` no longer holds `key`.
    pub(super) fn unhold(&mut self, session: &str, key: &str) {
        if let Some(keys) = self.sessions.held.get_mut(session) {
            keys.remove(key);
            if keys.is_empty() {
                self.sessions.held.remove(session);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::{KvAnswer, KvEntry, KvRead, KvRefusal, KvWrite};
    use crate::state::{Command, Deregistration, Registration};
    use crate::types::{Check, Node};

    fn node(state: &mut State, index: u64, name: &str, serf: Health) {
        let r = Registration {
            node: Node {
                name: name.into(),
                address: "10.0.0.1".into(),
                ..Node::default()
            },
            skip_node_update: false,
            service: None,
            checks: vec![Check {
                node: name.into(),
                check_id: crate::SERF_HEALTH_CHECK.into(),
                name: "Serf Health Status".into(),
                status: serf,
                ..Check::default()
            }],
        };
        state.apply(index, &Command::Register(r)).unwrap();
    }

    fn session(id: &str, node: &str, behavior: Behavior) -> Session {
        Session {
            id: id.into(),
            name: String::new(),
            node: node.into(),
            lock_delay: Duration::from_secs(15),
            behavior,
            ttl: String::new(),
            node_checks: vec![crate::SERF_HEALTH_CHECK.into()],
            service_checks: vec![],
            create_index: 0,
            modify_index: 0,
            renewals: 0,
        }
    }

    fn create(state: &mut State, index: u64, s: Session) -> Result<(), ApplyError> {
        state
            .apply(index, &Command::Session(SessionWrite::Create(Box::new(s))))
            .map(|_| ())
    }

    fn acquire(state: &mut State, index: u64, key: &str, session: &str) -> Result<(), ApplyError> {
        state
            .apply(
                index,
                &Command::Kv(KvWrite::Acquire {
                    key: key.into(),
                    value: b"held".to_vec(),
                    flags: 0,
                    session: session.into(),
                }),
            )
            .map(|_| ())
    }

    fn entry(state: &State, key: &str) -> Option<KvEntry> {
        match state.query_kv(key, &KvRead::Entry).0 {
            KvAnswer::Entries(mut e) => e.pop(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_session_needs_its_node_and_healthy_checks() {
        let mut s = State::new();
        assert_eq!(
            create(&mut s, 2, session("a", "n1", Behavior::Release)),
            Err(ApplyError::Session("Missing node registration".into()))
        );
        node(&mut s, 3, "n1", Health::Critical);
        assert_eq!(
            create(&mut s, 4, session("a", "n1", Behavior::Release)),
            Err(ApplyError::Session(
                "Check 'serfHealth' is in critical state".into()
            ))
        );
        node(&mut s, 5, "n1", Health::Passing);
        let mut other = session("a", "n1", Behavior::Release);
        other.service_checks = vec!["nope".into()];
        assert_eq!(
            create(&mut s, 6, other),
            Err(ApplyError::Session(
                "Missing check 'nope' registration".into()
            ))
        );
        create(&mut s, 7, session("a", "n1", Behavior::Release)).unwrap();
        let (list, index) = s.query_sessions(&SessionRead::Node("N1".into()));
        assert_eq!((list.len(), index), (1, 7));
        assert_eq!(list[0].create_index, 7);
    }

    #[test]
    fn locks_follow_consuls_rules() {
        let mut s = State::new();
        node(&mut s, 1, "n1", Health::Passing);
        create(&mut s, 2, session("a", "n1", Behavior::Release)).unwrap();
        create(&mut s, 3, session("b", "n1", Behavior::Release)).unwrap();
        assert_eq!(
            acquire(&mut s, 4, "k", "nope"),
            Err(ApplyError::Kv("invalid session \"nope\"".into()))
        );
        acquire(&mut s, 5, "k", "a").unwrap();
        let e = entry(&s, "k").unwrap();
        assert_eq!((e.lock_index, e.session.as_deref()), (1, Some("a")));
        assert_eq!(
            acquire(&mut s, 6, "k", "b"),
            Err(KvRefusal::LockHeld("k".into()).into())
        );
        // The holder again with the same value changes nothing.
        acquire(&mut s, 7, "k", "a").unwrap();
        assert_eq!(entry(&s, "k").unwrap().modify_index, 5);
        let release = |session: &str| {
            Command::Kv(KvWrite::Release {
                key: "k".into(),
                value: Vec::new(),
                flags: 3,
                session: session.into(),
            })
        };
        assert_eq!(
            s.apply(8, &release("b")),
            Err(KvRefusal::NotHeld("k".into()).into())
        );
        s.apply(9, &release("a")).unwrap();
        let e = entry(&s, "k").unwrap();
        assert_eq!(e.session, None);
        assert_eq!((e.lock_index, e.flags, e.value.len()), (1, 3, 0));
        acquire(&mut s, 10, "k", "b").unwrap();
        assert_eq!(entry(&s, "k").unwrap().lock_index, 2);
    }

    #[test]
    fn a_failed_node_releases_or_deletes_what_its_sessions_held() {
        let mut s = State::new();
        node(&mut s, 1, "n1", Health::Passing);
        node(&mut s, 2, "n2", Health::Passing);
        create(&mut s, 3, session("rel", "n1", Behavior::Release)).unwrap();
        create(&mut s, 4, session("del", "n1", Behavior::Delete)).unwrap();
        create(&mut s, 5, session("other", "n2", Behavior::Release)).unwrap();
        acquire(&mut s, 6, "lock/rel", "rel").unwrap();
        acquire(&mut s, 7, "lock/del", "del").unwrap();
        acquire(&mut s, 8, "lock/other", "other").unwrap();
        // serfHealth of n1 goes critical: both its sessions end, n2's stays.
        node(&mut s, 9, "n1", Health::Critical);
        assert_eq!(s.query_sessions(&SessionRead::List).0.len(), 1);
        let e = entry(&s, "lock/rel").unwrap();
        assert_eq!((e.session, e.modify_index), (None, 9));
        assert_eq!(entry(&s, "lock/del"), None);
        assert_eq!(s.query_kv("lock/", &KvRead::Tree).1, 9);
        assert!(s.lock_delayed("lock/rel", Instant::now()));
        assert!(!s.lock_delayed("lock/other", Instant::now()));
        // n2 leaves the catalog: its session ends too.
        s.apply(
            10,
            &Command::Deregister(Deregistration {
                node: "n2".into(),
                service_id: None,
                check_id: None,
            }),
        )
        .unwrap();
        assert!(s.query_sessions(&SessionRead::List).0.is_empty());
        assert_eq!(entry(&s, "lock/other").unwrap().session, None);
    }

    #[test]
    fn sessions_and_their_locks_survive_a_snapshot() {
        let mut s = State::new();
        node(&mut s, 1, "n1", Health::Passing);
        create(&mut s, 2, session("a", "n1", Behavior::Delete)).unwrap();
        acquire(&mut s, 3, "k", "a").unwrap();
        let mut back = State::from_snapshot(s.to_snapshot());
        back.apply(
            4,
            &Command::Session(SessionWrite::Destroy { id: "a".into() }),
        )
        .unwrap();
        assert_eq!(
            entry(&back, "k"),
            None,
            "the lock was known after the restore"
        );
    }

    #[test]
    fn a_snapshot_keeps_the_keys_as_they_were_when_it_was_taken() {
        // A snapshot shares the entries with the store: each way a lock changes an
        // entry in place must leave the snapshot's copy alone.
        let mut s = State::new();
        node(&mut s, 1, "n1", Health::Passing);
        create(&mut s, 2, session("a", "n1", Behavior::Release)).unwrap();
        acquire(&mut s, 3, "k", "a").unwrap();
        acquire(&mut s, 4, "j", "a").unwrap();
        let put = |value: &str| {
            Command::Kv(KvWrite::Set {
                key: "plain".into(),
                value: value.as_bytes().to_vec(),
                flags: 0,
                cas: None,
            })
        };
        s.apply(5, &put("one")).unwrap();
        let snapshot = s.to_snapshot();
        let taken = serde_json::to_vec(&snapshot).unwrap();
        s.apply(6, &put("two")).unwrap();
        s.apply(
            7,
            &Command::Kv(KvWrite::Release {
                key: "k".into(),
                value: b"free".to_vec(),
                flags: 1,
                session: "a".into(),
            }),
        )
        .unwrap();
        acquire(&mut s, 8, "k", "a").unwrap();
        // The session ends: "j" is released by the invalidation.
        node(&mut s, 9, "n1", Health::Critical);
        assert_eq!(entry(&s, "j").unwrap().session, None);
        assert_eq!(entry(&s, "plain").unwrap().value, b"two");
        assert_eq!(serde_json::to_vec(&snapshot).unwrap(), taken);
        let back = State::from_snapshot(snapshot);
        assert_eq!(entry(&back, "plain").unwrap().value, b"one");
        assert_eq!(entry(&back, "j").unwrap().session.as_deref(), Some("a"));
    }

    #[test]
    fn a_renewal_changes_no_index() {
        let mut s = State::new();
        node(&mut s, 1, "n1", Health::Passing);
        create(&mut s, 2, session("a", "n1", Behavior::Release)).unwrap();
        s.apply(3, &Command::Session(SessionWrite::Renew { id: "a".into() }))
            .unwrap();
        let (list, index) = s.query_sessions(&SessionRead::Info("a".into()));
        assert_eq!((list[0].renewals, list[0].modify_index, index), (1, 2, 2));
        assert_eq!(
            s.apply(4, &Command::Session(SessionWrite::Renew { id: "x".into() })),
            Err(ApplyError::UnknownSession("x".into()))
        );
    }
}
