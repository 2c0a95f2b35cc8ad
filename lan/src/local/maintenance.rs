//! Maintenance mode: a node or one service instance taken out of service on purpose.
//!
//! As in Consul, maintenance is nothing but a critical check that nobody runs:
//! `_node_maintenance` for the node (which takes every service of the node out of DNS
//! and `?passing`), `_service_maintenance:<id>` for one instance. Its notes carry the
//! reason. Because it is an ordinary check, the anti-entropy sync carries it to the
//! catalog and every datacenter sees it there; because its kind is
//! [`CheckKind::Maintenance`], a reload or a re-registration that replaces a service's
//! checks leaves it in place, and only a disable (or removing the check or its service)
//! ends it.
//!
//! What is in maintenance is published as a [`Maintenance`] value on every change, so
//! that the agent can keep it on disk and restore it after a restart.

use std::collections::BTreeMap;

use catalog::Health;
use tokio::sync::watch;

use super::{CHECK_OUTPUT_MAX, CheckDefinition, Local, LocalError, Source};
use crate::checks::CheckKind;

/// The check that puts this node in maintenance (Consul's ID).
pub const NODE_MAINTENANCE_CHECK: &str = "_node_maintenance";

/// The prefix of the check that puts one service instance in maintenance; the service
/// ID follows (Consul's form).
pub const SERVICE_MAINTENANCE_PREFIX: &str = "_service_maintenance:";

/// The notes of node maintenance enabled without a reason (Consul's text, which
/// operators and scripts read).
pub const DEFAULT_NODE_MAINTENANCE_REASON: &str = "Maintenance mode is enabled for this node, but no reason was provided. This is a default message.";

/// The notes of service maintenance enabled without a reason (Consul's text).
pub const DEFAULT_SERVICE_MAINTENANCE_REASON: &str = "Maintenance mode is enabled for this service, but no reason was provided. This is a default message.";

/// What this agent has in maintenance, with the reasons.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Maintenance {
    /// The reason the node is in maintenance, if it is.
    pub node: Option<String>,
    /// Service instances in maintenance: service ID → reason.
    pub services: BTreeMap<String, String>,
}

impl Maintenance {
    /// Whether nothing is in maintenance.
    pub fn is_empty(&self) -> bool {
        self.node.is_none() && self.services.is_empty()
    }

    /// Records that check `id` now has definition `def` (`None`: it is gone). Returns
    /// whether anything changed.
    fn note(&mut self, id: &str, def: Option<&CheckDefinition>) -> bool {
        let reason = def
            .filter(|d| d.kind == CheckKind::Maintenance)
            .map(|d| d.notes.clone());
        if id == NODE_MAINTENANCE_CHECK {
            if self.node == reason {
                return false;
            }
            self.node = reason;
            return true;
        }
        let Some(service_id) = id.strip_prefix(SERVICE_MAINTENANCE_PREFIX) else {
            return false;
        };
        match reason {
            Some(r) => self.services.insert(service_id.to_owned(), r.clone()) != Some(r),
            None => self.services.remove(service_id).is_some(),
        }
    }
}

/// The ID of the maintenance check of service `service_id`.
pub(crate) fn service_check_id(service_id: &str) -> String {
    format!("{SERVICE_MAINTENANCE_PREFIX}{service_id}")
}

fn definition(
    id: String,
    name: &str,
    service_id: &str,
    reason: &str,
    default: &str,
) -> CheckDefinition {
    CheckDefinition {
        id,
        name: name.to_owned(),
        notes: if reason.is_empty() { default } else { reason }.to_owned(),
        service_id: service_id.to_owned(),
        kind: CheckKind::Maintenance,
        status: Health::Critical,
        output_max_size: CHECK_OUTPUT_MAX,
    }
}

impl Local {
    /// Records a change of check `id` in the published [`Maintenance`]. Called under the
    /// state lock, so the published value follows the checks in order.
    pub(super) fn note_maintenance(&self, id: &str, def: Option<&CheckDefinition>) {
        self.maintenance.send_if_modified(|m| m.note(id, def));
    }

    /// Puts this node in maintenance with `reason` (Consul's default text when empty).
    /// Returns false, changing nothing, when a check `_node_maintenance` is already
    /// registered: as in Consul, enabling twice keeps the first reason.
    pub fn enable_node_maintenance(&self, reason: &str) -> bool {
        let mut inner = self.lock();
        if inner.checks.contains_key(NODE_MAINTENANCE_CHECK) {
            return false;
        }
        let def = definition(
            NODE_MAINTENANCE_CHECK.to_owned(),
            "Node Maintenance Mode",
            "",
            reason,
            DEFAULT_NODE_MAINTENANCE_REASON,
        );
        self.put_check(&mut inner, def, Source::Api, super::Resend::Always);
        drop(inner);
        self.touch();
        tracing::info!("node entered maintenance mode");
        true
    }

    /// Takes this node out of maintenance. Returns false when it was not in it.
    pub fn disable_node_maintenance(&self) -> bool {
        let mut inner = self.lock();
        if !self.take_check(&mut inner, NODE_MAINTENANCE_CHECK) {
            return false;
        }
        drop(inner);
        self.touch();
        tracing::info!("node left maintenance mode");
        true
    }

    /// Puts service instance `service_id` in maintenance with `reason` (Consul's default
    /// text when empty). Returns false when it already is (the first reason stays).
    pub fn enable_service_maintenance(
        &self,
        service_id: &str,
        reason: &str,
    ) -> Result<bool, LocalError> {
        let mut inner = self.lock();
        if !inner.services.contains_key(service_id) {
            return Err(LocalError::NoSuchService(service_id.to_owned()));
        }
        let id = service_check_id(service_id);
        if inner.checks.contains_key(&id) {
            return Ok(false);
        }
        let def = definition(
            id,
            "Service Maintenance Mode",
            service_id,
            reason,
            DEFAULT_SERVICE_MAINTENANCE_REASON,
        );
        self.put_check(&mut inner, def, Source::Api, super::Resend::Always);
        drop(inner);
        self.touch();
        tracing::info!(service = %service_id, "service entered maintenance mode");
        Ok(true)
    }

    /// Takes service instance `service_id` out of maintenance. Returns false when it
    /// was not in it.
    pub fn disable_service_maintenance(&self, service_id: &str) -> Result<bool, LocalError> {
        let mut inner = self.lock();
        if !inner.services.contains_key(service_id) {
            return Err(LocalError::NoSuchService(service_id.to_owned()));
        }
        if !self.take_check(&mut inner, &service_check_id(service_id)) {
            return Ok(false);
        }
        drop(inner);
        self.touch();
        tracing::info!(service = %service_id, "service left maintenance mode");
        Ok(true)
    }

    /// Puts back what `saved` lists (after a restart): the node, and each service that
    /// this agent has again. Maintenance of a service that is gone is dropped, as Consul
    /// drops a saved check whose service did not come back.
    pub fn restore_maintenance(&self, saved: &Maintenance) {
        if let Some(reason) = &saved.node {
            self.enable_node_maintenance(reason);
        }
        for (service_id, reason) in &saved.services {
            if let Err(e) = self.enable_service_maintenance(service_id, reason) {
                tracing::warn!(service = %service_id, error = %e, "maintenance not restored");
            }
        }
    }

    /// What is in maintenance now, and every change from here on.
    pub fn subscribe_maintenance(&self) -> watch::Receiver<Maintenance> {
        self.maintenance.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::tests::{local, service};

    #[test]
    fn node_maintenance_is_a_critical_check_with_the_default_reason() {
        let l = local();
        assert!(l.enable_node_maintenance(""));
        assert!(
            !l.enable_node_maintenance("second"),
            "enabling twice is a no-op"
        );
        let checks = l.checks();
        let c = checks
            .iter()
            .find(|c| c.check_id == NODE_MAINTENANCE_CHECK)
            .unwrap();
        assert_eq!(c.status, Health::Critical);
        assert_eq!(c.notes, DEFAULT_NODE_MAINTENANCE_REASON);
        assert_eq!(c.name, "Node Maintenance Mode");
        assert_eq!(c.check_type, "maintenance");
        assert_eq!(
            l.subscribe_maintenance().borrow().node.as_deref(),
            Some(DEFAULT_NODE_MAINTENANCE_REASON)
        );
        assert!(l.disable_node_maintenance());
        assert!(!l.disable_node_maintenance());
        assert!(l.subscribe_maintenance().borrow().is_empty());
    }

    #[test]
    fn service_maintenance_needs_the_service_and_ends_with_it() {
        let l = local();
        assert_eq!(
            l.enable_service_maintenance("web", "x"),
            Err(LocalError::NoSuchService("web".into()))
        );
        assert_eq!(
            LocalError::NoSuchService("web".into()).to_string(),
            r#"Unknown service ID "web". Ensure that the service ID is passed, not the service name."#
        );
        l.register_service(service("web"), vec![], Source::Config, false)
            .unwrap();
        assert_eq!(l.enable_service_maintenance("web", "upgrade"), Ok(true));
        let watched = l.subscribe_maintenance();
        assert_eq!(watched.borrow().services["web"], "upgrade");
        let c = l
            .checks()
            .into_iter()
            .find(|c| c.check_id == "_service_maintenance:web")
            .unwrap();
        assert_eq!((c.service_id.as_str(), c.status), ("web", Health::Critical));

        // A reload that replaces the service's checks keeps its maintenance.
        l.replace_config(vec![(service("web"), vec![])], vec![])
            .unwrap();
        assert_eq!(watched.borrow().services["web"], "upgrade");

        // Its removal ends it.
        l.replace_config(vec![], vec![]).unwrap();
        assert!(watched.borrow().is_empty());
        assert!(l.checks().is_empty());
    }

    #[test]
    fn a_restore_skips_services_that_did_not_come_back() {
        let l = local();
        l.register_service(service("web"), vec![], Source::Config, false)
            .unwrap();
        let saved = Maintenance {
            node: Some("rack move".into()),
            services: [("web", "a"), ("gone", "b")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        };
        l.restore_maintenance(&saved);
        let now = l.subscribe_maintenance().borrow().clone();
        assert_eq!(now.node.as_deref(), Some("rack move"));
        assert_eq!(now.services.keys().collect::<Vec<_>>(), ["web"]);
    }
}
