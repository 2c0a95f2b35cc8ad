//! What the tests of the transport modules share: pool configurations on loopback, a
//! cluster of pools that stops when dropped, and a wait on a condition.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::keyring::{Key, Keyring};
use crate::member::MemberStatus;
use crate::stream::{self, Expect, Frame, FrameError, Kind, Opener};
use crate::swim;

use super::{Encryption, Pool, PoolConfig};

pub(super) fn config(name: &str, encryption: Option<Encryption>) -> PoolConfig {
    PoolConfig {
        name: name.into(),
        bind: "127.0.0.1:0".parse().unwrap(),
        advertise: "127.0.0.1".parse().unwrap(),
        advertise_port: None,
        tags: BTreeMap::from([("role".to_string(), "node".to_string())]),
        gossip: swim::Config::local(),
        encryption,
    }
}

pub(super) fn encrypted(key: &Key) -> Option<Encryption> {
    Some(Encryption {
        keyring: Keyring::new(key.clone()),
        file: None,
        verify_incoming: true,
        verify_outgoing: true,
    })
}

pub(super) async fn eventually(what: &str, mut pred: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(20);
    while !pred() {
        assert!(Instant::now() < end, "{what} did not happen within 20s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(super) fn sees(pool: &Pool, node: &str, status: MemberStatus) -> bool {
    pool.members()
        .iter()
        .any(|m| m.name == node && m.status == status)
}

pub(super) struct Cluster {
    pub(super) pools: Vec<Pool>,
    pub(super) tokens: Vec<CancellationToken>,
    pub(super) tasks: TaskTracker,
}

impl Cluster {
    pub(super) async fn start(
        n: usize,
        encryption: impl Fn(usize) -> Option<Encryption>,
    ) -> Cluster {
        let tasks = TaskTracker::new();
        let mut pools = Vec::new();
        let mut tokens = Vec::new();
        for i in 0..n {
            let token = CancellationToken::new();
            let pool = Pool::start(
                config(&format!("n{i}"), encryption(i)),
                &tasks,
                token.clone(),
            )
            .await
            .unwrap();
            pools.push(pool);
            tokens.push(token);
        }
        Cluster {
            pools,
            tokens,
            tasks,
        }
    }

    pub(super) fn all_alive(&self) -> bool {
        self.pools.iter().all(|p| {
            p.members().len() == self.pools.len()
                && p.members().iter().all(|m| m.status == MemberStatus::Alive)
        })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for t in &self.tokens {
            t.cancel();
        }
        self.tasks.close();
    }
}

pub(super) fn soon() -> Instant {
    Instant::now() + Duration::from_secs(5)
}

/// Reads the answer to a request of `kind` as a member without a key does.
pub(super) async fn read_answer(stream: &mut TcpStream, kind: Kind) -> Result<Frame, FrameError> {
    let opener = Opener {
        keyring: None,
        verify_incoming: false,
    };
    let budget = stream::budget();
    let mut grant = budget.grant(stream.peer_addr().unwrap().ip());
    stream::read(stream, &opener, Expect::Answer(kind), &mut grant).await
}
