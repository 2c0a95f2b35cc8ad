//! Parsing of names in the Consul domain (`web.service.dc2.consul`) into lookups.
//!
//! Consul's grammar (its v1 DNS server): after stripping the domain, scan the labels
//! right to left for the first keyword (`service`, `node`, `query`, `addr`, and the mesh
//! keywords). Labels left of it name the thing; labels right of it are the locality:
//! nothing (this datacenter), one label (a datacenter), or `<dc>.dc`. Anything else is
//! an invalid name, answered NXDOMAIN.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// What a name in the domain asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// `<node>.node[.<dc>]`.
    Node {
        /// Node name (may contain dots).
        name: String,
        /// Datacenter, when given.
        dc: Option<String>,
    },
    /// `[<tag>.]<service>.service[.<dc>]` and `_<service>._<tag>[.service][.<dc>]`.
    Service {
        /// Service name.
        name: String,
        /// Tag filter.
        tag: Option<String>,
        /// Datacenter, when given.
        dc: Option<String>,
    },
    /// `<name>.query[.<dc>]`: a prepared query.
    PreparedQuery {
        /// Query name or ID.
        name: String,
        /// Datacenter, when given.
        dc: Option<String>,
    },
    /// `<hex>.addr[.<dc>]`.
    Addr(IpAddr),
    /// The domain itself.
    Apex,
    /// A name in the domain that follows no form.
    Invalid,
}

const KEYWORDS: &[&str] = &[
    "service", "connect", "virtual", "ingress", "node", "query", "addr",
];

/// Parses the labels of a name below the domain, most specific first, lower-cased.
pub(crate) fn parse(labels: &[String], srv: bool) -> Lookup {
    if labels.is_empty() {
        return Lookup::Apex;
    }
    let keyword_at = labels.iter().rposition(|l| KEYWORDS.contains(&l.as_str()));
    let Some(k) = keyword_at else {
        // RFC 2782 without the `.service` label, SRV only: `_web._tcp[.dc]`.
        if srv && labels.len() >= 2 && labels[0].starts_with('_') && labels[1].starts_with('_') {
            return match locality(&labels[2..]) {
                Some(dc) => rfc2782(&labels[0], &labels[1], dc),
                None => Lookup::Invalid,
            };
        }
        return Lookup::Invalid;
    };
    let parts = &labels[..k];
    let suffix = &labels[k + 1..];
    if parts.is_empty() {
        return Lookup::Invalid;
    }
    match labels[k].as_str() {
        "service" => {
            let Some(dc) = locality(suffix) else {
                return Lookup::Invalid;
            };
            if parts.len() == 2 && parts[0].starts_with('_') && parts[1].starts_with('_') {
                return rfc2782(&parts[0], &parts[1], dc);
            }
            let (name, tags) = parts.split_last().expect("parts is not empty");
            Lookup::Service {
                name: name.clone(),
                // Consul joins several leading labels into one tag (a 0.3-era form).
                tag: (!tags.is_empty()).then(|| tags.join(".")),
                dc,
            }
        }
        "node" => match locality(suffix) {
            Some(dc) => Lookup::Node {
                name: parts.join("."),
                dc,
            },
            None => Lookup::Invalid,
        },
        "query" => {
            // Only `<dc>` may follow (not `<dc>.dc`), as in Consul.
            if suffix.len() > 1 {
                return Lookup::Invalid;
            }
            let dc = suffix.first().cloned();
            // `_name._proto.query`: the protocol label is ignored, as in Consul.
            let name = if parts.len() == 2 && parts[0].starts_with('_') && parts[1].starts_with('_')
            {
                parts[0].trim_start_matches('_').to_owned()
            } else {
                parts.join(".")
            };
            Lookup::PreparedQuery { name, dc }
        }
        "addr" => {
            if parts.len() != 1 || locality(suffix).is_none() {
                return Lookup::Invalid;
            }
            match decode_addr(&parts[0]) {
                Some(ip) => Lookup::Addr(ip),
                None => Lookup::Invalid,
            }
        }
        // Service mesh lookups (`connect`, `virtual`, `ingress`) are not part of proconsul.
        _ => Lookup::Invalid,
    }
}

fn rfc2782(service: &str, tag: &str, dc: Option<String>) -> Lookup {
    let tag = &tag[1..];
    Lookup::Service {
        name: service[1..].to_owned(),
        // `_tcp` means "any tag".
        tag: (tag != "tcp").then(|| tag.to_owned()),
        dc,
    }
}

/// The locality suffix: `Some(None)` for none, `Some(Some(dc))` for `<dc>` or
/// `<dc>.dc`, `None` when invalid.
fn locality(suffix: &[String]) -> Option<Option<String>> {
    match suffix {
        [] => Some(None),
        [dc] => Some(Some(dc.clone())),
        [dc, kind] if kind == "dc" => Some(Some(dc.clone())),
        _ => None,
    }
}

/// `c000020a` → 192.0.2.10; 32 hex digits → an IPv6 address.
fn decode_addr(hex: &str) -> Option<IpAddr> {
    let bytes = decode_hex(hex)?;
    match bytes.len() {
        4 => {
            let b: [u8; 4] = bytes.try_into().ok()?;
            Some(IpAddr::V4(Ipv4Addr::from(b)))
        }
        16 => {
            let b: [u8; 16] = bytes.try_into().ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
        _ => None,
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    s.as_bytes()
        .chunks(2)
        .map(|pair| {
            let text = std::str::from_utf8(pair).ok()?;
            u8::from_str_radix(text, 16).ok()
        })
        .collect()
}

/// The `.addr` label of an address (lower-case hex of its bytes).
pub(crate) fn encode_addr(ip: IpAddr) -> String {
    let bytes: Vec<u8> = match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The address a reverse name (`10.2.0.192.in-addr.arpa`, nibbles `.ip6.arpa`) stands
/// for; labels are lower-cased and exclude the root.
pub(crate) fn parse_reverse(labels: &[String]) -> Option<IpAddr> {
    let n = labels.len();
    if n == 6 && labels[4] == "in-addr" && labels[5] == "arpa" {
        let mut octets = [0u8; 4];
        for (i, label) in labels[..4].iter().enumerate() {
            octets[3 - i] = label.parse().ok()?;
        }
        return Some(IpAddr::V4(Ipv4Addr::from(octets)));
    }
    if n == 34 && labels[32] == "ip6" && labels[33] == "arpa" {
        let mut hex = String::with_capacity(32);
        for label in labels[..32].iter().rev() {
            if label.len() != 1 {
                return None;
            }
            hex.push_str(label);
        }
        let bytes: [u8; 16] = decode_hex(&hex)?.try_into().ok()?;
        return Some(IpAddr::V6(Ipv6Addr::from(bytes)));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn labels(name: &str) -> Vec<String> {
        if name.is_empty() {
            return vec![];
        }
        name.split('.').map(str::to_owned).collect()
    }

    fn p(name: &str) -> Lookup {
        parse(&labels(name), false)
    }

    fn service(name: &str, tag: Option<&str>, dc: Option<&str>) -> Lookup {
        Lookup::Service {
            name: name.into(),
            tag: tag.map(Into::into),
            dc: dc.map(Into::into),
        }
    }

    #[test]
    fn service_forms() {
        assert_eq!(p("web.service"), service("web", None, None));
        assert_eq!(p("rails.web.service"), service("web", Some("rails"), None));
        assert_eq!(p("web.service.dc2"), service("web", None, Some("dc2")));
        assert_eq!(p("web.service.dc2.dc"), service("web", None, Some("dc2")));
        assert_eq!(p("_web._tcp.service"), service("web", None, None));
        assert_eq!(
            p("_web._rails.service.dc2"),
            service("web", Some("rails"), Some("dc2"))
        );
        assert_eq!(p("a.b.web.service"), service("web", Some("a.b"), None));
    }

    #[test]
    fn rfc2782_without_service_label_needs_srv() {
        assert_eq!(
            parse(&labels("_web._tcp"), true),
            service("web", None, None)
        );
        assert_eq!(parse(&labels("_web._tcp"), false), Lookup::Invalid);
    }

    #[test]
    fn node_forms() {
        assert_eq!(
            p("foo.node"),
            Lookup::Node {
                name: "foo".into(),
                dc: None
            }
        );
        assert_eq!(
            p("foo.bar.node.dc1"),
            Lookup::Node {
                name: "foo.bar".into(),
                dc: Some("dc1".into())
            }
        );
    }

    #[test]
    fn prepared_query_names() {
        assert_eq!(
            p("web-near.query"),
            Lookup::PreparedQuery {
                name: "web-near".into(),
                dc: None
            }
        );
        assert_eq!(
            p("a.b.query.dc2"),
            Lookup::PreparedQuery {
                name: "a.b".into(),
                dc: Some("dc2".into())
            }
        );
        assert_eq!(
            p("_web._tcp.query"),
            Lookup::PreparedQuery {
                name: "web".into(),
                dc: None
            }
        );
    }

    #[test]
    fn invalid_names() {
        for name in [
            "node",
            "service",
            "query",
            "foo.node.dc1.extra.more",
            "foo.service.dc1.extra.more",
            "foo.query.dc1.extra",
            "nothing",
            "web.connect",
            "zz.addr",
            "c000020.addr",
        ] {
            assert_eq!(p(name), Lookup::Invalid, "{name}");
        }
        assert_eq!(p(""), Lookup::Apex);
    }

    #[test]
    fn addr_round_trip() {
        let v4: IpAddr = "192.0.2.10".parse().unwrap();
        assert_eq!(encode_addr(v4), "c000020a");
        assert_eq!(p("c000020a.addr.dc1"), Lookup::Addr(v4));
        let v6: IpAddr = "2001:db8:1:2:cafe::1337".parse().unwrap();
        assert_eq!(encode_addr(v6), "20010db800010002cafe000000001337");
        assert_eq!(p("20010db800010002cafe000000001337.addr"), Lookup::Addr(v6));
    }

    #[test]
    fn reverse_names() {
        assert_eq!(
            parse_reverse(&labels("10.2.0.192.in-addr.arpa")),
            Some("192.0.2.10".parse().unwrap())
        );
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        let nibbles: Vec<String> = encode_addr(v6)
            .chars()
            .rev()
            .map(|c| c.to_string())
            .collect();
        let name = format!("{}.ip6.arpa", nibbles.join("."));
        assert_eq!(parse_reverse(&labels(&name)), Some(v6));
        assert_eq!(parse_reverse(&labels("300.2.0.192.in-addr.arpa")), None);
    }

    proptest! {
        #[test]
        fn parse_never_panics(ls in proptest::collection::vec("[a-z0-9_.-]{0,8}", 0..8), srv: bool) {
            let _ = parse(&ls, srv);
            let _ = parse_reverse(&ls);
        }
    }
}
