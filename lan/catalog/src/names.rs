//! The service names of the catalog with their tags, kept up to date as instances come and
//! go, so that listing them (`/v1/catalog/services`) costs what the answer holds instead
//! of a walk over every instance.
//!
//! Invariant: it is what a walk over the instances would build, names and tags spelt as
//! registered (`Web` and `web` are two names, as Consul lists them). The state machine
//! adds every instance it stores and removes every one it drops or replaces; the
//! proptest of `state.rs` compares it with a walk after random command sequences.

use std::collections::BTreeMap;

use super::types::Service;

/// Service names, each with how many instances carry it and how many carry each tag.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ServiceNames {
    names: BTreeMap<String, Counts>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Counts {
    instances: usize,
    /// Tag → occurrences over the instances (a tag listed twice by one instance counts
    /// twice, and is removed twice).
    tags: BTreeMap<String, usize>,
}

impl ServiceNames {
    /// Counts a stored instance.
    pub(crate) fn add(&mut self, service: &Service) {
        let counts = self.names.entry(service.name.clone()).or_default();
        counts.instances += 1;
        for tag in &service.tags {
            *counts.tags.entry(tag.clone()).or_default() += 1;
        }
    }

    /// Uncounts an instance that was counted by [`ServiceNames::add`].
    pub(crate) fn remove(&mut self, service: &Service) {
        let Some(counts) = self.names.get_mut(&service.name) else {
            return;
        };
        for tag in &service.tags {
            if let Some(n) = counts.tags.get_mut(tag) {
                *n -= 1;
                if *n == 0 {
                    counts.tags.remove(tag);
                }
            }
        }
        counts.instances -= 1;
        if counts.instances == 0 {
            self.names.remove(&service.name);
        }
    }

    /// Every name with its distinct tags, sorted.
    pub(crate) fn list(&self) -> BTreeMap<String, Vec<String>> {
        self.names
            .iter()
            .map(|(name, counts)| (name.clone(), counts.tags.keys().cloned().collect()))
            .collect()
    }

    /// How many distinct names there are.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.names.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, tags: &[&str]) -> Service {
        Service {
            name: name.into(),
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            ..Service::default()
        }
    }

    #[test]
    fn a_tag_stays_while_an_instance_carries_it() {
        let mut names = ServiceNames::default();
        let (a, b) = (svc("web", &["v1", "v2", "v1"]), svc("web", &["v2"]));
        names.add(&a);
        names.add(&b);
        names.add(&svc("Web", &[]));
        assert_eq!(names.list()["web"], ["v1", "v2"]);
        assert_eq!(names.len(), 2, "names keep their case");
        names.remove(&a);
        assert_eq!(names.list()["web"], ["v2"]);
        names.remove(&b);
        assert!(!names.list().contains_key("web"));
        assert_eq!(names.list()["Web"], Vec::<String>::new());
    }
}
