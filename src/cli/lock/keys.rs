//! The session and the keys: taking, watching and giving back the lock or a slot of the
//! semaphore, with Consul's key layout, and the waits between tries.

use super::*;

// ---------------------------------------------------------------------------------------
// The session

/// Our session in datacenter `dc` (the agent's own for `None`), renewed in the
/// background until [`Session::end`].
pub(super) struct Session {
    pub(super) client: AgentClient,
    pub(super) id: String,
    pub(super) dc: Option<String>,
    pub(super) renewer: JoinHandle<()>,
}

impl Session {
    pub(super) async fn create(
        client: &AgentClient,
        name: &str,
        behavior: &str,
        dc: Option<String>,
        node: Option<String>,
    ) -> Result<Session, ClientError> {
        let mut request = SessionRequest {
            name: name.to_owned(),
            ttl: SESSION_TTL.to_owned(),
            behavior: behavior.to_owned(),
            ..SessionRequest::default()
        };
        if let Some(node) = node {
            // A node of another datacenter: its health is not ours to vouch for, so the
            // session hangs on its TTL (renewed by us) alone.
            request.node = node;
            request.node_checks = Some(Vec::new());
        }
        let id = client.session_create(&request, dc.as_deref()).await?;
        let ttl = catalog::duration::parse(SESSION_TTL).unwrap_or(LOCK_WAIT_TIME);
        let renewer = tokio::spawn(renew(client.clone(), id.clone(), dc.clone(), ttl));
        Ok(Session {
            client: client.clone(),
            id,
            dc,
            renewer,
        })
    }

    /// Stops renewing and destroys the session (whatever it still holds is released,
    /// or deleted for `delete` sessions).
    pub(super) async fn end(self) {
        self.renewer.abort();
        let _ = self
            .client
            .session_destroy(&self.id, self.dc.as_deref())
            .await;
    }
}

/// Renews session `id` every TTL/2 (the TTL the agent answers with, from then on); a
/// failed renewal is tried again every second until a TTL has passed since the last
/// good one. Ends when the session is gone.
pub(super) async fn renew(client: AgentClient, id: String, dc: Option<String>, mut ttl: Duration) {
    let mut wait = ttl / 2;
    let mut last = Instant::now();
    while last.elapsed() <= ttl {
        tokio::time::sleep(wait).await;
        match client.session_renew(&id, dc.as_deref()).await {
            Ok(Some(entry)) => {
                if let Ok(d) = catalog::duration::parse(&entry.ttl)
                    && !d.is_zero()
                {
                    ttl = d;
                }
                wait = ttl / 2;
                last = Instant::now();
            }
            Ok(None) => return,
            Err(_) => wait = Duration::from_secs(1),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Lock and semaphore

/// What is held: a lock at a key, or a slot of a semaphore under a prefix.
#[derive(Clone)]
pub(super) enum Kind {
    Lock { key: String },
    Semaphore { prefix: String, limit: i64 },
}

#[derive(Clone)]
pub(super) struct Holder {
    pub(super) client: AgentClient,
    pub(super) kind: Kind,
    /// The datacenter of the keys (the agent's own for `None`).
    pub(super) dc: Option<String>,
}

/// Why the keys were not cleaned up.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Cleanup {
    /// Someone else holds (or waits for) the lock: nothing to clean up.
    InUse,
    Failed(String),
}

/// The semaphore's coordination key, `PREFIX/.lock`, as Consul's `semaphoreLock`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct SemaphoreLock {
    /// The limit every contender must agree on.
    #[serde(rename = "Limit", alias = "limit", default)]
    pub(super) limit: i64,
    /// The sessions holding a slot (a set: every value is `true`).
    #[serde(
        rename = "Holders",
        alias = "holders",
        default,
        deserialize_with = "null_as_empty"
    )]
    pub(super) holders: BTreeMap<String, bool>,
}

pub(super) fn null_as_empty<'de, D>(d: D) -> Result<BTreeMap<String, bool>, D::Error>
where
    D: Deserializer<'de>,
{
    Ok(Option::<BTreeMap<String, bool>>::deserialize(d)?.unwrap_or_default())
}

impl SemaphoreLock {
    /// The key's value; a missing key or an empty value is a fresh lock of `limit`.
    pub(super) fn decode(pair: Option<&KvPair>, limit: i64) -> Result<SemaphoreLock, String> {
        match pair {
            Some(pair) if !pair.value.is_empty() => serde_json::from_slice(&pair.value)
                .map_err(|e| format!("lock decoding failed: {e}")),
            _ => Ok(SemaphoreLock {
                limit,
                holders: BTreeMap::new(),
            }),
        }
    }

    /// Go's `json.Marshal`: `{"Limit":2,"Holders":{"<id>":true}}`, holders sorted.
    pub(super) fn encode(&self) -> Vec<u8> {
        // A map of strings to booleans always serialises.
        serde_json::to_vec(self).expect("a semaphore lock serialises")
    }

    /// Drops the holders whose session holds no key under the prefix any more (their
    /// contender key went with their session).
    pub(super) fn prune(&mut self, pairs: &[KvPair]) {
        let alive: BTreeSet<&str> = pairs.iter().filter_map(|p| p.session.as_deref()).collect();
        self.holders
            .retain(|holder, _| alive.contains(holder.as_str()));
    }
}

impl Holder {
    /// Options of a read of the keys: blocking on `index` (when not 0) for up to `wait`.
    fn read_options(&self, index: u64, wait: Duration) -> QueryOptions {
        read_options(self.dc.as_deref(), index, wait)
    }

    /// The behavior of our session: a semaphore's contender key goes with it.
    pub(super) fn behavior(&self) -> &'static str {
        match self.kind {
            Kind::Lock { .. } => "",
            Kind::Semaphore { .. } => "delete",
        }
    }

    /// Waits for the lock; `Ok(false)` when a signal came or `try_once` has passed.
    pub(super) async fn acquire(
        &self,
        session: &str,
        try_once: Option<Duration>,
        shutdown: &Shutdown,
    ) -> Result<bool, String> {
        match &self.kind {
            Kind::Lock { key } => self.acquire_lock(key, session, try_once, shutdown).await,
            Kind::Semaphore { prefix, limit } => {
                self.acquire_slot(prefix, *limit, session, try_once, shutdown)
                    .await
            }
        }
    }

    pub(super) async fn acquire_lock(
        &self,
        key: &str,
        session: &str,
        try_once: Option<Duration>,
        shutdown: &Shutdown,
    ) -> Result<bool, String> {
        let c = &self.client;
        let mut wait = Wait::new(try_once);
        let mut index = 0;
        loop {
            let Some(wait_time) = wait.next(shutdown) else {
                return Ok(false);
            };
            let Some(read) = shutdown
                .unless(c.kv_get(key, &self.read_options(index, wait_time)))
                .await
            else {
                return Ok(false);
            };
            let answer = read.map_err(|e| format!("failed to read lock: {}", api_error(&e)))?;
            if let Some(pair) = &answer.value {
                if pair.flags != LOCK_FLAG_VALUE {
                    return Err("Existing key does not match lock use".into());
                }
                match pair.session.as_deref() {
                    Some(s) if s == session => return Ok(true),
                    Some(_) => {
                        index = answer.meta.index;
                        continue;
                    }
                    None => {}
                }
            }
            let locked = c
                .kv_lock(key, b"", LOCK_FLAG_VALUE, session, true, self.dc.as_deref())
                .await
                .map_err(|e| format!("failed to acquire lock: {}", api_error(&e)))?;
            if locked {
                return Ok(true);
            }
            // Refused: held by another (wait for it), or free but in its lock delay
            // (try again in a while).
            let Some(read) = shutdown
                .unless(c.kv_get(key, &self.read_options(0, wait_time)))
                .await
            else {
                return Ok(false);
            };
            if let Ok(answer) = read
                && answer.value.as_ref().is_some_and(|p| p.session.is_some())
            {
                index = answer.meta.index;
                continue;
            }
            if shutdown
                .unless(tokio::time::sleep(LOCK_RETRY_TIME))
                .await
                .is_none()
            {
                return Ok(false);
            }
            index = 0;
        }
    }

    pub(super) async fn acquire_slot(
        &self,
        prefix: &str,
        limit: i64,
        session: &str,
        try_once: Option<Duration>,
        shutdown: &Shutdown,
    ) -> Result<bool, String> {
        let c = &self.client;
        let contender = go_join(prefix, session);
        let lock_key = go_join(prefix, LOCK_KEY);
        match c
            .kv_lock(
                &contender,
                b"",
                SEMAPHORE_FLAG_VALUE,
                session,
                true,
                self.dc.as_deref(),
            )
            .await
        {
            Ok(true) => {}
            // Go's text for a refusal without an error.
            Ok(false) => return Err("failed to make contender entry: <nil>".into()),
            Err(e) => {
                return Err(format!("failed to make contender entry: {}", api_error(&e)));
            }
        }
        let mut wait = Wait::new(try_once);
        let mut index = 0;
        loop {
            let Some(wait_time) = wait.next(shutdown) else {
                return Ok(false);
            };
            let Some(read) = shutdown
                .unless(c.kv_list(prefix, &self.read_options(index, wait_time)))
                .await
            else {
                return Ok(false);
            };
            let answer = read.map_err(|e| format!("failed to read prefix: {}", api_error(&e)))?;
            let pairs = answer.value;
            let lock_pair = pairs.iter().find(|p| p.key == lock_key);
            if lock_pair.is_some_and(|p| p.flags != SEMAPHORE_FLAG_VALUE) {
                return Err("Existing key does not match semaphore use".into());
            }
            let mut state = SemaphoreLock::decode(lock_pair, limit)?;
            if state.limit != limit {
                return Err(format!(
                    "semaphore limit conflict (lock: {}, local: {limit})",
                    state.limit
                ));
            }
            state.prune(&pairs);
            if i64::try_from(state.holders.len()).unwrap_or(i64::MAX) >= state.limit {
                index = answer.meta.index;
                continue;
            }
            state.holders.insert(session.to_owned(), true);
            let cas = lock_pair.map_or(0, |p| p.modify_index);
            let written = c
                .kv_put(
                    &lock_key,
                    &state.encode(),
                    SEMAPHORE_FLAG_VALUE,
                    Some(cas),
                    self.dc.as_deref(),
                )
                .await
                .map_err(|e| format!("failed to update lock: {}", api_error(&e)))?;
            if written {
                return Ok(true);
            }
            // Another contender wrote first: read again.
        }
    }

    /// Watches the lock with consistent blocking reads; returns once it is lost (or
    /// the agent failed `retries` times in a row).
    pub(super) async fn monitor(self, session: String, retries: u32) {
        let c = &self.client;
        let mut index = 0;
        'watch: loop {
            let mut left = retries;
            loop {
                let options = self.read_options(index, MAX_WAIT).consistent();
                let held = match &self.kind {
                    Kind::Lock { key } => c.kv_get(key, &options).await.map(|a| {
                        let ours = a
                            .value
                            .is_some_and(|p| p.session.as_deref() == Some(session.as_str()));
                        (ours, a.meta.index)
                    }),
                    Kind::Semaphore { prefix, limit } => {
                        c.kv_list(prefix, &options).await.map(|a| {
                            let lock_key = go_join(prefix, LOCK_KEY);
                            let lock_pair = a.value.iter().find(|p| p.key == lock_key);
                            let ours =
                                SemaphoreLock::decode(lock_pair, *limit).is_ok_and(|mut state| {
                                    state.prune(&a.value);
                                    state.holders.contains_key(&session)
                                });
                            (ours, a.meta.index)
                        })
                    }
                };
                match held {
                    Ok((true, at)) => {
                        index = at;
                        continue 'watch;
                    }
                    Ok((false, _)) => return,
                    Err(e) if left > 0 && retryable(&e) => {
                        tokio::time::sleep(MONITOR_RETRY_TIME).await;
                        left -= 1;
                        index = 0;
                    }
                    Err(_) => return,
                }
            }
        }
    }

    /// Gives the lock back.
    pub(super) async fn release(&self, session: &str) -> Result<(), String> {
        let c = &self.client;
        match &self.kind {
            Kind::Lock { key } => {
                c.kv_lock(
                    key,
                    b"",
                    LOCK_FLAG_VALUE,
                    session,
                    false,
                    self.dc.as_deref(),
                )
                .await
                .map_err(|e| format!("failed to release lock: {}", api_error(&e)))?;
            }
            Kind::Semaphore { prefix, limit } => {
                let lock_key = go_join(prefix, LOCK_KEY);
                loop {
                    let answer = c
                        .kv_get(&lock_key, &self.read_options(0, Duration::ZERO))
                        .await
                        .map_err(|e| api_error(&e))?;
                    let pair = answer.value;
                    let mut state = SemaphoreLock::decode(pair.as_ref(), *limit)?;
                    if state.holders.remove(session).is_none() {
                        break;
                    }
                    let cas = pair.as_ref().map_or(0, |p| p.modify_index);
                    let written = c
                        .kv_put(
                            &lock_key,
                            &state.encode(),
                            SEMAPHORE_FLAG_VALUE,
                            Some(cas),
                            self.dc.as_deref(),
                        )
                        .await
                        .map_err(|e| format!("failed to update lock: {}", api_error(&e)))?;
                    if written {
                        break;
                    }
                }
                c.kv_delete(&go_join(prefix, session), None, self.dc.as_deref())
                    .await
                    .map_err(|e| api_error(&e))?;
            }
        }
        Ok(())
    }

    /// Deletes `.lock` (check-and-set) when nobody holds it.
    pub(super) async fn destroy(&self) -> Result<(), Cleanup> {
        let c = &self.client;
        let failed =
            |what: &str, e: ClientError| Cleanup::Failed(format!("{what}: {}", api_error(&e)));
        match &self.kind {
            Kind::Lock { key } => {
                let answer = c
                    .kv_get(key, &self.read_options(0, Duration::ZERO))
                    .await
                    .map_err(|e| failed("failed to read lock", e))?;
                let Some(pair) = answer.value else {
                    return Ok(());
                };
                if pair.flags != LOCK_FLAG_VALUE {
                    return Err(Cleanup::Failed(
                        "Existing key does not match lock use".into(),
                    ));
                }
                if pair.session.is_some() {
                    return Err(Cleanup::InUse);
                }
                let removed = c
                    .kv_delete(key, Some(pair.modify_index), self.dc.as_deref())
                    .await
                    .map_err(|e| failed("failed to remove lock", e))?;
                if removed { Ok(()) } else { Err(Cleanup::InUse) }
            }
            Kind::Semaphore { prefix, limit } => {
                let answer = c
                    .kv_list(prefix, &self.read_options(0, Duration::ZERO))
                    .await
                    .map_err(|e| failed("failed to read prefix", e))?;
                let lock_key = go_join(prefix, LOCK_KEY);
                let Some(pair) = answer.value.iter().find(|p| p.key == lock_key) else {
                    return Ok(());
                };
                if pair.flags != SEMAPHORE_FLAG_VALUE {
                    return Err(Cleanup::Failed(
                        "Existing key does not match semaphore use".into(),
                    ));
                }
                let mut state =
                    SemaphoreLock::decode(Some(pair), *limit).map_err(Cleanup::Failed)?;
                state.prune(&answer.value);
                if !state.holders.is_empty() {
                    return Err(Cleanup::InUse);
                }
                let removed = c
                    .kv_delete(&lock_key, Some(pair.modify_index), self.dc.as_deref())
                    .await
                    .map_err(|e| failed("failed to remove semaphore", e))?;
                if removed { Ok(()) } else { Err(Cleanup::InUse) }
            }
        }
    }
}

/// The wait of each blocking read while acquiring: Consul's 15 s, or with `-timeout`
/// what is left of it (`None` once it has passed, or on a signal).
pub(super) struct Wait {
    pub(super) try_once: Option<Duration>,
    pub(super) start: Instant,
    pub(super) attempts: u32,
}

impl Wait {
    pub(super) fn new(try_once: Option<Duration>) -> Wait {
        Wait {
            try_once,
            start: Instant::now(),
            attempts: 0,
        }
    }

    pub(super) fn next(&mut self, shutdown: &Shutdown) -> Option<Duration> {
        if shutdown.triggered() {
            return None;
        }
        let wait = match self.try_once {
            None => LOCK_WAIT_TIME,
            Some(limit) if self.attempts == 0 => limit,
            Some(limit) => {
                let elapsed = self.start.elapsed();
                if elapsed > limit {
                    return None;
                }
                limit - elapsed
            }
        };
        self.attempts += 1;
        Some(wait)
    }
}
