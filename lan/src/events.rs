//! User events at this agent (`consul event`, `/v1/event/*`).
//!
//! An event is fired in the LAN pool (see `gossip::swim::UserEvent`): gossip brings it
//! once to every member, this one included. Each agent then decides by itself whether it
//! is meant for it, as Consul's agents do: the node filter is matched against its own
//! node name, the service and tag filters against its own services (by name) and their
//! tags. Events that pass are kept in a ring of the last [`EVENT_BUFFER`], which
//! `/v1/event/list` shows and its blocking form waits on.

use std::collections::VecDeque;
use std::sync::Mutex;

use catalog::Service;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// Events an agent keeps (Consul's `userEventsSize`); the oldest is dropped first.
pub const EVENT_BUFFER: usize = 256;
/// The version of the event format this agent writes (Consul's `userEventMaxVersion`).
pub const EVENT_VERSION: u32 = 1;
/// Most bytes a compiled filter may take: filters come from the network.
const FILTER_SIZE_LIMIT: usize = 1 << 20;

/// An event to fire: what the caller chooses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fire {
    /// Event name.
    pub name: String,
    /// Opaque payload.
    pub payload: Vec<u8>,
    /// Regular expression on node names (empty: every node).
    pub node_filter: String,
    /// Regular expression on service names (empty: every node).
    pub service_filter: String,
    /// Regular expression on the matching services' tags (needs a service filter).
    pub tag_filter: String,
}

/// An event as fired and as kept: [`Fire`] plus what the firing agent added.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserEvent {
    /// Unique ID (a UUID).
    pub id: String,
    /// Event name.
    pub name: String,
    /// Opaque payload.
    pub payload: Vec<u8>,
    /// Regular expression on node names.
    pub node_filter: String,
    /// Regular expression on service names.
    pub service_filter: String,
    /// Regular expression on tags.
    pub tag_filter: String,
    /// Format version ([`EVENT_VERSION`]).
    pub version: u32,
    /// Lamport time of the datacenter's event clock when it was fired.
    pub ltime: u64,
}

impl UserEvent {
    /// The event as gossip carries it.
    pub fn from_gossip(e: gossip::swim::UserEvent) -> UserEvent {
        UserEvent {
            id: e.id,
            name: e.name,
            payload: e.payload,
            node_filter: e.node_filter,
            service_filter: e.service_filter,
            tag_filter: e.tag_filter,
            version: EVENT_VERSION,
            ltime: e.ltime,
        }
    }

    /// The blocking index of a list that ends with this event (Consul's trick: the
    /// event IDs are random, so the two halves of the UUID XORed make an index that
    /// changes whenever a new event arrives). `None` for an ID that is not a UUID.
    pub fn index(&self) -> Option<u64> {
        id_to_index(&self.id)
    }
}

/// The blocking index an event ID stands for (see [`UserEvent::index`]); `None` for an
/// ID that is not a UUID.
pub fn id_to_index(id: &str) -> Option<u64> {
    let hex: String = id.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 || !hex.is_ascii() {
        return None;
    }
    let high = u64::from_str_radix(hex.get(..16)?, 16).ok()?;
    let low = u64::from_str_radix(hex.get(16..)?, 16).ok()?;
    Some(high ^ low)
}

/// Why an event was not fired. The texts are Consul's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum FireError {
    /// No name.
    #[error("User event missing name")]
    MissingName,
    /// A tag filter alone.
    #[error("Cannot provide tag filter without service filter")]
    TagWithoutService,
    /// A filter that is not a regular expression.
    #[error("Invalid {which} filter: {error}")]
    BadFilter {
        /// `node`, `service` or `tag`.
        which: String,
        /// Why it does not compile.
        error: String,
    },
    /// Over the size limit (`gossip::swim::MAX_USER_EVENT`).
    #[error("{0}")]
    TooLarge(String),
    /// The caller may not fire an event of this name.
    #[error("{0}")]
    Denied(String),
    /// The agent is shutting down.
    #[error("the agent is shutting down")]
    Stopped,
}

fn compile(which: &str, pattern: &str) -> Result<Option<regex::Regex>, FireError> {
    if pattern.is_empty() {
        return Ok(None);
    }
    regex::RegexBuilder::new(pattern)
        .size_limit(FILTER_SIZE_LIMIT)
        .build()
        .map(Some)
        .map_err(|e| FireError::BadFilter {
            which: which.to_owned(),
            error: e.to_string(),
        })
}

impl Fire {
    /// Checks what Consul checks before firing: a name, a tag filter only with a
    /// service filter, filters that compile.
    pub fn validate(&self) -> Result<(), FireError> {
        if self.name.is_empty() {
            return Err(FireError::MissingName);
        }
        if !self.tag_filter.is_empty() && self.service_filter.is_empty() {
            return Err(FireError::TagWithoutService);
        }
        compile("node", &self.node_filter)?;
        compile("service", &self.service_filter)?;
        compile("tag", &self.tag_filter)?;
        Ok(())
    }
}

/// Whether `event` is meant for node `node` running `services`. A filter that does not
/// compile matches nothing.
pub fn matches(event: &UserEvent, node: &str, services: &[Service]) -> bool {
    let Ok(node_re) = compile("node", &event.node_filter) else {
        return false;
    };
    if node_re.is_some_and(|re| !re.is_match(node)) {
        return false;
    }
    let Ok(Some(service_re)) = compile("service", &event.service_filter) else {
        return event.service_filter.is_empty();
    };
    let Ok(tag_re) = compile("tag", &event.tag_filter) else {
        return false;
    };
    services
        .iter()
        .filter(|s| service_re.is_match(&s.name))
        .any(|s| match &tag_re {
            None => true,
            Some(re) => s.tags.iter().any(|t| re.is_match(t)),
        })
}

/// The events this agent accepted, and a signal of each new one.
#[derive(Debug)]
pub struct Events {
    ring: Mutex<VecDeque<UserEvent>>,
    /// Counts events accepted; blocking lists wait for it to change.
    changed: watch::Sender<u64>,
}

impl Default for Events {
    fn default() -> Events {
        Events {
            ring: Mutex::new(VecDeque::with_capacity(EVENT_BUFFER)),
            changed: watch::Sender::new(0),
        }
    }
}

impl Events {
    /// Keeps `event`, dropping the oldest beyond [`EVENT_BUFFER`], and wakes waiters.
    pub fn push(&self, event: UserEvent) {
        {
            let mut ring = self.ring.lock().expect("event ring lock");
            if ring.len() >= EVENT_BUFFER {
                ring.pop_front();
            }
            ring.push_back(event);
        }
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The events kept, oldest first.
    pub fn list(&self) -> Vec<UserEvent> {
        self.ring
            .lock()
            .expect("event ring lock")
            .iter()
            .cloned()
            .collect()
    }

    /// A receiver that sees a change with every event kept from now on.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str, node: &str, service: &str, tag: &str) -> UserEvent {
        UserEvent {
            id: id.into(),
            name: "deploy".into(),
            payload: Vec::new(),
            node_filter: node.into(),
            service_filter: service.into(),
            tag_filter: tag.into(),
            version: EVENT_VERSION,
            ltime: 0,
        }
    }

    fn service(name: &str, tags: &[&str]) -> Service {
        Service {
            id: name.into(),
            name: name.into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            ..Service::default()
        }
    }

    #[test]
    fn filters_match_the_node_name_and_its_services_and_tags() {
        let services = [service("web", &["v1", "primary"]), service("db", &[])];
        let cases = [
            (event("a", "", "", ""), true),
            (event("a", "^node-1$", "", ""), true),
            (event("a", "^node-2$", "", ""), false),
            (event("a", "", "^web$", ""), true),
            (event("a", "", "^cache$", ""), false),
            (event("a", "", "web", "^v1$"), true),
            (event("a", "", "web", "^v2$"), false),
            (event("a", "", "db", "v1"), false),
            (event("a", "node", "web", "prim"), true),
            (event("a", "(", "", ""), false),
        ];
        for (e, expected) in cases {
            assert_eq!(matches(&e, "node-1", &services), expected, "{e:?}");
        }
    }

    #[test]
    fn firing_checks_name_filters_and_tag_without_service() {
        let fire = |name: &str, service: &str, tag: &str| Fire {
            name: name.into(),
            service_filter: service.into(),
            tag_filter: tag.into(),
            ..Fire::default()
        };
        assert_eq!(fire("", "", "").validate(), Err(FireError::MissingName));
        assert_eq!(
            fire("x", "", "v1").validate().unwrap_err().to_string(),
            "Cannot provide tag filter without service filter"
        );
        assert!(
            fire("x", "(", "")
                .validate()
                .unwrap_err()
                .to_string()
                .starts_with("Invalid service filter: ")
        );
        assert_eq!(fire("x", "web", "v1").validate(), Ok(()));
    }

    #[test]
    fn the_ring_keeps_the_last_events_and_signals_each() {
        let events = Events::default();
        let mut changes = events.subscribe();
        for i in 0..EVENT_BUFFER + 3 {
            events.push(event(&i.to_string(), "", "", ""));
        }
        let kept = events.list();
        assert_eq!(kept.len(), EVENT_BUFFER);
        assert_eq!(kept[0].id, "3");
        assert!(changes.has_changed().unwrap());
        changes.mark_unchanged();
        assert!(!changes.has_changed().unwrap());
    }

    #[test]
    fn the_index_comes_from_the_last_id() {
        let e = event("00000000-0000-0001-0000-000000000003", "", "", "");
        assert_eq!(e.index(), Some(2));
        assert_eq!(event("not-a-uuid", "", "", "").index(), None);
    }
}
