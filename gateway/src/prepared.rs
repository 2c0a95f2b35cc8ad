//! Running a service query with failover: a prepared query (`/v1/query/:id/execute`,
//! `<name>.query.consul`), or a plain service lookup under the agent's default failover
//! policy.
//!
//! ```text
//!   definition ──▶ instances in its datacenter ──healthy ones?──▶ answer
//!                                      │ none
//!                                      ▼
//!      NearestN other datacenters (by estimated RTT), then Datacenters, in turn,
//!      until one has a healthy instance (each with a share of the deadline)
//! ```
//!
//! ACLs, as Consul's: finding a prepared query to execute needs no right on it
//! ([`Query::QueryToRun`], whose answer never holds the query's token); each
//! datacenter asked leaves out the instances that the query's own token, else the
//! caller's, may not read (`service:read`, `node:read`) instead of refusing
//! ([`Query::RunServiceQuery`]), so a denied caller gets no instances. The token stays
//! on the servers: a server of the query's datacenter reads as it, and sends it (with
//! the stored selection) to the servers of failover datacenters when the reads for them
//! pass through it, which they do when the query is of the executing agent's own
//! datacenter; otherwise failover datacenters are read as the caller. A plain service
//! lookup with the agent's failover policy (DNS) reads as the caller and needs
//! `service:read`.

use std::time::Duration;

use catalog::{Answer, Failover, Query, ServiceHealth, ServiceQuery, StoredQuery};
use catalog::{ReadMeta, ReadOptions, remaining_ms};
use rand::seq::SliceRandom;
use tokio::time::Instant;

use crate::{Gateway, RouteError};

/// The least time one failover datacenter is given before the next is asked.
pub const MIN_FAILOVER_ATTEMPT: Duration = Duration::from_millis(250);

/// What a service query with failover found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Executed {
    /// The service asked for.
    pub service: String,
    /// The healthy instances, nearest first when the query sorts by distance, else
    /// shuffled.
    pub nodes: Vec<ServiceHealth>,
    /// The datacenter that answered.
    pub datacenter: String,
    /// How many other datacenters were asked.
    pub failovers: usize,
    /// The query's DNS TTL as given (`"10s"`), empty when it has none.
    pub dns_ttl: String,
    /// The index of the answering read.
    pub index: u64,
    /// Whether the answering read left out instances the token may not read
    /// (`X-Consul-Results-Filtered-By-ACLs`).
    pub filtered: bool,
    /// The answering read's leader contact (`X-Consul-KnownLeader`, `-LastContact`).
    pub meta: ReadMeta,
}

/// How a service query reads each datacenter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reading<'a> {
    /// A health read, as the caller, with what it needs (`service:read`).
    Checked,
    /// This stored prepared query's execution: filtered, never refused.
    Executed(&'a StoredQuery),
}

impl Gateway {
    /// Executes the prepared query `key` (ID or name) stored in `dc`: its service
    /// query there, with its failover policy, filtered as its token (else the
    /// caller's) may read, which only servers hold (see the module's notes). `near`
    /// overrides the query's own sorting (`?near=`). `Ok(None)` when there is no such
    /// query.
    pub async fn execute(
        &self,
        dc: Option<&str>,
        key: &str,
        near: Option<&str>,
        options: ReadOptions,
    ) -> Result<Option<Executed>, RouteError> {
        let lookup = Query::QueryToRun {
            key: key.to_owned(),
        };
        let definition = match self.read(dc, &lookup, options.clone()).await?.answer {
            Answer::QueryToRun(Some(definition)) => *definition,
            _ => return Ok(None),
        };
        let mut service = definition.service;
        if let Some(near) = near.filter(|n| !n.is_empty()) {
            service.near = near.to_owned();
        }
        let stored = StoredQuery {
            datacenter: dc
                .filter(|d| !d.is_empty())
                .unwrap_or(self.local_datacenter().as_str())
                .to_owned(),
            id: definition.id,
        };
        let reading = Reading::Executed(&stored);
        let mut executed = self.run(dc, &service, options, reading).await?;
        executed.dns_ttl = definition.dns_ttl;
        Ok(Some(executed))
    }

    /// Runs `service` in `dc` (None = the local datacenter); when that has no healthy
    /// instance, asks the datacenters of its failover policy in turn. An error reading
    /// `dc` itself is returned; a failover datacenter that errs is passed over.
    pub async fn run_service_query(
        &self,
        dc: Option<&str>,
        service: &ServiceQuery,
        options: ReadOptions,
    ) -> Result<Executed, RouteError> {
        self.run(dc, service, options, Reading::Checked).await
    }

    async fn run(
        &self,
        dc: Option<&str>,
        service: &ServiceQuery,
        options: ReadOptions,
        reading: Reading<'_>,
    ) -> Result<Executed, RouteError> {
        let home = match dc.filter(|d| !d.is_empty()) {
            Some(d) => d.to_owned(),
            None => self.local_datacenter().to_string(),
        };
        let mut executed = self
            .instances(&home, service, options.clone(), reading)
            .await?;
        if !executed.nodes.is_empty() || service.failover.is_empty() {
            self.order(&mut executed, service).await;
            return Ok(executed);
        }
        let targets = self.failover_targets(&home, &service.failover).await;
        let count = targets.len();
        for (i, dc) in targets.into_iter().enumerate() {
            let now = Instant::now();
            if now >= options.deadline {
                break;
            }
            executed.failovers += 1;
            let left = u32::try_from(count - i).unwrap_or(u32::MAX);
            let share = (options.deadline - now) / left;
            let attempt = ReadOptions {
                deadline: (now + share.max(MIN_FAILOVER_ATTEMPT)).min(options.deadline),
                ..options.clone()
            };
            match self.instances(&dc, service, attempt, reading).await {
                Ok(found) if !found.nodes.is_empty() => {
                    let mut found = Executed {
                        failovers: executed.failovers,
                        ..found
                    };
                    self.order(&mut found, service).await;
                    return Ok(found);
                }
                // Nothing to answer with there; what it left out is still told.
                Ok(found) => executed.filtered |= found.filtered,
                Err(e) => {
                    tracing::debug!(datacenter = %dc, error = %e, left_ms = remaining_ms(options.deadline), "failover datacenter did not answer");
                }
            }
        }
        Ok(executed)
    }

    /// The datacenters a failover policy asks, in order, never `home`: the nearest
    /// `nearest_n` known ones, then the listed ones not asked yet.
    pub async fn failover_targets(&self, home: &str, failover: &Failover) -> Vec<String> {
        let mut targets: Vec<String> = Vec::new();
        if failover.nearest_n > 0 {
            targets.extend(
                self.datacenters()
                    .await
                    .into_iter()
                    .map(String::from)
                    .filter(|dc| dc != home && *dc != self.local_datacenter().as_str())
                    .take(failover.nearest_n),
            );
        }
        for dc in &failover.datacenters {
            if dc != home && !targets.contains(dc) {
                targets.push(dc.clone());
            }
        }
        targets
    }

    /// The instances of `dc` that `service` selects.
    async fn instances(
        &self,
        dc: &str,
        service: &ServiceQuery,
        options: ReadOptions,
        reading: Reading<'_>,
    ) -> Result<Executed, RouteError> {
        let read = match reading {
            Reading::Checked => service.read(),
            Reading::Executed(stored) => Query::RunServiceQuery {
                selection: Box::new(service.clone()),
                stored: Some(stored.clone()),
            },
        };
        let result = self.read(Some(dc), &read, options).await?;
        let nodes = match (result.answer, reading) {
            (Answer::ServiceHealth(list), Reading::Checked) => service.select(list),
            // Selected where it was read.
            (Answer::ServiceHealth(list), Reading::Executed(_)) => list,
            _ => Vec::new(),
        };
        Ok(Executed {
            service: service.service.clone(),
            nodes,
            datacenter: dc.to_owned(),
            failovers: 0,
            dns_ttl: String::new(),
            index: result.index,
            meta: result.meta,
            filtered: result.filtered,
        })
    }

    /// Sorts the instances by estimated round-trip time from the `near` node when the
    /// answer is from this datacenter and that node has a network coordinate (`_agent`
    /// is this agent); otherwise shuffles them, as Consul does.
    async fn order(&self, executed: &mut Executed, service: &ServiceQuery) {
        let near = match service.near.as_str() {
            "_agent" => self.lan().node_name().to_owned(),
            other => other.to_owned(),
        };
        if !near.is_empty() && executed.datacenter == self.local_datacenter().as_str() {
            let coordinates = self.lan().coordinates().await;
            if let Some(origin) = coordinates.get(&near) {
                let distance = |e: &ServiceHealth| {
                    coordinates
                        .get(&e.node.name)
                        .map_or(f64::INFINITY, |c| origin.distance(c))
                };
                executed
                    .nodes
                    .sort_by(|a, b| distance(a).total_cmp(&distance(b)));
                return;
            }
        }
        executed.nodes.shuffle(&mut rand::rng());
    }
}
