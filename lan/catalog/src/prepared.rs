//! Prepared queries (`/v1/query`): named service queries stored in the catalog, with a
//! failover policy, executed by ID or name over HTTP and as `<name>.query.consul` in
//! DNS. This module stores them and selects the instances one returns (their types are
//! in `types`); running one (which may ask other datacenters) is the gateway's work.

use super::state::{ApplyError, State, fold};
use super::types::{Health, PreparedQuery, ServiceHealth, ServiceQuery};
use crate::{Principal, Query};

impl ServiceQuery {
    /// The catalog read that fetches the candidates: the required tags and node
    /// metadata filter there, the rest in [`ServiceQuery::select`].
    pub fn read(&self) -> super::Query {
        super::Query::ServiceHealth {
            service: self.service.clone(),
            tags: self
                .tags
                .iter()
                .filter(|t| !t.starts_with('!'))
                .cloned()
                .collect(),
            passing_only: false,
            node_meta: self
                .node_meta
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }

    /// Keeps the instances this query selects: none with an excluded tag or missing
    /// service metadata, and only healthy ones (checks in `ignore_check_ids` do not
    /// count).
    pub fn select(&self, instances: Vec<ServiceHealth>) -> Vec<ServiceHealth> {
        let excluded: Vec<&str> = self
            .tags
            .iter()
            .filter_map(|t| t.strip_prefix('!'))
            .collect();
        instances
            .into_iter()
            .filter(|e| {
                !e.service
                    .tags
                    .iter()
                    .any(|t| excluded.iter().any(|x| t.eq_ignore_ascii_case(x)))
            })
            .filter(|e| {
                self.service_meta
                    .iter()
                    .all(|(k, v)| e.service.meta.get(k) == Some(v))
            })
            .filter(|e| {
                let worst = e
                    .checks
                    .iter()
                    .filter(|c| {
                        !self
                            .ignore_check_ids
                            .iter()
                            .any(|id| id.eq_ignore_ascii_case(&c.check_id))
                    })
                    .map(|c| c.status)
                    .max()
                    .unwrap_or(Health::Passing);
                match worst {
                    Health::Passing => true,
                    Health::Warning => !self.only_passing,
                    Health::Critical => false,
                }
            })
            .collect()
    }
}

impl State {
    /// Creates (`create`) or replaces a prepared query.
    pub(super) fn set_query(
        &mut self,
        index: u64,
        query: &PreparedQuery,
        create: bool,
    ) -> Result<(), ApplyError> {
        if query.service.service.is_empty() {
            return Err(ApplyError::Query(
                "Must provide a Service name to query".into(),
            ));
        }
        let existing = self.queries.get(&query.id);
        match (create, existing) {
            (true, Some(_)) => {
                return Err(ApplyError::Query(format!(
                    "Prepared query ID {:?} is in use",
                    query.id
                )));
            }
            (false, None) => {
                return Err(ApplyError::Query(format!(
                    "Cannot modify non-existent prepared query: '{}'",
                    query.id
                )));
            }
            _ => {}
        }
        if !query.name.is_empty() {
            let name = fold(&query.name);
            let clash = self
                .queries
                .values()
                .any(|q| q.id != query.id && fold(&q.name) == name);
            if clash {
                return Err(ApplyError::Query(format!(
                    "name '{}' aliases an existing query name",
                    query.name
                )));
            }
            if self.queries.contains_key(&name) && name != query.id {
                return Err(ApplyError::Query(format!(
                    "name '{}' aliases an existing query ID",
                    query.name
                )));
            }
        }
        let create_index = existing.map_or(index, |q| q.create_index);
        let stored = PreparedQuery {
            create_index,
            modify_index: index,
            ..query.clone()
        };
        if existing == Some(&stored) {
            return Ok(());
        }
        self.queries.insert(query.id.clone(), stored);
        self.indexes.queries = index;
        Ok(())
    }

    /// Deletes a prepared query.
    pub(super) fn delete_query(&mut self, index: u64, id: &str) -> Result<(), ApplyError> {
        if self.queries.remove(id).is_none() {
            return Err(ApplyError::Query(format!(
                "Cannot delete non-existent prepared query: '{id}'"
            )));
        }
        self.indexes.queries = index;
        Ok(())
    }

    /// The prepared query with this ID, or else this name (case-insensitive).
    pub fn find_query(&self, key: &str) -> Option<&PreparedQuery> {
        self.queries.get(key).or_else(|| {
            let name = fold(key);
            self.queries
                .values()
                .find(|q| !q.name.is_empty() && fold(&q.name) == name)
        })
    }

    /// A [`Query::RunServiceQuery`] of a prepared query this datacenter (`here`)
    /// stores, as its servers run it: the stored selection (whatever the executing
    /// agent sent), naming no stored query any more, and the stored token it reads as
    /// (`None`: the caller's). `None` when `query` is no such read or the query is not
    /// stored here (it is then read as sent, as the caller).
    pub fn run_stored(&self, query: &Query, here: &str) -> Option<(Query, Option<Principal>)> {
        let Query::RunServiceQuery {
            stored: Some(stored),
            ..
        } = query
        else {
            return None;
        };
        if stored.datacenter != here {
            return None;
        }
        let found = self.queries.get(&stored.id)?;
        let run = Query::RunServiceQuery {
            selection: Box::new(found.service.clone()),
            stored: None,
        };
        let token =
            (!found.token.is_empty()).then(|| Principal::Token(found.token.as_str().into()));
        Some((run, token))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Answer, Check, Command, Node, Query, Service};

    fn query(id: &str, name: &str) -> PreparedQuery {
        PreparedQuery {
            id: id.into(),
            name: name.into(),
            service: ServiceQuery {
                service: "web".into(),
                ..ServiceQuery::default()
            },
            ..PreparedQuery::default()
        }
    }

    fn set(q: PreparedQuery, create: bool) -> Command {
        Command::SetQuery {
            query: Box::new(q),
            create,
        }
    }

    #[test]
    fn queries_are_created_found_by_id_or_name_updated_and_deleted() {
        let mut s = State::new();
        s.apply(5, &set(query("id-1", "Web-Query"), true)).unwrap();
        let found = s.find_query("web-query").unwrap();
        assert_eq!((found.create_index, found.modify_index), (5, 5));
        assert_eq!(s.find_query("id-1").unwrap().name, "Web-Query");
        assert!(s.find_query("nope").is_none());
        assert_eq!(s.indexes().queries, 5);
        // Names are unique; IDs too.
        let e = s
            .apply(6, &set(query("id-2", "web-QUERY"), true))
            .unwrap_err();
        assert!(
            e.to_string().contains("aliases an existing query name"),
            "{e}"
        );
        let e = s.apply(6, &set(query("id-1", ""), true)).unwrap_err();
        assert!(e.to_string().contains("in use"), "{e}");
        let e = s.apply(6, &set(query("id-9", ""), false)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Cannot modify non-existent prepared query: 'id-9'"
        );
        let mut changed = query("id-1", "renamed");
        changed.service.only_passing = true;
        s.apply(7, &set(changed, false)).unwrap();
        let found = s.find_query("renamed").unwrap();
        assert_eq!((found.create_index, found.modify_index), (5, 7));
        assert!(found.service.only_passing);
        let (answer, index) = s.query(&Query::PreparedQueries { key: None });
        assert_eq!(index, 7);
        assert!(matches!(answer, Answer::PreparedQueries(list) if list.len() == 1));
        s.apply(8, &Command::DeleteQuery { id: "id-1".into() })
            .unwrap();
        assert!(s.find_query("id-1").is_none());
        let e = s
            .apply(9, &Command::DeleteQuery { id: "id-1".into() })
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "Cannot delete non-existent prepared query: 'id-1'"
        );
        // A query needs a service; the snapshot keeps them.
        let mut empty = query("id-3", "");
        empty.service.service.clear();
        assert!(s.apply(10, &set(empty, true)).is_err());
        s.apply(11, &set(query("id-4", "kept"), true)).unwrap();
        let restored = State::from_snapshot(s.to_snapshot());
        assert_eq!(restored.find_query("kept").unwrap().id, "id-4");
        assert_eq!(restored.indexes().queries, 11);
    }

    #[test]
    fn a_stored_token_filters_runs_here_and_is_in_no_lookup() {
        let mut s = State::new();
        let mut with_token = query("id-1", "web-as-reader");
        with_token.token = "reader-secret".into();
        s.apply(5, &set(with_token, true)).unwrap();
        s.apply(6, &set(query("id-2", "web-as-caller"), true))
            .unwrap();
        // The lookup an executing agent makes holds no token.
        let (answer, _) = s.query(&Query::QueryToRun {
            key: "web-as-reader".into(),
        });
        let Answer::QueryToRun(Some(found)) = answer else {
            panic!("{answer:?}")
        };
        assert_eq!((found.id.as_str(), found.token.as_str()), ("id-1", ""));
        // Run here: the stored selection, whatever was sent, as the stored token.
        let run = |id: &str, dc: &str| Query::RunServiceQuery {
            selection: Box::new(ServiceQuery {
                service: "db".into(),
                ..ServiceQuery::default()
            }),
            stored: Some(crate::StoredQuery {
                datacenter: dc.into(),
                id: id.into(),
            }),
        };
        let (ran, token) = s.run_stored(&run("id-1", "dc1"), "dc1").unwrap();
        let Query::RunServiceQuery { selection, stored } = ran else {
            panic!("{ran:?}")
        };
        assert_eq!((selection.service.as_str(), stored), ("web", None));
        assert_eq!(token, Some(Principal::Token("reader-secret".into())));
        let (_, token) = s.run_stored(&run("id-2", "dc1"), "dc1").unwrap();
        assert_eq!(token, None, "no token of its own: the caller's");
        // Another datacenter's query, or one not stored, is read as sent.
        assert!(s.run_stored(&run("id-1", "dc2"), "dc1").is_none());
        assert!(s.run_stored(&run("id-9", "dc1"), "dc1").is_none());
    }

    fn instance(tags: &[&str], checks: &[(&str, Health)]) -> ServiceHealth {
        ServiceHealth {
            node: Node {
                name: "n1".into(),
                ..Node::default()
            }
            .into(),
            service: Service {
                id: "web".into(),
                name: "web".into(),
                tags: tags.iter().map(|t| t.to_string()).collect(),
                ..Service::default()
            }
            .into(),
            checks: checks
                .iter()
                .map(|(id, status)| {
                    Check {
                        check_id: id.to_string(),
                        status: *status,
                        ..Check::default()
                    }
                    .into()
                })
                .collect(),
        }
    }

    #[test]
    fn select_applies_excluded_tags_health_and_ignored_checks() {
        let q = ServiceQuery {
            service: "web".into(),
            tags: vec!["v1".into(), "!canary".into()],
            ignore_check_ids: vec!["flaky".into()],
            ..ServiceQuery::default()
        };
        assert!(matches!(q.read(), Query::ServiceHealth { tags, .. } if tags == ["v1"]));
        let picked = q.select(vec![
            instance(&["v1"], &[("ok", Health::Passing)]),
            instance(&["v1", "Canary"], &[]),
            instance(&["v1"], &[("warn", Health::Warning)]),
            instance(&["v1"], &[("bad", Health::Critical)]),
            instance(&["v1"], &[("flaky", Health::Critical)]),
        ]);
        assert_eq!(
            picked.len(),
            3,
            "passing, warning, and critical only on an ignored check"
        );
        let strict = ServiceQuery {
            only_passing: true,
            ..q
        };
        let picked = strict.select(vec![
            instance(&["v1"], &[("warn", Health::Warning)]),
            instance(&["v1"], &[]),
        ]);
        assert_eq!(picked.len(), 1);
    }
}
