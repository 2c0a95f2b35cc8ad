//! The SWIM engine: membership state and the protocol's decisions, without sockets or
//! clocks. The driver feeds it packets, stream messages and the time, and carries out the
//! [`Output`]s it returns.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};

use super::Config;
use super::broadcast::{Queue, retransmit_limit};
use super::coordinate::{Coordinate, Vivaldi};
use super::message::{
    DecodeError, Incoming, MAX_MESSAGES, MAX_USER_EVENT, MemberState, Message, Packet, State,
    UserEvent, decode_incoming, encode_alive, encode_packet,
};

/// Most indirect probes relayed for others at once; more requests are ignored (the
/// requester then counts a missing nack, which is what an overloaded relay means).
pub const MAX_RELAYS: usize = 256;
/// Members told of a leave directly (the rest hear it by gossip).
pub(crate) const LEAVE_DIRECT: usize = 64;
/// How long a pruned member's tombstone lasts: far longer than news takes to spread.
pub(crate) const TOMBSTONE_TTL: Duration = Duration::from_secs(600);
/// Most tombstones kept; the oldest go first.
const MAX_TOMBSTONES: usize = 4096;
/// User event IDs remembered to deliver each event once: far more than can be in flight
/// (an event stops being gossiped after a few rounds), the oldest forgotten first.
pub(crate) const MAX_SEEN_EVENTS: usize = 4096;
/// Longest wait, times one to two, before a member that just joined exchanges state
/// again (see [`Engine::resync_soon`]). The joins it should pick up were under way at the
/// same time as its own and end within a few round trips, not a probe interval: on the
/// WAN (probe every 5 s) waiting one to two probe intervals made a star join of 50
/// datacenters take 9 s to converge, as long as the announcements take to spread.
const RESYNC_AFTER: Duration = Duration::from_secs(1);

/// Something for the driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send this packet (plaintext; the driver seals it) to `to`.
    Packet {
        /// Destination.
        to: SocketAddr,
        /// Encoded packet.
        bytes: Vec<u8>,
    },
    /// Open a stream to `to`, send our state, read theirs and hand it to
    /// [`Engine::merge_remote`] (push-pull; `join` when joining).
    PushPull {
        /// Destination.
        to: SocketAddr,
        /// Whether this is a join.
        join: bool,
    },
}

/// A change in membership, or a user event, for the layer above.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A member joined or came back.
    Join(String),
    /// A member's address or tags changed.
    Update(String),
    /// A member left on purpose.
    Leave(String),
    /// A member was declared failed.
    Failed(String),
    /// A long-dead or long-left member was forgotten.
    Reap(String),
    /// A user event, fired here or heard for the first time.
    User(UserEvent),
}

/// Why a user event was not fired.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserEventError {
    /// Name, payload, filters and ID together are over [`MAX_USER_EVENT`] bytes.
    #[error("user event exceeds configured limit of {MAX_USER_EVENT} bytes before encoding")]
    TooLarge,
}

/// A member as the engine knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Node name.
    pub name: String,
    /// Gossip address.
    pub addr: SocketAddr,
    /// Incarnation.
    pub incarnation: u32,
    /// State.
    pub state: State,
    /// Tags, shared with the member lists published from this engine (a publication
    /// copies every member, and so copies a pointer here rather than every tag).
    pub tags: Arc<BTreeMap<String, String>>,
    /// When the state last changed.
    pub since: Instant,
}

/// What is remembered of a pruned member.
#[derive(Debug, Clone, Copy)]
struct Tombstone {
    incarnation: u32,
    since: Instant,
    /// Where it was, if known: traffic from there gets the prune news back, so that a
    /// pruned member that is in fact alive refutes with a newer incarnation and returns.
    addr: Option<SocketAddr>,
}

/// A probe in flight.
#[derive(Debug)]
struct Probe {
    seq: u32,
    target: String,
    /// When the direct ping went out (the RTT sample of its ack).
    sent: Instant,
    /// When to ask others to probe the target for us.
    indirect_at: Instant,
    /// When the probe has failed if no ack arrived.
    fails_at: Instant,
    indirect_sent: bool,
    expected_nacks: usize,
    nacks: usize,
}

/// An indirect probe we run for another member.
#[derive(Debug)]
struct Relay {
    requester: SocketAddr,
    seq: u32,
    nack: bool,
    deadline: Instant,
}

/// A suspicion of one member, shrinking with independent confirmations (Lifeguard).
#[derive(Debug)]
struct Suspicion {
    start: Instant,
    min: Duration,
    max: Duration,
    /// Confirmations expected before the timeout reaches `min`.
    expected: u32,
    /// Members that suspect the node, the first one included (it is not a confirmation).
    confirmations: BTreeSet<String>,
}

impl Suspicion {
    /// Lifeguard's formula: from `max` down towards `min` as the logarithm of the number
    /// of confirmations grows, reaching `min` at `expected` confirmations.
    fn deadline(&self) -> Instant {
        let c = self.confirmations.len().saturating_sub(1) as f64;
        let k = f64::from(self.expected);
        let fraction = if k <= 0.0 {
            1.0
        } else {
            ((c + 1.0).ln() / (k + 1.0).ln()).min(1.0)
        };
        let span = self.max.saturating_sub(self.min).as_secs_f64();
        let timeout = self.max.as_secs_f64() - span * fraction;
        self.start + Duration::from_secs_f64(timeout.max(self.min.as_secs_f64()))
    }
}

/// The SWIM + Lifeguard engine of one member.
pub struct Engine {
    config: Config,
    name: String,
    addr: SocketAddr,
    incarnation: u32,
    tags: BTreeMap<String, String>,
    leaving: bool,
    members: BTreeMap<String, Member>,
    probe_order: Vec<String>,
    /// The names of every member but this one, in no order: gossip targets are drawn
    /// from it at random positions instead of by walking the member map.
    others: Vec<String>,
    probe_index: usize,
    probe: Option<Probe>,
    next_probe: Instant,
    next_gossip: Instant,
    next_push_pull: Instant,
    /// Whom the next full state exchange is with, when it is the one after a join: the
    /// member joined through (see [`Engine::resync_soon`]).
    resync_with: Option<SocketAddr>,
    next_reconnect: Instant,
    /// When dead and left members are next looked for ([`Engine::reap`]).
    next_reap: Instant,
    seq: u32,
    relays: BTreeMap<u32, Relay>,
    suspicions: BTreeMap<String, Suspicion>,
    /// Members pruned by `force-leave -prune`, with the incarnation pruned and when:
    /// news of them at that incarnation or older is ignored until [`TOMBSTONE_TTL`], so
    /// that a peer that has not heard of the prune yet cannot bring them back.
    tombstones: BTreeMap<String, Tombstone>,
    broadcasts: Queue,
    /// Lifeguard's local health score: 0 is healthy; timeouts scale by score + 1.
    awareness: u32,
    rng: StdRng,
    outputs: Vec<Output>,
    events: Vec<Event>,
    /// Members this one began to suspect, since it started (a metric's source).
    suspicions_started: u64,
    /// This member's network coordinate, from the RTTs of its probes.
    vivaldi: Vivaldi,
    /// The latest coordinate of each member that answered a probe (members only).
    coordinates: BTreeMap<String, Coordinate>,
    /// Lamport clock of user events: the next event fired here gets this time.
    event_clock: u64,
    /// IDs of user events already delivered, oldest first (bounded by
    /// [`MAX_SEEN_EVENTS`]), and the same as a set.
    seen_order: VecDeque<String>,
    seen: HashSet<String>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("name", &self.name)
            .field("members", &self.members.len())
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// A one-member pool: this node alone, alive at incarnation 0.
    pub fn new(
        config: Config,
        name: String,
        addr: SocketAddr,
        tags: BTreeMap<String, String>,
        now: Instant,
        seed: u64,
    ) -> Engine {
        let mut members = BTreeMap::new();
        members.insert(
            name.clone(),
            Member {
                name: name.clone(),
                addr,
                incarnation: 0,
                state: State::Alive,
                tags: Arc::new(tags.clone()),
                since: now,
            },
        );
        let mut rng = StdRng::seed_from_u64(seed);
        let jitter = |rng: &mut StdRng, d: Duration| d.mul_f64(rng.random_range(0.0..1.0));
        let next_probe = now + jitter(&mut rng, config.probe_interval);
        let next_gossip = now + jitter(&mut rng, config.gossip_interval);
        // Every periodic round starts at a random point of its interval, as memberlist's
        // do: members started together (a fleet restarted at once, or a thousand in one
        // process) would otherwise all exchange their state, or all try to reconnect to a
        // failed member, in the same instant, every interval.
        let next_push_pull = now + jitter(&mut rng, config.push_pull_interval);
        let next_reconnect = now + jitter(&mut rng, config.reconnect_interval);
        let next_reap = now + reap_interval(&config);
        Engine {
            config,
            name,
            addr,
            incarnation: 0,
            tags,
            leaving: false,
            members,
            probe_order: Vec::new(),
            others: Vec::new(),
            probe_index: 0,
            probe: None,
            next_probe,
            next_gossip,
            next_push_pull,
            resync_with: None,
            next_reconnect,
            next_reap,
            seq: 0,
            relays: BTreeMap::new(),
            suspicions: BTreeMap::new(),
            tombstones: BTreeMap::new(),
            broadcasts: Queue::default(),
            awareness: 0,
            rng,
            outputs: Vec::new(),
            events: Vec::new(),
            suspicions_started: 0,
            vivaldi: Vivaldi::default(),
            coordinates: BTreeMap::new(),
            event_clock: 0,
            seen_order: VecDeque::new(),
            seen: HashSet::new(),
        }
    }

    /// Fires a user event: stamps it with the event clock, delivers it here as
    /// [`Event::User`] and queues it for gossip. The ID must be fresh (a UUID).
    pub fn fire(&mut self, mut event: UserEvent) -> Result<UserEvent, UserEventError> {
        if event.size() > MAX_USER_EVENT {
            return Err(UserEventError::TooLarge);
        }
        event.ltime = self.event_clock;
        self.event_clock = self.event_clock.saturating_add(1);
        self.on_user_event(event.clone());
        Ok(event)
    }

    /// The Lamport time the next user event fired here gets.
    pub fn event_clock(&self) -> u64 {
        self.event_clock
    }

    /// Delivers and rebroadcasts a user event the first time it is seen.
    fn on_user_event(&mut self, event: UserEvent) {
        // Lamport: never fire below a time already witnessed.
        self.event_clock = self.event_clock.max(event.ltime.saturating_add(1));
        if self.seen.contains(&event.id) {
            return;
        }
        if self.seen_order.len() >= MAX_SEEN_EVENTS
            && let Some(old) = self.seen_order.pop_front()
        {
            self.seen.remove(&old);
        }
        self.seen_order.push_back(event.id.clone());
        self.seen.insert(event.id.clone());
        let key = format!("event:{}", event.id);
        self.broadcast(&key, Message::UserEvent(event.clone()));
        self.events.push(Event::User(event));
    }

    /// This member's network coordinate.
    pub fn coordinate(&self) -> &Coordinate {
        self.vivaldi.coordinate()
    }

    /// The latest coordinate of every other member that answered a probe.
    pub fn coordinates(&self) -> &BTreeMap<String, Coordinate> {
        &self.coordinates
    }

    /// This member's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Every known member, this one included.
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    /// How many members are known, this one included.
    pub fn member_count(&self) -> usize {
        self.members.len()
    }

    /// Lifeguard's local health score (0 = healthy).
    pub fn awareness(&self) -> u32 {
        self.awareness
    }

    /// How many times a member became suspect here, since the engine started.
    pub fn suspicions_started(&self) -> u64 {
        self.suspicions_started
    }

    /// Outputs produced since the last call.
    pub fn take_outputs(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.outputs)
    }

    /// Membership events and user events since the last call.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// Members other than this one that are alive or suspect: who would hear a
    /// broadcast.
    pub fn live_peers(&self) -> usize {
        self.members
            .values()
            .filter(|m| m.name != self.name && matches!(m.state, State::Alive | State::Suspect))
            .count()
    }

    /// Whether any other member is alive or suspected: [`Engine::live_peers`] without
    /// walking every member.
    pub fn has_live_peer(&self) -> bool {
        self.members
            .values()
            .any(|m| m.name != self.name && matches!(m.state, State::Alive | State::Suspect))
    }

    /// Broadcasts waiting to be sent.
    pub fn pending_broadcasts(&self) -> usize {
        self.broadcasts.len()
    }

    /// When [`Engine::tick`] next has something to do.
    pub fn next_deadline(&self) -> Instant {
        let mut next = self
            .next_probe
            .min(self.next_gossip)
            .min(self.next_push_pull)
            .min(self.next_reconnect)
            .min(self.next_reap);
        if let Some(p) = &self.probe {
            next = next.min(if p.indirect_sent {
                p.fails_at
            } else {
                p.indirect_at
            });
        }
        for r in self.relays.values() {
            next = next.min(r.deadline);
        }
        for s in self.suspicions.values() {
            next = next.min(s.deadline());
        }
        next
    }

    fn alive_count(&self) -> usize {
        self.members
            .values()
            .filter(|m| matches!(m.state, State::Alive | State::Suspect))
            .count()
    }

    fn scaled(&self, d: Duration) -> Duration {
        d * (self.awareness + 1)
    }

    fn adjust_awareness(&mut self, delta: i64) {
        let max = i64::from(self.config.awareness_max_multiplier.saturating_sub(1));
        self.awareness = (i64::from(self.awareness) + delta).clamp(0, max) as u32;
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn self_alive(&self) -> Message {
        Message::Alive {
            incarnation: self.incarnation,
            node: self.name.clone(),
            addr: self.addr,
            tags: self.tags.clone(),
        }
    }

    fn broadcast(&mut self, about: &str, message: Message) {
        self.broadcasts.push(about, &message);
    }

    /// Sends `messages` to `to`, filling the rest of the packet with broadcasts.
    fn send(&mut self, to: SocketAddr, messages: Vec<Message>) {
        let mut packet = Packet::new();
        for m in &messages {
            packet.push(m);
        }
        let space = self.config.max_packet_size.saturating_sub(packet.len());
        let room = MAX_MESSAGES.saturating_sub(packet.count());
        let limit = retransmit_limit(self.config.retransmit_mult, self.members.len());
        self.broadcasts.take_into(&mut packet, space, room, limit);
        if packet.count() == 0 {
            return;
        }
        self.outputs.push(Output::Packet {
            to,
            bytes: packet.finish(),
        });
    }

    /// Changes this member's tags (announced with a new incarnation).
    pub fn set_tags(&mut self, tags: BTreeMap<String, String>) {
        self.tags = tags.clone();
        self.incarnation = self.incarnation.saturating_add(1);
        if let Some(me) = self.members.get_mut(&self.name) {
            me.tags = Arc::new(tags);
            me.incarnation = self.incarnation;
        }
        let alive = self.self_alive();
        let name = self.name.clone();
        self.broadcast(&name, alive);
    }

    /// Starts joining the pools of `seeds` (a push-pull with each).
    pub fn join(&mut self, seeds: &[SocketAddr]) {
        for &to in seeds {
            self.outputs.push(Output::PushPull { to, join: true });
        }
        let alive = self.self_alive();
        let name = self.name.clone();
        self.broadcast(&name, alive);
    }

    /// Moves the next full state exchange to one or two probe intervals from `now`, or
    /// one to two seconds when the probe interval is longer, and makes it one with
    /// `seed`. A member that just joined through `seed` calls it: its join exchange told
    /// it about the members its seed knew, and the one a moment later picks up those who
    /// joined meanwhile and whose announcements it missed, instead of waiting for the
    /// regular push-pull interval. It is with the seed because the seed heard first-hand
    /// of every join made through it, where a member picked at random may have joined a
    /// moment ago itself and know little more than this one. A regular exchange that was
    /// due sooner waits for it: run at once it would be this one, too early to catch what
    /// it is for (the regular rounds start at a random point of their interval, so one
    /// is often due within a second).
    pub fn resync_soon(&mut self, now: Instant, seed: SocketAddr) {
        let delay = self
            .config
            .probe_interval
            .min(RESYNC_AFTER)
            .mul_f64(self.rng.random_range(1.0..2.0));
        self.next_push_pull = now + delay;
        self.resync_with = Some(seed);
    }

    /// Announces that this member leaves. The driver keeps running until the broadcast
    /// has gone out (or the leave timeout), then stops.
    pub fn leave(&mut self, now: Instant) {
        self.leaving = true;
        let name = self.name.clone();
        if let Some(me) = self.members.get_mut(&name) {
            me.state = State::Left;
            me.since = now;
        }
        let dead = Message::Dead {
            incarnation: self.incarnation,
            node: name.clone(),
            from: name.clone(),
        };
        self.broadcast(&name, dead.clone());
        // Tell up to LEAVE_DIRECT members directly, so that a leave is seen as one
        // whatever gossip loses, then let gossip carry it to the rest.
        let mut peers: Vec<SocketAddr> = self
            .members
            .values()
            .filter(|m| m.name != self.name && matches!(m.state, State::Alive | State::Suspect))
            .map(|m| m.addr)
            .collect();
        peers.shuffle(&mut self.rng);
        peers.truncate(LEAVE_DIRECT);
        for to in peers {
            self.outputs.push(Output::Packet {
                to,
                bytes: encode_packet(std::slice::from_ref(&dead)),
            });
        }
        self.gossip(now);
    }

    /// Our state for a push-pull.
    pub fn local_state(&self) -> Vec<MemberState> {
        self.members
            .values()
            .map(|m| MemberState {
                name: m.name.clone(),
                addr: m.addr,
                incarnation: m.incarnation,
                state: m.state,
                tags: m.tags.clone(),
            })
            .collect()
    }

    /// Merges a remote member list (push-pull). Remote `Dead` and `Suspect` become a
    /// suspicion here (we check for ourselves); `Left` is taken as is.
    pub fn merge_remote(&mut self, now: Instant, states: Vec<MemberState>) {
        for s in states {
            if s.name == self.name {
                // What the peer believes about us: anything but alive is refuted.
                if s.state != State::Alive && !self.leaving && s.incarnation >= self.incarnation {
                    self.refute(s.incarnation);
                } else if s.state == State::Alive {
                    self.on_alive(now, s.incarnation, &s.name, s.addr, || {
                        Arc::unwrap_or_clone(s.tags)
                    });
                }
                continue;
            }
            match s.state {
                State::Alive => self.on_alive(now, s.incarnation, &s.name, s.addr, || {
                    Arc::unwrap_or_clone(s.tags)
                }),
                State::Left => {
                    let name = s.name.clone();
                    self.on_dead(now, s.incarnation, &name, &name);
                }
                State::Dead | State::Suspect => {
                    // Learn of the member first if it is new to us.
                    if !self.members.contains_key(&s.name) && s.name != self.name {
                        self.on_alive(now, s.incarnation, &s.name, s.addr, || {
                            Arc::unwrap_or_clone(s.tags)
                        });
                    }
                    let from = self.name.clone();
                    self.on_suspect(now, s.incarnation, &s.name, &from);
                }
            }
        }
    }

    /// Handles one packet from `from`.
    pub fn handle_packet(
        &mut self,
        now: Instant,
        from: SocketAddr,
        bytes: &[u8],
    ) -> Result<(), DecodeError> {
        let messages = decode_incoming(bytes)?;
        // A pruned member still talking is alive after all: tell it, so that it refutes.
        let pruned = self
            .tombstones
            .iter()
            .find(|(_, t)| t.addr == Some(from))
            .map(|(name, t)| (name.clone(), t.incarnation));
        if let Some((node, incarnation)) = pruned {
            self.send(from, vec![Message::Prune { incarnation, node }]);
        }
        for message in messages {
            self.handle_message(now, from, message);
        }
        Ok(())
    }

    fn handle_message(&mut self, now: Instant, from: SocketAddr, message: Incoming<'_>) {
        let from_addr = from;
        let message = match message {
            Incoming::Alive {
                incarnation,
                node,
                addr,
                tags,
            } => return self.on_alive(now, incarnation, node, addr, || tags.to_map()),
            Incoming::Suspect {
                incarnation,
                node,
                from,
            } => return self.on_suspect_message(now, from_addr, incarnation, node, from),
            Incoming::Dead {
                incarnation,
                node,
                from,
            } => return self.on_dead_message(now, from_addr, incarnation, node, from),
            Incoming::Other(message) => message,
        };
        match message {
            Message::Ping { seq, target, .. } => {
                // A ping meant for a node that used to have our address is not ours to
                // answer.
                if target.is_empty() || target == self.name {
                    let coord = self.vivaldi.coordinate().clone();
                    self.send(from, vec![Message::AckCoord { seq, coord }]);
                }
            }
            Message::IndirectPing {
                seq,
                target,
                target_addr,
                nack,
            } => {
                if self.relays.len() >= MAX_RELAYS {
                    return;
                }
                let ours = self.next_seq();
                self.relays.insert(
                    ours,
                    Relay {
                        requester: from,
                        seq,
                        nack,
                        deadline: now + self.scaled(self.config.probe_timeout),
                    },
                );
                let ping = Message::Ping {
                    seq: ours,
                    target,
                    source: self.name.clone(),
                };
                self.send(target_addr, vec![ping]);
            }
            Message::Ack { seq } => self.on_ack(seq),
            Message::AckCoord { seq, coord } => {
                if let Some(probe) = self.probe.as_ref().filter(|p| p.seq == seq)
                    && self.members.contains_key(&probe.target)
                    && coord.is_valid()
                {
                    let target = probe.target.clone();
                    let rtt = now.saturating_duration_since(probe.sent);
                    if self.vivaldi.update(&target, &coord, rtt) {
                        self.coordinates.insert(target, coord);
                    }
                }
                self.on_ack(seq);
            }
            Message::Nack { seq } => {
                if let Some(p) = &mut self.probe
                    && p.seq == seq
                {
                    p.nacks += 1;
                }
            }
            Message::Alive {
                incarnation,
                node,
                addr,
                tags,
            } => self.on_alive(now, incarnation, &node, addr, || tags),
            Message::Suspect {
                incarnation,
                node,
                from,
            } => self.on_suspect_message(now, from_addr, incarnation, &node, &from),
            Message::Dead {
                incarnation,
                node,
                from,
            } => self.on_dead_message(now, from_addr, incarnation, &node, &from),
            Message::Prune { incarnation, node } => self.on_prune(now, incarnation, &node),
            Message::UserEvent(event) => self.on_user_event(event),
            // Push-pull travels on streams, not in packets.
            Message::PushPull { .. } => {}
        }
    }

    /// A suspicion heard from `sender`, made by `from`; when it accuses us, the refutation
    /// also goes straight to the accuser.
    fn on_suspect_message(
        &mut self,
        now: Instant,
        sender: SocketAddr,
        incarnation: u32,
        node: &str,
        from: &str,
    ) {
        let accused = node == self.name;
        let to = from_addr_of(sender, from, &self.members);
        self.on_suspect(now, incarnation, node, from);
        if accused {
            self.answer_accusation(to);
        }
    }

    /// A death or leave heard from `sender`, declared by `from`; a verdict on us from
    /// someone else is answered like a suspicion.
    fn on_dead_message(
        &mut self,
        now: Instant,
        sender: SocketAddr,
        incarnation: u32,
        node: &str,
        from: &str,
    ) {
        let accused = node == self.name && from != self.name;
        let to = from_addr_of(sender, from, &self.members);
        self.on_dead(now, incarnation, node, from);
        if accused {
            self.answer_accusation(to);
        }
    }

    fn on_ack(&mut self, seq: u32) {
        if let Some(relay) = self.relays.remove(&seq) {
            self.send(relay.requester, vec![Message::Ack { seq: relay.seq }]);
            return;
        }
        if self.probe.as_ref().is_some_and(|p| p.seq == seq) {
            let probe = self.probe.take().expect("checked above");
            // A direct answer means we are healthy; an indirect one tells us nothing
            // about our own health.
            if !probe.indirect_sent {
                self.adjust_awareness(-1);
            }
        }
    }

    /// Tells whoever accuses us (or the packet's sender, when the accuser is unknown)
    /// that we are alive, directly: a refutation spread by gossip alone can miss the one
    /// member whose suspicion timer is running, and then it declares us failed anyway.
    /// Only accusations trigger this, so its traffic is bounded by theirs.
    fn answer_accusation(&mut self, to: SocketAddr) {
        if self.leaving {
            return;
        }
        let alive = self.self_alive();
        self.send(to, vec![alive]);
    }

    /// Someone claims we are suspect or dead: answer with a newer incarnation.
    fn refute(&mut self, incarnation: u32) {
        if self.leaving {
            return;
        }
        // Saturating: a peer may claim any incarnation, u32::MAX included.
        self.incarnation = self.incarnation.max(incarnation).saturating_add(1);
        if let Some(me) = self.members.get_mut(&self.name) {
            me.incarnation = self.incarnation;
            me.state = State::Alive;
        }
        // Being suspected hints that we are the slow one (Lifeguard).
        self.adjust_awareness(1);
        let alive = self.self_alive();
        let name = self.name.clone();
        self.broadcast(&name, alive);
    }

    /// `node` is alive at `incarnation`. `tags` gives its tags, and is called only for
    /// news that is new here: in a large pool most alive messages heard are repeats.
    fn on_alive(
        &mut self,
        now: Instant,
        incarnation: u32,
        node: &str,
        addr: SocketAddr,
        tags: impl FnOnce() -> BTreeMap<String, String>,
    ) {
        if node == self.name {
            // Someone else speaks for us with a newer or conflicting view: refute.
            if incarnation > self.incarnation
                || (incarnation == self.incarnation && (addr != self.addr || tags() != self.tags))
            {
                self.refute(incarnation);
            }
            return;
        }
        if let Some(t) = self.tombstones.get(node) {
            if incarnation <= t.incarnation {
                return;
            }
            // Back with a newer incarnation: a real restart, not stale news.
            self.tombstones.remove(node);
        }
        match self.members.get_mut(node) {
            None => {
                let tags = tags();
                let node = node.to_owned();
                self.members.insert(
                    node.clone(),
                    Member {
                        name: node.clone(),
                        addr,
                        incarnation,
                        state: State::Alive,
                        tags: Arc::new(tags),
                        since: now,
                    },
                );
                // New members are probed soon, at a random place in the order.
                let at = self.rng.random_range(0..=self.probe_order.len());
                self.probe_order.insert(at, node.clone());
                self.others.push(node.clone());
                self.events.push(Event::Join(node.clone()));
            }
            Some(m) => {
                if incarnation <= m.incarnation {
                    return;
                }
                let tags = tags();
                let was = m.state;
                let changed = m.addr != addr || *m.tags != tags;
                m.incarnation = incarnation;
                m.addr = addr;
                if *m.tags != tags {
                    m.tags = Arc::new(tags);
                }
                if was != State::Alive {
                    m.state = State::Alive;
                    m.since = now;
                }
                self.suspicions.remove(node);
                match was {
                    State::Dead | State::Left => self.events.push(Event::Join(node.to_owned())),
                    _ if changed => self.events.push(Event::Update(node.to_owned())),
                    _ => {}
                }
            }
        }
        if let Some(m) = self.members.get(node) {
            let encoded = encode_alive(incarnation, node, &addr, &m.tags);
            self.broadcasts.push_encoded(node, encoded);
        }
    }

    fn on_suspect(&mut self, now: Instant, incarnation: u32, node: &str, from: &str) {
        if node == self.name {
            if incarnation >= self.incarnation {
                self.refute(incarnation);
            }
            return;
        }
        let Some(m) = self.members.get(node) else {
            return;
        };
        if incarnation < m.incarnation || matches!(m.state, State::Dead | State::Left) {
            return;
        }
        let message = || Message::Suspect {
            incarnation,
            node: node.to_owned(),
            from: from.to_owned(),
        };
        if m.state == State::Suspect {
            // An independent confirmation shortens the suspicion; spread it once. (A
            // suspicion coming back to its first sender is already in the set.)
            if let Some(s) = self.suspicions.get_mut(node)
                && from != node
                && !s.confirmations.contains(from)
            {
                s.confirmations.insert(from.to_owned());
                self.broadcasts.push(node, &message());
            }
            return;
        }
        // Counted only for a suspicion that starts: repeats and confirmations are
        // frequent, and this walks every member.
        let n = self.alive_count();
        let Some(m) = self.members.get_mut(node) else {
            return;
        };
        m.state = State::Suspect;
        m.incarnation = incarnation;
        m.since = now;
        self.suspicions_started += 1;
        let min = suspicion_timeout(self.config.suspicion_mult, n, self.config.probe_interval);
        let max = min * self.config.suspicion_max_timeout_mult;
        let expected = self
            .config
            .suspicion_mult
            .saturating_sub(2)
            .min(u32::try_from(n.saturating_sub(2)).unwrap_or(u32::MAX));
        let confirmations = BTreeSet::from([from.to_owned()]);
        self.suspicions.insert(
            node.to_owned(),
            Suspicion {
                start: now,
                min,
                max,
                expected,
                confirmations,
            },
        );
        self.broadcasts.push(node, &message());
    }

    fn on_dead(&mut self, now: Instant, incarnation: u32, node: &str, from: &str) {
        if node == self.name {
            // While leaving this is our own announcement coming back; otherwise it is
            // old news (a leave before a restart) or a wrong verdict: refute either way.
            if !self.leaving && incarnation >= self.incarnation {
                self.refute(incarnation);
            }
            return;
        }
        let left = from == node;
        let Some(m) = self.members.get_mut(node) else {
            return;
        };
        // A leave notice also turns a failed member into a left one (`force-leave`).
        let known = m.state == State::Left || (m.state == State::Dead && !left);
        if incarnation < m.incarnation || known {
            return;
        }
        m.state = if left { State::Left } else { State::Dead };
        m.incarnation = incarnation;
        m.since = now;
        self.suspicions.remove(node);
        self.events.push(if left {
            Event::Leave(node.to_owned())
        } else {
            Event::Failed(node.to_owned())
        });
        let message = Message::Dead {
            incarnation,
            node: node.to_owned(),
            from: from.to_owned(),
        };
        self.broadcasts.push(node, &message);
    }

    /// Runs every timer that is due at `now`.
    pub fn tick(&mut self, now: Instant) {
        self.tick_probe(now);
        self.tick_relays(now);
        self.tick_suspicions(now);
        if now >= self.next_gossip {
            self.gossip(now);
            self.next_gossip = now + self.config.gossip_interval;
        }
        if now >= self.next_push_pull {
            self.push_pull();
            self.next_push_pull = now + push_pull_interval(&self.config, self.alive_count());
        }
        if now >= self.next_reconnect {
            self.reconnect();
            self.next_reconnect = now + self.config.reconnect_interval;
        }
        if now >= self.next_reap {
            self.reap(now);
            self.next_reap = now + reap_interval(&self.config);
        }
    }

    fn tick_probe(&mut self, now: Instant) {
        if let Some(p) = &mut self.probe {
            if !p.indirect_sent && now >= p.indirect_at {
                // A round that comes late means this member was not running (a pause, a
                // starved process): the target's ack may be waiting unread. The indirect
                // probes still get their whole window, counted from now, instead of the
                // probe failing at the next round and blaming the target for our stall.
                p.fails_at += now.saturating_duration_since(p.indirect_at);
                let (seq, target) = (p.seq, p.target.clone());
                self.send_indirect(seq, &target);
            } else if p.indirect_sent && now >= p.fails_at {
                let probe = self.probe.take().expect("checked above");
                self.probe_failed(now, probe);
            }
        }
        if self.probe.is_none() && now >= self.next_probe && !self.leaving {
            self.start_probe(now);
        }
    }

    fn start_probe(&mut self, now: Instant) {
        let interval = self.scaled(self.config.probe_interval);
        self.next_probe = now + interval;
        let Some(target) = self.next_probe_target() else {
            return;
        };
        let Some(addr) = self.members.get(&target).map(|m| m.addr) else {
            return;
        };
        let seq = self.next_seq();
        self.probe = Some(Probe {
            seq,
            target: target.clone(),
            sent: now,
            indirect_at: now + self.scaled(self.config.probe_timeout),
            fails_at: now + interval,
            indirect_sent: false,
            expected_nacks: 0,
            nacks: 0,
        });
        let mut messages = Vec::with_capacity(2);
        // Lifeguard's buddy system: a suspect learns of the suspicion from the probe
        // itself, so it can refute even if the gossip about it never reaches it.
        if let Some(m) = self.members.get(&target)
            && m.state == State::Suspect
        {
            messages.push(Message::Suspect {
                incarnation: m.incarnation,
                node: target.clone(),
                from: self.name.clone(),
            });
        }
        messages.push(Message::Ping {
            seq,
            target,
            source: self.name.clone(),
        });
        self.send(addr, messages);
    }

    /// The next member to probe, round robin over a shuffled order of live members.
    fn next_probe_target(&mut self) -> Option<String> {
        for _ in 0..2 {
            while self.probe_index < self.probe_order.len() {
                let name = self.probe_order[self.probe_index].clone();
                self.probe_index += 1;
                let live = self
                    .members
                    .get(&name)
                    .is_some_and(|m| matches!(m.state, State::Alive | State::Suspect));
                if live && name != self.name {
                    return Some(name);
                }
            }
            // End of a round: reshuffle.
            self.probe_order = self
                .members
                .values()
                .filter(|m| m.name != self.name && matches!(m.state, State::Alive | State::Suspect))
                .map(|m| m.name.clone())
                .collect();
            self.probe_order.shuffle(&mut self.rng);
            self.probe_index = 0;
        }
        None
    }

    fn send_indirect(&mut self, seq: u32, target: &str) {
        let Some(target_addr) = self.members.get(target).map(|m| m.addr) else {
            self.probe = None;
            return;
        };
        let mut helpers: Vec<SocketAddr> = self
            .members
            .values()
            .filter(|m| m.name != self.name && m.name != target && m.state == State::Alive)
            .map(|m| m.addr)
            .collect();
        helpers.shuffle(&mut self.rng);
        helpers.truncate(self.config.indirect_checks);
        if let Some(p) = &mut self.probe {
            p.indirect_sent = true;
            p.expected_nacks = helpers.len();
        }
        for helper in helpers {
            let request = Message::IndirectPing {
                seq,
                target: target.to_owned(),
                target_addr,
                nack: true,
            };
            self.send(helper, vec![request]);
        }
    }

    fn probe_failed(&mut self, now: Instant, probe: Probe) {
        // Lifeguard: missing nacks mean our own messages may not be getting through.
        let delta = if probe.expected_nacks > 0 {
            probe.expected_nacks.saturating_sub(probe.nacks) as i64
        } else {
            1
        };
        self.adjust_awareness(delta);
        let Some(incarnation) = self.members.get(&probe.target).map(|m| m.incarnation) else {
            return;
        };
        let from = self.name.clone();
        self.on_suspect(now, incarnation, &probe.target, &from);
    }

    fn tick_relays(&mut self, now: Instant) {
        let expired: Vec<u32> = self
            .relays
            .iter()
            .filter(|(_, r)| now >= r.deadline)
            .map(|(seq, _)| *seq)
            .collect();
        for seq in expired {
            if let Some(relay) = self.relays.remove(&seq)
                && relay.nack
            {
                self.send(relay.requester, vec![Message::Nack { seq: relay.seq }]);
            }
        }
    }

    fn tick_suspicions(&mut self, now: Instant) {
        let expired: Vec<String> = self
            .suspicions
            .iter()
            .filter(|(_, s)| now >= s.deadline())
            .map(|(name, _)| name.clone())
            .collect();
        for name in expired {
            let Some(incarnation) = self.members.get(&name).map(|m| m.incarnation) else {
                self.suspicions.remove(&name);
                continue;
            };
            let from = self.name.clone();
            self.on_dead(now, incarnation, &name, &from);
        }
    }

    /// Sends pending broadcasts to a few random members, including recently dead ones
    /// (so that a wrongly declared member hears about it and refutes).
    fn gossip(&mut self, now: Instant) {
        if self.broadcasts.len() == 0 {
            return;
        }
        for to in self.gossip_targets(now) {
            self.send(to, Vec::new());
        }
    }

    /// Up to `gossip_nodes` members to gossip to, chosen uniformly among the live ones and
    /// those dead or gone for less than `gossip_to_the_dead_time`. In a large pool they
    /// are drawn at random positions of [`Engine::others`] (memberlist's way), which
    /// costs a few lookups instead of a walk of every member five times a second; a
    /// small pool, or one where the draws keep finding members not to gossip to, is
    /// walked whole.
    fn gossip_targets(&mut self, now: Instant) -> Vec<SocketAddr> {
        let want = self.config.gossip_nodes;
        let dead_window = self.config.gossip_to_the_dead_time;
        let eligible = |m: &Member| match m.state {
            State::Alive | State::Suspect => true,
            State::Dead | State::Left => now.saturating_duration_since(m.since) < dead_window,
        };
        if self.others.len() > 4 * want {
            let mut picked: Vec<usize> = Vec::with_capacity(want);
            for _ in 0..8 * want {
                let at = self.rng.random_range(0..self.others.len());
                if picked.contains(&at) {
                    continue;
                }
                if self.members.get(&self.others[at]).is_some_and(eligible) {
                    picked.push(at);
                    if picked.len() == want {
                        return picked
                            .iter()
                            .filter_map(|&i| self.members.get(&self.others[i]))
                            .map(|m| m.addr)
                            .collect();
                    }
                }
            }
        }
        let mut targets: Vec<SocketAddr> = self
            .members
            .values()
            .filter(|m| eligible(m) && m.name != self.name)
            .map(|m| m.addr)
            .collect();
        targets.shuffle(&mut self.rng);
        targets.truncate(want);
        targets
    }

    /// Drops `name` from [`Engine::others`] when it is forgotten (rare: a reap or a prune).
    fn forget_other(&mut self, name: &str) {
        if let Some(at) = self.others.iter().position(|n| n == name) {
            self.others.swap_remove(at);
        }
    }

    fn push_pull(&mut self) {
        if let Some(to) = self.resync_with.take() {
            self.outputs.push(Output::PushPull { to, join: false });
            return;
        }
        let mut peers: Vec<SocketAddr> = self
            .members
            .values()
            .filter(|m| m.name != self.name && m.state == State::Alive)
            .map(|m| m.addr)
            .collect();
        peers.shuffle(&mut self.rng);
        if let Some(to) = peers.first() {
            self.outputs.push(Output::PushPull {
                to: *to,
                join: false,
            });
        }
    }

    /// Tries to reach one failed member again (serf's reconnect): if it is back, or was
    /// only cut off by a partition, the exchange makes it refute and rejoin.
    fn reconnect(&mut self) {
        if self.leaving {
            return;
        }
        let mut failed: Vec<SocketAddr> = self
            .members
            .values()
            .filter(|m| m.state == State::Dead)
            .map(|m| m.addr)
            .collect();
        failed.shuffle(&mut self.rng);
        if let Some(to) = failed.first() {
            self.outputs.push(Output::PushPull {
                to: *to,
                join: true,
            });
        }
    }

    fn reap(&mut self, now: Instant) {
        self.tombstones
            .retain(|_, t| now.saturating_duration_since(t.since) < TOMBSTONE_TTL);
        let dead = self.config.dead_reap_timeout;
        let left = self.config.left_reap_timeout;
        let gone: Vec<String> = self
            .members
            .values()
            .filter(|m| match m.state {
                State::Dead => now.saturating_duration_since(m.since) >= dead,
                State::Left => now.saturating_duration_since(m.since) >= left,
                _ => false,
            })
            .filter(|m| m.name != self.name)
            .map(|m| m.name.clone())
            .collect();
        for name in gone {
            self.members.remove(&name);
            self.forget_other(&name);
            self.coordinates.remove(&name);
            self.vivaldi.forget(&name);
            self.events.push(Event::Reap(name));
        }
    }

    /// `force-leave`: marks `node` left everywhere (a failed member stops being retried;
    /// a live one refutes and stays). With `prune` every member also forgets it at
    /// once. Returns whether the member was known.
    pub fn force_leave(&mut self, now: Instant, node: &str, prune: bool) -> bool {
        if node == self.name {
            return false;
        }
        let Some(m) = self.members.get(node) else {
            return false;
        };
        let incarnation = m.incarnation;
        if m.state != State::Left {
            let node = node.to_owned();
            self.on_dead(now, incarnation, &node, &node);
        }
        if prune {
            self.on_prune(now, incarnation, node);
        }
        true
    }

    /// Forgets `node` at `incarnation` and spreads the news.
    fn on_prune(&mut self, now: Instant, incarnation: u32, node: &str) {
        if node == self.name {
            // Pruned while alive: say so with a newer incarnation.
            self.refute(incarnation);
            return;
        }
        if self
            .members
            .get(node)
            .is_some_and(|m| m.incarnation > incarnation)
        {
            return;
        }
        if self.tombstones.contains_key(node) && !self.members.contains_key(node) {
            return;
        }
        let addr = self.members.get(node).map(|m| m.addr);
        if self.members.remove(node).is_some() {
            self.forget_other(node);
            self.events.push(Event::Reap(node.to_owned()));
        }
        self.coordinates.remove(node);
        self.vivaldi.forget(node);
        self.suspicions.remove(node);
        if self.tombstones.len() >= MAX_TOMBSTONES
            && let Some(oldest) = self
                .tombstones
                .iter()
                .min_by_key(|(_, t)| t.since)
                .map(|(k, _)| k.clone())
        {
            self.tombstones.remove(&oldest);
        }
        self.tombstones.insert(
            node.to_owned(),
            Tombstone {
                incarnation,
                since: now,
                addr,
            },
        );
        self.broadcasts.push(
            node,
            &Message::Prune {
                incarnation,
                node: node.to_owned(),
            },
        );
    }
}

/// Where to answer an accusation made by `accuser` that arrived from `sender`: the
/// accuser itself when we know it (a relayed gossip packet comes from someone else).
fn from_addr_of(
    sender: SocketAddr,
    accuser: &str,
    members: &BTreeMap<String, Member>,
) -> SocketAddr {
    members.get(accuser).map_or(sender, |m| m.addr)
}

/// SWIM's suspicion timeout before confirmations: `mult × log10(n) × probe interval`
/// (at least one interval's worth of the logarithm), as memberlist computes it.
fn suspicion_timeout(mult: u32, n: usize, interval: Duration) -> Duration {
    let scale = (n.max(1) as f64).log10().max(1.0);
    interval.mul_f64(f64::from(mult) * scale)
}

/// How often dead and left members are looked for to be forgotten: a walk of every
/// member, so not on every tick (a tick follows every datagram, and walking a pool of
/// 512 on each was most of what 512 members in one process spent their CPU on). A
/// second is nothing against the reap timeouts (hours by default), and a quarter of the
/// shortest one keeps short test timeouts honoured.
fn reap_interval(config: &Config) -> Duration {
    let shortest = config.dead_reap_timeout.min(config.left_reap_timeout);
    (shortest / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

/// Push-pull runs every `interval` up to 32 members, and less often in larger pools so
/// that the total traffic stays flat (memberlist's scaling).
fn push_pull_interval(config: &Config, n: usize) -> Duration {
    if n <= 32 {
        return config.push_pull_interval;
    }
    let multiplier = ((n as f64).log2() - 32f64.log2()).ceil() + 1.0;
    config.push_pull_interval.mul_f64(multiplier)
}

#[cfg(test)]
mod tests;
