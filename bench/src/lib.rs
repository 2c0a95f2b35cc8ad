//! Parts shared by the benchmark drivers in `src/bin/`, which the scripts in `bench/`
//! run (none of this is part of the agent or of the test suite):
//!
//! - [`delay`]: a userspace UDP relay that holds every datagram for a fixed time, the
//!   WAN link between datacenters in the cross-datacenter benches;
//! - [`http`]: one keep-alive HTTP/1.1 connection, for drivers that send thousands of
//!   requests a second to an agent (or to etcd's JSON gateway);
//! - [`federation`]: two one-server datacenters of the real binary, federated with
//!   their WAN ports behind [`delay`] proxies (the replication benches);
//! - [`measure`]: percentiles, milliseconds for the JSON reports, and a process's
//!   memory and CPU time from `/proc`.

pub mod delay;
pub mod federation;
pub mod http;
pub mod measure;
