//! Building answers: from a decoded request to a response message, with Consul's record
//! choices, TTLs, response codes and truncation. Pure apart from the catalog reads it
//! makes through the gateway, so it is exercised directly by tests.

use std::cell::Cell;
use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use catalog::{Answer, Health, Node, Query, ServiceHealth, ServiceQuery};
use gateway::{Executed, Gateway, RouteError};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use rand::seq::SliceRandom;

use super::DnsConfig;
use super::name::{Lookup, encode_addr, parse, parse_reverse};

/// How the request arrived, which decides the size limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    /// UDP: 512 bytes, or the client's EDNS buffer size.
    Udp,
    /// TCP: 65,535 bytes.
    Tcp,
}

/// What to do with a request.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Send this encoded response.
    Reply(Vec<u8>),
    /// The name is outside the domain and recursors are configured: forward the request.
    Recurse,
    /// Send nothing (a response, not a query).
    Drop,
    /// The answer needs something this agent cannot read from a local copy (a read
    /// through a server or in another datacenter, a prepared query, a failover): get it,
    /// then call [`Responder::respond_fetched`].
    Fetch(Need),
}

/// Something an answer needs that takes a request to a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Need {
    /// A catalog read in a datacenter.
    Read {
        /// The datacenter named in the question.
        dc: Option<String>,
        /// The read.
        query: Query,
    },
    /// A prepared query, by name or ID, executed in a datacenter.
    Execute {
        /// The datacenter named in the question.
        dc: Option<String>,
        /// The query's name or ID.
        name: String,
    },
    /// A service lookup under `dns_config.failover`: the local datacenter has no
    /// healthy instance.
    Failover {
        /// The lookup, with the policy.
        service: ServiceQuery,
    },
}

/// What getting a [`Need`] returned.
#[derive(Debug)]
pub(crate) enum Found {
    /// For [`Need::Read`].
    Read(Result<(Answer, u64), RouteError>),
    /// For [`Need::Execute`] (`None`: no such query) and [`Need::Failover`].
    Executed(Result<Option<Executed>, RouteError>),
}

/// A need and what it returned.
#[derive(Debug)]
pub(crate) struct Fetched {
    /// What was needed.
    pub(crate) need: Need,
    /// What came back.
    pub(crate) found: Found,
}

/// What was fetched for one request in earlier passes (see [`Responder::respond_fetched`]),
/// and how the answer makes its random choices.
#[derive(Clone, Copy)]
struct Reads<'a> {
    fetched: &'a [Fetched],
    draw: &'a Draw,
}

impl<'a> Reads<'a> {
    fn found(self, need: &Need) -> Option<&'a Found> {
        self.fetched
            .iter()
            .find(|f| f.need == *need)
            .map(|f| &f.found)
    }
}

/// Most records whose every order an answer can be asked for ([`Draw::nth`]): 4! = 24
/// orders. Longer lists are shuffled at random, and such answers are not kept.
pub(crate) const MAX_ORDERED: usize = 4;

/// The number of orders of `n` records (`n!`), for `n` up to [`MAX_ORDERED`].
pub(crate) const fn orders(n: usize) -> usize {
    let n = if n < MAX_ORDERED { n } else { MAX_ORDERED };
    let mut product = 1;
    let mut i = 2;
    while i <= n {
        product *= i;
        i += 1;
    }
    product
}

/// How an answer makes its random choices, and what it tells a cache of encoded answers
/// about them and about what else the answer depends on.
pub(crate) struct Draw {
    /// `Some(k)`: the records of the answer come in their `k`-th order (modulo the
    /// number of orders), when there are at most [`MAX_ORDERED`] of them; `None` (and
    /// for longer lists): in a random order, as before any cache.
    order: Option<usize>,
    /// The length of the longest list of records put in a drawn order.
    shuffled: Cell<usize>,
    /// The answer holds a SOA record, whose serial is the current second.
    timed: Cell<bool>,
    /// The answer depends on more than the question, the configuration and the local
    /// catalog at its current index: another datacenter's reachability, or a random
    /// pick that is not an order (NS records).
    volatile: Cell<bool>,
}

impl Draw {
    /// Random orders, as a response built for one query only.
    pub(crate) fn random() -> Draw {
        Draw {
            order: None,
            shuffled: Cell::new(0),
            timed: Cell::new(false),
            volatile: Cell::new(false),
        }
    }

    /// The `k`-th order of the answer's records.
    pub(crate) fn nth(k: usize) -> Draw {
        Draw {
            order: Some(k),
            ..Draw::random()
        }
    }

    /// How many distinct orders of its records the answer has, when an encoded copy
    /// of it may be kept and served again while the local catalog's index is the same
    /// (and, if [`Draw::timed`], within the same second); `None` when it may not.
    pub(crate) fn kept_orders(&self) -> Option<usize> {
        let shuffled = self.shuffled.get();
        (!self.volatile.get() && shuffled <= MAX_ORDERED).then(|| orders(shuffled))
    }

    /// Whether the answer holds the time (the SOA serial, in seconds).
    pub(crate) fn timed(&self) -> bool {
        self.timed.get()
    }

    /// Puts `items` in the drawn order.
    fn arrange<T>(&self, items: &mut [T]) {
        self.shuffled.set(self.shuffled.get().max(items.len()));
        match self.order {
            Some(k) if items.len() <= MAX_ORDERED => permute(items, k),
            _ => items.shuffle(&mut rand::rng()),
        }
    }
}

/// Puts `items` in their `k`-th order (modulo `items.len()!`): a Fisher-Yates shuffle
/// whose choices are the mixed-radix digits of `k`, so each `k` in `0..n!` gives a
/// different order, and a `k` uniform over a multiple of `n!` gives every order with
/// the same chance, as a random shuffle.
fn permute<T>(items: &mut [T], k: usize) {
    let n = items.len();
    let mut k = k;
    for i in 0..n {
        let left = n - i;
        items.swap(i, i + k % left);
        k /= left;
    }
}

/// A read the answer needs that is not available here: the request is answered again
/// once it is fetched. Answer building stops at the first one (`?`), so an answer is
/// built whole only once, in the pass that has everything it reads.
struct Missing(Box<Need>);

/// Largest UDP payload we send, whatever the client's EDNS says (Consul's cap).
const MAX_UDP_PAYLOAD: u16 = 65535 - 68;
/// Hard cap on answers over UDP without EDNS, whatever `udp_answer_limit` says.
const MAX_UDP_ANSWERS: usize = 8;
/// Answers kept before size trimming over TCP (Consul: 4096, 1024 for SRV).
const MAX_TCP_ANSWERS: usize = 4096;
const MAX_TCP_SRV_ANSWERS: usize = 1024;
/// How many servers an NS answer lists.
const MAX_NS_RECORDS: usize = 3;

/// Most service lookups whose records are kept between queries; the cache is emptied
/// when it is full (entries are also worthless once the catalog changes).
const MAX_PREPARED: usize = 4096;

/// The records of one service lookup, built once per catalog index: only the owner name,
/// the order and the trimming differ between queries.
#[derive(Default)]
struct Prepared {
    /// Whether any instance is healthy enough to answer (else NXDOMAIN).
    found: bool,
    /// TTL of every record.
    ttl: u32,
    /// Address answers (A, AAAA, or CNAME for a host name), one per distinct address.
    addresses: Vec<RData>,
    /// SRV answers, each with the indexes of its additional records.
    srv: Vec<(RData, Vec<usize>)>,
    /// Additional records of the SRV targets, each once.
    additionals: Vec<Record>,
}

type CacheKey = (String, Option<String>);

/// The parts of a response before trimming.
#[derive(Default)]
struct Sections {
    code: Option<ResponseCode>,
    answers: Vec<Record>,
    authorities: Vec<Record>,
    additionals: Vec<Record>,
    /// Put the SOA in the authority section (NXDOMAIN, NODATA).
    soa: bool,
}

impl Sections {
    fn nxdomain() -> Sections {
        Sections {
            code: Some(ResponseCode::NXDomain),
            soa: true,
            ..Sections::default()
        }
    }

    fn nodata() -> Sections {
        Sections {
            soa: true,
            ..Sections::default()
        }
    }

    fn code(code: ResponseCode) -> Sections {
        Sections {
            code: Some(code),
            ..Sections::default()
        }
    }
}

/// Builds responses for one agent's DNS interface.
pub(crate) struct Responder {
    gateway: Gateway,
    cache: Mutex<HashMap<CacheKey, (u64, Arc<Prepared>)>>,
    config: DnsConfig,
    domain: Name,
    domain_labels: usize,
    ns_name: Name,
    hostmaster: Name,
}

fn lower_labels(name: &Name) -> Vec<String> {
    name.iter()
        .map(|l| String::from_utf8_lossy(l).to_ascii_lowercase())
        .collect()
}

/// A name built from text labels; `None` when a label is not a valid DNS label.
fn name_from(text: &str) -> Option<Name> {
    Name::from_ascii(text).ok().map(|mut n| {
        n.set_fqdn(true);
        n
    })
}

/// TXT data holding `text`, split into character strings of at most 255 bytes (the
/// wire limit of one string; RFC 1035 3.3.14).
fn txt_rdata(text: &str) -> RData {
    let bytes = text.as_bytes();
    let chunks: Vec<&[u8]> = if bytes.is_empty() {
        vec![bytes]
    } else {
        bytes.chunks(255).collect()
    };
    RData::TXT(TXT::from_bytes(chunks))
}

fn rr(name: &Name, ttl: u32, data: RData) -> Record {
    Record::from_rdata(name.clone(), ttl, data)
}

fn secs(d: Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}

/// RFC 1464 text of a node-meta pair, as Consul writes it.
fn meta_txt(key: &str, value: &str) -> String {
    if key.starts_with("rfc1035-") {
        return value.to_owned();
    }
    let mut escaped = String::new();
    let chars: Vec<char> = key.chars().collect();
    for (i, c) in chars.iter().enumerate() {
        let edge = i == 0 || i == chars.len() - 1;
        match c {
            '`' => escaped.push_str("``"),
            '=' => escaped.push_str("`="),
            ' ' if edge => escaped.push_str("` "),
            other => escaped.push(*other),
        }
    }
    format!("{escaped}={value}")
}

impl Responder {
    pub(crate) fn new(gateway: Gateway, config: DnsConfig) -> Responder {
        let domain = config.domain.clone();
        let domain_labels = domain.num_labels() as usize;
        let ns_name = Name::from_ascii("ns")
            .and_then(|n| n.append_domain(&domain))
            .expect("ns.<domain> is a valid name");
        let hostmaster = Name::from_ascii("hostmaster")
            .and_then(|n| n.append_domain(&domain))
            .expect("hostmaster.<domain> is a valid name");
        Responder {
            gateway,
            cache: Mutex::new(HashMap::new()),
            config,
            domain,
            domain_labels,
            ns_name,
            hostmaster,
        }
    }

    pub(crate) fn config(&self) -> &DnsConfig {
        &self.config
    }

    /// Answers a decoded request from the local catalog copy, or says which read it
    /// needs first ([`Outcome::Fetch`]).
    pub(crate) fn respond(&self, request: &Message, transport: Transport) -> Outcome {
        self.respond_drawn(request, transport, &Draw::random())
    }

    /// [`Responder::respond`], with the random choices made as `draw` says; `draw` then
    /// tells whether the answer may be kept.
    pub(crate) fn respond_drawn(
        &self,
        request: &Message,
        transport: Transport,
        draw: &Draw,
    ) -> Outcome {
        let reads = Reads { fetched: &[], draw };
        self.respond_with(request, transport, reads)
    }

    /// Answers a decoded request with what [`Outcome::Fetch`] asked for (and, in a later
    /// pass, what it asked for after that).
    pub(crate) fn respond_fetched(
        &self,
        request: &Message,
        transport: Transport,
        fetched: &[Fetched],
    ) -> Outcome {
        let draw = Draw::random();
        let reads = Reads {
            fetched,
            draw: &draw,
        };
        self.respond_with(request, transport, reads)
    }

    /// Reads `query` in `dc`: the local copy when this agent holds one, else the fetched
    /// result, else [`Missing`].
    fn read(
        &self,
        reads: Reads,
        dc: Option<&str>,
        query: &Query,
    ) -> Result<Result<(Answer, u64), RouteError>, Missing> {
        match self.gateway.read_stale(dc, query) {
            Ok(Some(found)) => return Ok(Ok(found)),
            Ok(None) => {}
            Err(e) => {
                // Whether another datacenter can be reached is no part of this catalog.
                reads.draw.volatile.set(true);
                return Ok(Err(e));
            }
        }
        let need = Need::Read {
            dc: dc.map(str::to_owned),
            query: query.clone(),
        };
        match reads.found(&need) {
            Some(Found::Read(result)) => Ok(result.clone()),
            _ => Err(Missing(Box::new(need))),
        }
    }

    /// What executing `need` returned, or [`Missing`] in a first pass.
    fn executed<'r>(
        &self,
        reads: Reads<'r>,
        need: Need,
    ) -> Result<&'r Result<Option<Executed>, RouteError>, Missing> {
        match reads.found(&need) {
            Some(Found::Executed(result)) => Ok(result),
            _ => Err(Missing(Box::new(need))),
        }
    }

    fn respond_with(&self, request: &Message, transport: Transport, reads: Reads) -> Outcome {
        if request.metadata.message_type != MessageType::Query {
            return Outcome::Drop;
        }
        let mut response = Message::response(request.metadata.id, request.metadata.op_code);
        response.metadata.recursion_desired = request.metadata.recursion_desired;
        response.metadata.checking_disabled = request.metadata.checking_disabled;
        response.metadata.recursion_available = !self.config.recursors.is_empty();
        // The first question only, as Consul's (miekg/dns `SetReply`): an error answer to
        // a packet of many questions must still fit in a UDP answer.
        response.queries = request.queries.iter().take(1).cloned().collect();
        if let Some(edns) = &request.edns {
            let mut ours = Edns::new();
            ours.set_max_payload(edns.max_payload().max(512));
            response.edns = Some(ours);
        }
        if request.metadata.op_code != OpCode::Query {
            response.metadata.response_code = ResponseCode::NotImp;
            return reply(&response);
        }
        let [query] = request.queries.as_slice() else {
            response.metadata.response_code = ResponseCode::FormErr;
            return reply(&response);
        };
        let qname = query.name();
        let qtype = query.query_type();
        let in_domain = self.domain.zone_of(qname);
        let labels = lower_labels(qname);
        let sections = if in_domain {
            response.metadata.authoritative = true;
            let below = &labels[..labels.len().saturating_sub(self.domain_labels)];
            match self.in_domain(reads, qname, qtype, below) {
                Ok(sections) => sections,
                Err(Missing(need)) => return Outcome::Fetch(*need),
            }
        } else if let Some(ip) = parse_reverse(&labels) {
            let found = match self.reverse(reads, qname, ip) {
                Ok(found) => found,
                Err(Missing(need)) => return Outcome::Fetch(*need),
            };
            match found {
                Some(sections) => {
                    response.metadata.authoritative = true;
                    sections
                }
                None if !self.config.recursors.is_empty() => return Outcome::Recurse,
                None => {
                    response.metadata.authoritative = true;
                    Sections::nxdomain()
                }
            }
        } else if !self.config.recursors.is_empty() {
            return Outcome::Recurse;
        } else {
            Sections::code(ResponseCode::Refused)
        };
        match self.finish(
            &mut response,
            request,
            sections,
            qtype,
            transport,
            reads.draw,
        ) {
            Some(bytes) => Outcome::Reply(bytes),
            None => {
                // A record we built cannot be encoded: tell the client instead of
                // leaving it to time out.
                let mut failed = Message::response(request.metadata.id, request.metadata.op_code);
                failed.metadata.response_code = ResponseCode::ServFail;
                failed.metadata.recursion_desired = request.metadata.recursion_desired;
                failed.queries = request.queries.clone();
                reply(&failed)
            }
        }
    }

    fn in_domain(
        &self,
        reads: Reads,
        qname: &Name,
        qtype: RecordType,
        below: &[String],
    ) -> Result<Sections, Missing> {
        match qtype {
            RecordType::AXFR | RecordType::IXFR => {
                return Ok(Sections::code(ResponseCode::NotImp));
            }
            RecordType::SOA => {
                return Ok(Sections {
                    answers: vec![self.soa(reads.draw)],
                    ..self.ns_sections(reads, true)?
                });
            }
            RecordType::NS => return self.ns_sections(reads, false),
            _ => {}
        }
        Ok(match parse(below, qtype == RecordType::SRV) {
            Lookup::Apex | Lookup::Invalid => Sections::nxdomain(),
            Lookup::PreparedQuery { name, dc } => {
                self.prepared_query(reads, qname, qtype, name, dc)?
            }
            Lookup::Addr(ip) => self.addr(qname, qtype, ip),
            Lookup::Node { name, dc } => self.node(reads, qname, qtype, &name, dc.as_deref())?,
            Lookup::Service { name, tag, dc } => {
                self.service(reads, qname, qtype, &name, tag, dc.as_deref())?
            }
        })
    }

    fn soa(&self, draw: &Draw) -> Record {
        draw.timed.set(true);
        let soa = &self.config.soa;
        let serial = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(1);
        let as_i32 = |d: Duration| i32::try_from(d.as_secs()).unwrap_or(i32::MAX);
        rr(
            &self.domain,
            secs(soa.min_ttl),
            RData::SOA(SOA::new(
                self.ns_name.clone(),
                self.hostmaster.clone(),
                serial,
                as_i32(soa.refresh),
                as_i32(soa.retry),
                as_i32(soa.expire),
                secs(soa.min_ttl),
            )),
        )
    }

    /// NS records for up to three servers of this datacenter, with glue; in the
    /// authority section when `authority` (the SOA answer), else as the answer.
    fn ns_sections(&self, reads: Reads, authority: bool) -> Result<Sections, Missing> {
        let query = Query::ServiceHealth {
            service: "consul".into(),
            tags: vec![],
            passing_only: false,
            node_meta: vec![],
        };
        let mut servers = match self.read(reads, None, &query)? {
            Ok((Answer::ServiceHealth(list), _)) => list,
            _ => Vec::new(),
        };
        servers.retain(|e| e.aggregate() != Health::Critical);
        servers.shuffle(&mut rand::rng());
        // Up to three of the servers, at random: not an order a cache could keep.
        reads.draw.volatile.set(true);
        let ttl = secs(self.config.node_ttl);
        let dc = self.gateway.local_datacenter().to_string();
        let mut ns = Vec::new();
        let mut glue = Vec::new();
        for entry in servers {
            if ns.len() == MAX_NS_RECORDS {
                break;
            }
            let Some(target) = self.node_name(&entry.node.name, &dc) else {
                continue;
            };
            let Ok(ip) = IpAddr::from_str(&entry.node.address) else {
                continue;
            };
            ns.push(rr(&self.domain, ttl, RData::NS(NS(target.clone()))));
            glue.push(rr(&target, ttl, address_rdata(ip)));
        }
        Ok(if authority {
            Sections {
                authorities: ns,
                additionals: glue,
                ..Sections::default()
            }
        } else {
            Sections {
                answers: ns,
                additionals: glue,
                ..Sections::default()
            }
        })
    }

    /// `<node>.node.<dc>.<domain>`.
    fn node_name(&self, node: &str, dc: &str) -> Option<Name> {
        name_from(&format!("{node}.node.{dc}.{}", self.domain))
    }

    fn addr(&self, qname: &Name, qtype: RecordType, ip: IpAddr) -> Sections {
        let ttl = secs(self.config.node_ttl);
        let fits = matches!(
            (qtype, ip),
            (RecordType::A | RecordType::ANY, IpAddr::V4(_))
                | (RecordType::AAAA | RecordType::ANY, IpAddr::V6(_))
        );
        if fits {
            Sections {
                answers: vec![rr(qname, ttl, address_rdata(ip))],
                ..Sections::default()
            }
        } else {
            Sections::nodata()
        }
    }

    fn node(
        &self,
        reads: Reads,
        qname: &Name,
        qtype: RecordType,
        name: &str,
        dc: Option<&str>,
    ) -> Result<Sections, Missing> {
        let query = Query::Node { node: name.into() };
        let node = match self.read(reads, dc, &query)? {
            Ok((Answer::Node(Some(node)), _)) => node,
            Ok(_) => return Ok(Sections::nxdomain()),
            Err(e) => return Ok(route_error(e)),
        };
        let ttl = secs(self.config.node_ttl);
        let address = address_record(qname, qtype, &node.address, ttl);
        let txt = || self.node_txt(qname, &node, ttl);
        Ok(match qtype {
            RecordType::A | RecordType::AAAA => match address {
                Some(record) => Sections {
                    answers: vec![record],
                    additionals: if self.config.enable_additional_node_meta_txt {
                        txt()
                    } else {
                        Vec::new()
                    },
                    ..Sections::default()
                },
                None => Sections::nodata(),
            },
            RecordType::TXT => {
                let answers = txt();
                if answers.is_empty() {
                    Sections::nodata()
                } else {
                    Sections {
                        answers,
                        ..Sections::default()
                    }
                }
            }
            RecordType::ANY => {
                let mut answers: Vec<Record> = address.into_iter().collect();
                answers.extend(txt());
                Sections {
                    answers,
                    ..Sections::default()
                }
            }
            _ => Sections::nodata(),
        })
    }

    fn node_txt(&self, owner: &Name, node: &Node, ttl: u32) -> Vec<Record> {
        node.meta
            .iter()
            .map(|(k, v)| rr(owner, ttl, txt_rdata(&meta_txt(k, v))))
            .collect()
    }

    fn service_ttl(&self, service: &str) -> u32 {
        let map = &self.config.service_ttl;
        let name = service.to_ascii_lowercase();
        if let Some(ttl) = map.get(&name) {
            return secs(*ttl);
        }
        let best = map
            .iter()
            .filter_map(|(k, v)| {
                let prefix = k.strip_suffix('*')?;
                name.starts_with(prefix).then_some((prefix.len(), *v))
            })
            .max_by_key(|(len, _)| *len);
        best.map(|(_, ttl)| secs(ttl)).unwrap_or(0)
    }

    /// The records of a service lookup, from the cache while the catalog is unchanged.
    fn prepared(
        &self,
        reads: Reads,
        name: &str,
        tag: Option<String>,
        dc: Option<&str>,
    ) -> Result<Result<Arc<Prepared>, Sections>, Missing> {
        let key = (
            name.to_ascii_lowercase(),
            tag.as_ref().map(|t| t.to_ascii_lowercase()),
        );
        let index = self.gateway.stale_index(dc);
        if let Some(index) = index
            && let Some((at, prepared)) = self.cache.lock().expect("dns cache poisoned").get(&key)
            && *at == index
        {
            return Ok(Ok(prepared.clone()));
        }
        let query = Query::ServiceHealth {
            service: name.into(),
            tags: tag.into_iter().collect(),
            passing_only: false,
            node_meta: vec![],
        };
        let instances = match self.read(reads, dc, &query)? {
            Ok((Answer::ServiceHealth(list), _)) => list,
            Ok(_) => Vec::new(),
            Err(e) => return Ok(Err(route_error(e))),
        };
        let dc = dc
            .map(str::to_owned)
            .unwrap_or_else(|| self.gateway.local_datacenter().to_string());
        let only_passing = self.config.only_passing;
        let prepared =
            Arc::new(self.prepare(
                &instances,
                &dc,
                self.service_ttl(name),
                |e| match e.aggregate() {
                    Health::Passing => true,
                    Health::Warning => !only_passing,
                    Health::Critical => false,
                },
            ));
        if let Some(index) = index {
            // Keyed by the catalog index read before the query: if a change raced with
            // the read, the next query sees a newer index and builds again.
            let mut cache = self.cache.lock().expect("dns cache poisoned");
            if cache.len() >= MAX_PREPARED {
                cache.clear();
            }
            cache.insert(key, (index, prepared.clone()));
        }
        Ok(Ok(prepared))
    }

    /// Builds the records of the instances of a service in `dc` that `keep` keeps.
    fn prepare(
        &self,
        instances: &[ServiceHealth],
        dc: &str,
        ttl: u32,
        keep: impl Fn(&ServiceHealth) -> bool,
    ) -> Prepared {
        let healthy = instances.iter().filter(|e| keep(e));
        let mut prepared = Prepared {
            ttl,
            ..Prepared::default()
        };
        let mut seen_addresses = BTreeSet::new();
        let mut seen_srv = BTreeSet::new();
        for e in healthy {
            prepared.found = true;
            let address = instance_address(e);
            if seen_addresses.insert(address.to_owned())
                && let Some(data) = address_rdata_of(address)
            {
                prepared.addresses.push(data);
            }
            if !seen_srv.insert((e.node.name.clone(), address.to_owned(), e.service.port)) {
                continue;
            }
            let weight = match e.aggregate() {
                Health::Warning => e.service.weights.warning,
                _ => e.service.weights.passing,
            };
            let weight = u16::try_from(weight).unwrap_or(u16::MAX);
            let (target, extra) = if e.service.address.is_empty() {
                let Some(target) = self.node_name(&e.node.name, dc) else {
                    continue;
                };
                let mut extra: Vec<Record> = IpAddr::from_str(&e.node.address)
                    .ok()
                    .map(|ip| rr(&target, ttl, address_rdata(ip)))
                    .into_iter()
                    .collect();
                if self.config.enable_additional_node_meta_txt {
                    extra.extend(self.node_txt(&target, &e.node, ttl));
                }
                (target, extra)
            } else if let Ok(ip) = IpAddr::from_str(address) {
                let Some(target) =
                    name_from(&format!("{}.addr.{dc}.{}", encode_addr(ip), self.domain))
                else {
                    continue;
                };
                let extra = vec![rr(&target, ttl, address_rdata(ip))];
                (target, extra)
            } else {
                let Some(target) = name_from(address) else {
                    continue;
                };
                (target, Vec::new())
            };
            let mut extra_ids = Vec::new();
            for record in extra {
                let id = match prepared.additionals.iter().position(|r| *r == record) {
                    Some(id) => id,
                    None => {
                        prepared.additionals.push(record);
                        prepared.additionals.len() - 1
                    }
                };
                extra_ids.push(id);
            }
            prepared.srv.push((
                RData::SRV(SRV::new(1, weight, e.service.port, target)),
                extra_ids,
            ));
        }
        prepared
    }

    fn service(
        &self,
        reads: Reads,
        qname: &Name,
        qtype: RecordType,
        name: &str,
        tag: Option<String>,
        dc: Option<&str>,
    ) -> Result<Sections, Missing> {
        let prepared = match self.prepared(reads, name, tag.clone(), dc)? {
            Ok(p) => p,
            Err(sections) => return Ok(sections),
        };
        if !prepared.found {
            // Only for names that name no datacenter: one that does asks for that one.
            if dc.is_none() && !self.config.failover.is_empty() {
                return self.fail_over(reads, qname, qtype, name, tag);
            }
            // Consul: no healthy instance is "not found" (issue #1142).
            return Ok(Sections::nxdomain());
        }
        Ok(self.records(&prepared, qname, qtype, Some(reads.draw)))
    }

    /// A service lookup with no healthy instance here, under `dns_config.failover`.
    fn fail_over(
        &self,
        reads: Reads,
        qname: &Name,
        qtype: RecordType,
        name: &str,
        tag: Option<String>,
    ) -> Result<Sections, Missing> {
        let service = ServiceQuery {
            service: name.to_owned(),
            tags: tag.into_iter().collect(),
            only_passing: self.config.only_passing,
            failover: self.config.failover.clone(),
            ..ServiceQuery::default()
        };
        // A first pass stops here: the failover is made, then the request answered again.
        Ok(match self.executed(reads, Need::Failover { service })? {
            Err(e) => route_error(e.clone()),
            Ok(None) => Sections::nxdomain(),
            Ok(Some(executed)) => {
                let ttl = self.service_ttl(name);
                self.executed_records(executed, qname, qtype, ttl, Some(reads.draw))
            }
        })
    }

    /// `<name>.query[.<dc>]`: a prepared query, executed through the gateway.
    fn prepared_query(
        &self,
        reads: Reads,
        qname: &Name,
        qtype: RecordType,
        name: String,
        dc: Option<String>,
    ) -> Result<Sections, Missing> {
        Ok(match self.executed(reads, Need::Execute { dc, name })? {
            Err(e) => route_error(e.clone()),
            Ok(None) => Sections::nxdomain(),
            Ok(Some(executed)) => {
                let ttl = match catalog::duration::parse(&executed.dns_ttl) {
                    Ok(ttl) if !executed.dns_ttl.is_empty() => secs(ttl),
                    _ => self.service_ttl(&executed.service),
                };
                // The query already ordered them (nearest first, or shuffled).
                self.executed_records(executed, qname, qtype, ttl, None)
            }
        })
    }

    /// The records of what a failover or a prepared query selected; SRV targets and
    /// `.addr` names are in the datacenter that answered.
    fn executed_records(
        &self,
        executed: &Executed,
        qname: &Name,
        qtype: RecordType,
        ttl: u32,
        shuffle: Option<&Draw>,
    ) -> Sections {
        let prepared = self.prepare(&executed.nodes, &executed.datacenter, ttl, |_| true);
        if !prepared.found {
            return Sections::nxdomain();
        }
        self.records(&prepared, qname, qtype, shuffle)
    }

    /// The answer records of a service lookup, in the order `shuffle` draws (else as
    /// given).
    fn records(
        &self,
        prepared: &Prepared,
        qname: &Name,
        qtype: RecordType,
        shuffle: Option<&Draw>,
    ) -> Sections {
        let ttl = prepared.ttl;
        match qtype {
            RecordType::SRV => {
                let mut order: Vec<usize> = (0..prepared.srv.len()).collect();
                if let Some(draw) = shuffle {
                    draw.arrange(&mut order);
                }
                let mut answers = Vec::with_capacity(order.len());
                let mut additionals = Vec::new();
                let mut added = vec![false; prepared.additionals.len()];
                for i in order {
                    let (data, extra) = &prepared.srv[i];
                    answers.push(rr(qname, ttl, data.clone()));
                    for &id in extra {
                        if !added[id] {
                            added[id] = true;
                            additionals.push(prepared.additionals[id].clone());
                        }
                    }
                }
                Sections {
                    answers,
                    additionals,
                    ..Sections::default()
                }
            }
            RecordType::A | RecordType::AAAA | RecordType::ANY | RecordType::TXT => {
                let mut answers: Vec<Record> = prepared
                    .addresses
                    .iter()
                    .filter(|data| fits_query(qtype, data))
                    .map(|data| rr(qname, ttl, data.clone()))
                    .collect();
                if let Some(draw) = shuffle {
                    draw.arrange(&mut answers);
                }
                let limit = self.config.a_record_limit;
                if limit > 0 {
                    answers.truncate(limit);
                }
                if answers.is_empty() {
                    Sections::nodata()
                } else {
                    Sections {
                        answers,
                        ..Sections::default()
                    }
                }
            }
            _ => Sections::nodata(),
        }
    }

    fn reverse(&self, reads: Reads, qname: &Name, ip: IpAddr) -> Result<Option<Sections>, Missing> {
        let query = Query::Address {
            address: ip.to_string(),
        };
        let dc = self.gateway.local_datacenter().to_string();
        let (nodes, services) = match self.read(reads, None, &query)? {
            Ok((Answer::Address(nodes, services), _)) => (nodes, services),
            _ => return Ok(None),
        };
        let target = if let Some(node) = nodes.first() {
            self.node_name(&node.name, &dc)
        } else if let Some(service) = services.first() {
            name_from(&format!("{}.service.{dc}.{}", service.name, self.domain))
        } else {
            None
        };
        // Consul always answers PTR with TTL 0.
        Ok(target.map(|target| Sections {
            answers: vec![rr(qname, 0, RData::PTR(PTR(target)))],
            ..Sections::default()
        }))
    }

    /// Puts the sections into the response, trims them to the transport's size and
    /// encodes it (once, when it fits at the first try).
    fn finish(
        &self,
        response: &mut Message,
        request: &Message,
        mut s: Sections,
        qtype: RecordType,
        transport: Transport,
        draw: &Draw,
    ) -> Option<Vec<u8>> {
        if let Some(code) = s.code {
            response.metadata.response_code = code;
        }
        if s.soa {
            s.authorities.push(self.soa(draw));
        }
        let limit = match transport {
            Transport::Tcp => usize::from(u16::MAX),
            Transport::Udp => match &request.edns {
                Some(edns) => usize::from(edns.max_payload().clamp(
                    512,
                    self.config.udp_max_response.clamp(512, MAX_UDP_PAYLOAD),
                )),
                None => 512,
            },
        };
        let mut truncated = false;
        let count_cap = match transport {
            Transport::Udp if limit == 512 => {
                self.config.udp_answer_limit.clamp(1, MAX_UDP_ANSWERS)
            }
            Transport::Udp => usize::MAX,
            Transport::Tcp if qtype == RecordType::SRV => MAX_TCP_SRV_ANSWERS,
            Transport::Tcp => MAX_TCP_ANSWERS,
        };
        if s.answers.len() > count_cap {
            s.answers.truncate(count_cap);
            truncated = true;
        }
        response.answers = s.answers;
        response.authorities = s.authorities;
        response.additionals = s.additionals;
        if truncated && qtype == RecordType::SRV {
            resync_additionals(response);
        }
        response.metadata.truncation = truncated;
        match response.to_vec() {
            Ok(bytes) if bytes.len() <= limit => return Some(bytes),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "failed to encode a DNS response");
                return None;
            }
        }
        {
            // Extra sections go first; the answer is what the client asked for.
            let extra = std::mem::take(&mut response.additionals);
            if !fits(response, limit) {
                response.authorities.clear();
            }
            if !fits(response, limit) {
                // The most answers that fit, by binary search; at least one is kept.
                let all = std::mem::take(&mut response.answers);
                let (mut lo, mut hi) = (1usize, all.len());
                while lo < hi {
                    let mid = (lo + hi).div_ceil(2);
                    response.answers = all[..mid].to_vec();
                    if fits(response, limit) {
                        lo = mid;
                    } else {
                        hi = mid - 1;
                    }
                }
                response.answers = all[..lo.min(all.len())].to_vec();
                truncated = true;
            }
            // Give back the additional records that still fit and still matter.
            response.additionals = extra;
            if qtype == RecordType::SRV {
                resync_additionals(response);
            }
            let extra = std::mem::take(&mut response.additionals);
            for record in extra {
                response.additionals.push(record);
                if !fits(response, limit) {
                    response.additionals.pop();
                    break;
                }
            }
        }
        response.metadata.truncation = truncated;
        reply_bytes(response)
    }
}

/// Encodes a response; `None` (logged) if it cannot be encoded.
fn reply_bytes(response: &Message) -> Option<Vec<u8>> {
    match response.to_vec() {
        Ok(bytes) => Some(bytes),
        Err(e) => {
            tracing::warn!(error = %e, "failed to encode a DNS response");
            None
        }
    }
}

fn reply(response: &Message) -> Outcome {
    match reply_bytes(response) {
        Some(bytes) => Outcome::Reply(bytes),
        None => Outcome::Drop,
    }
}

fn fits(response: &Message, limit: usize) -> bool {
    response.to_vec().map(|b| b.len() <= limit).unwrap_or(false)
}

/// After SRV answers were cut, keep only additional records for targets still answered.
fn resync_additionals(response: &mut Message) {
    let targets: BTreeSet<Name> = response
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(srv) => Some(srv.target.to_lowercase()),
            _ => None,
        })
        .collect();
    response
        .additionals
        .retain(|r| targets.contains(&r.name.to_lowercase()));
}

fn route_error(e: RouteError) -> Sections {
    match e {
        // Consul answers NXDOMAIN for an unknown datacenter (since 1.8.1).
        RouteError::NoPath { .. } => Sections::nxdomain(),
        _ => Sections::code(ResponseCode::ServFail),
    }
}

fn address_rdata(ip: IpAddr) -> RData {
    match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    }
}

/// The address an instance is reached at: its own, else its node's.
fn instance_address(e: &ServiceHealth) -> &str {
    if e.service.address.is_empty() {
        &e.node.address
    } else {
        &e.service.address
    }
}

/// The data of an address answer: A or AAAA for an IP, CNAME for a host name.
fn address_rdata_of(address: &str) -> Option<RData> {
    match IpAddr::from_str(address) {
        Ok(ip) => Some(address_rdata(ip)),
        Err(_) => name_from(address).map(|target| RData::CNAME(CNAME(target))),
    }
}

/// Whether address data answers a question of type `qtype` (CNAMEs answer any).
fn fits_query(qtype: RecordType, data: &RData) -> bool {
    match data {
        RData::A(_) => matches!(qtype, RecordType::A | RecordType::ANY | RecordType::TXT),
        RData::AAAA(_) => matches!(qtype, RecordType::AAAA | RecordType::ANY | RecordType::TXT),
        _ => true,
    }
}

/// An A/AAAA record for an IP of the asked family, a CNAME for a host name, or nothing.
fn address_record(owner: &Name, qtype: RecordType, address: &str, ttl: u32) -> Option<Record> {
    match IpAddr::from_str(address) {
        Ok(ip @ IpAddr::V4(_))
            if matches!(qtype, RecordType::A | RecordType::ANY | RecordType::TXT) =>
        {
            Some(rr(owner, ttl, address_rdata(ip)))
        }
        Ok(ip @ IpAddr::V6(_))
            if matches!(qtype, RecordType::AAAA | RecordType::ANY | RecordType::TXT) =>
        {
            Some(rr(owner, ttl, address_rdata(ip)))
        }
        Ok(_) => None,
        Err(_) => name_from(address).map(|target| rr(owner, ttl, RData::CNAME(CNAME(target)))),
    }
}

/// A reply with only a response code, for requests that could not be decoded.
pub(crate) fn error_reply(id: u16, op_code: OpCode, code: ResponseCode) -> Message {
    Message::error_msg(id, op_code, code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_txt_values_are_split_into_strings_that_encode() {
        let text = "k=".to_string() + &"é".repeat(300);
        let RData::TXT(txt) = txt_rdata(&text) else {
            panic!()
        };
        assert_eq!(txt.txt_data.len(), 3);
        assert!(txt.txt_data.iter().all(|s| s.len() <= 255));
        let record = rr(
            &Name::from_ascii("a.node.consul.").unwrap(),
            0,
            RData::TXT(txt),
        );
        let mut m = Message::response(1, OpCode::Query);
        m.answers.push(record);
        assert!(m.to_vec().is_ok());
    }

    #[test]
    fn each_order_number_gives_its_own_order_and_all_come_equally_often() {
        for n in 0..=MAX_ORDERED {
            let mut seen = std::collections::BTreeMap::new();
            for k in 0..orders(MAX_ORDERED) {
                let mut items: Vec<usize> = (0..n).collect();
                permute(&mut items, k);
                *seen.entry(items).or_insert(0) += 1;
            }
            // Every order of n items, each as often as the others.
            assert_eq!(seen.len(), orders(n), "{n} items");
            assert!(seen.values().all(|&c| c == orders(MAX_ORDERED) / orders(n)));
            for k in 0..orders(n) {
                let (mut a, mut b): (Vec<usize>, Vec<usize>) = ((0..n).collect(), (0..n).collect());
                permute(&mut a, k);
                permute(&mut b, k + orders(n));
                assert_eq!(a, b, "order numbers count modulo {n}!");
            }
        }
    }

    #[test]
    fn meta_txt_follows_rfc1464() {
        assert_eq!(meta_txt("k", "v"), "k=v");
        assert_eq!(meta_txt("a=b", "v"), "a`=b=v");
        assert_eq!(meta_txt("a`b", "v"), "a``b=v");
        assert_eq!(meta_txt(" k ", "v"), "` k` =v");
        assert_eq!(meta_txt("rfc1035-x", "raw"), "raw");
    }
}
