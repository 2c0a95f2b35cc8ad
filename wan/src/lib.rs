//! # proconsul-wan: between datacenters
//!
//! TLS material for the whole federation: the CA and the certificates of `proconsul tls`,
//! and the rustls configurations built from `ca_file`, `cert_file` and `key_file`.

#![warn(missing_docs)]

pub mod tls;
