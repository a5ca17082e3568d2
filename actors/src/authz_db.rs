//! The built-in database authorization source (EMQX's `type =
//! built_in_database`): rules per client id, per username and for all
//! clients, kept in the replicated table [`AUTHZ_RULES_TABLE`] so a rule
//! added on one node holds on every node at once. A client's rules are
//! tried in EMQX's order (its client id's, its username's, then those for
//! all), the first match deciding; when none matches the next source does.

use crate::replicated::{ReplTables, Table, TableError};
use emqx_mqtt::acl::{Acl, ClientInfo, Permission, Request, RuleSpec, TopicSpec};
use emqx_mqtt::authz::RuleStore;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

/// The replicated table of the built-in database's rules.
pub const AUTHZ_RULES_TABLE: &str = "authz_rules";

/// Whose rules these are.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RuleOwner {
    ClientId(String),
    Username(String),
    All,
}

impl RuleOwner {
    fn key(&self) -> String {
        match self {
            RuleOwner::ClientId(c) => format!("clientid/{c}"),
            RuleOwner::Username(u) => format!("username/{u}"),
            RuleOwner::All => "all".into(),
        }
    }

    fn from_key(k: &str) -> Option<RuleOwner> {
        if k == "all" {
            return Some(RuleOwner::All);
        }
        let (kind, who) = k.split_once('/')?;
        match kind {
            "clientid" => Some(RuleOwner::ClientId(who.into())),
            "username" => Some(RuleOwner::Username(who.into())),
            _ => None,
        }
    }
}

impl fmt::Display for RuleOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuleOwner::ClientId(c) => write!(f, "clientid {c}"),
            RuleOwner::Username(u) => write!(f, "username {u}"),
            RuleOwner::All => f.write_str("all"),
        }
    }
}

/// `publish`, `subscribe` or `all`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RuleAction {
    Publish,
    Subscribe,
    All,
}

/// One rule, in EMQX's API form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbRule {
    pub allow: bool,
    pub action: RuleAction,
    /// A filter with `${clientid}`, `${username}`, `${cert_common_name}`,
    /// or `eq t` for an exact match.
    pub topic: String,
    /// The QoS levels the rule is about; `None`: any.
    pub qos: Option<Vec<u8>>,
    /// Publishing with this retain flag only; `None`: either.
    pub retain: Option<bool>,
}

impl DbRule {
    fn spec(&self) -> RuleSpec {
        RuleSpec {
            permission: if self.allow {
                Permission::Allow
            } else {
                Permission::Deny
            },
            publish: self.action != RuleAction::Subscribe,
            subscribe: self.action != RuleAction::Publish,
            qos: self.qos.clone(),
            retain: self.retain,
            topics: Some(vec![TopicSpec::parse(&self.topic)]),
        }
    }
}

impl fmt::Display for DbRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let action = match self.action {
            RuleAction::Publish => "publish",
            RuleAction::Subscribe => "subscribe",
            RuleAction::All => "all",
        };
        write!(
            f,
            "{} {action} {:?}",
            if self.allow { "allow" } else { "deny" },
            self.topic
        )?;
        if let Some(q) = &self.qos {
            let q: Vec<String> = q.iter().map(u8::to_string).collect();
            write!(f, " qos={}", q.join(","))?;
        }
        if let Some(r) = self.retain {
            write!(f, " retain={r}")?;
        }
        Ok(())
    }
}

/// Why rules could not be changed.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("{0} would have {1} rules; max_rules is {2}")]
    TooMany(RuleOwner, usize, usize),
    #[error("{0} has no rules")]
    NotFound(RuleOwner),
    #[error("the name must not be empty")]
    Empty,
    #[error(transparent)]
    Table(#[from] TableError),
}

/// The built-in database's rules, over the replicated table.
pub struct AuthzRules {
    tables: Arc<ReplTables>,
    table: Arc<Table>,
    max_rules: usize,
    /// Decoded rule sets of the table's generation `.0`.
    compiled: Mutex<(u64, HashMap<String, Arc<Acl>>)>,
}

impl fmt::Debug for AuthzRules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthzRules")
            .field("rules", &self.table.len())
            .field("max_rules", &self.max_rules)
            .finish()
    }
}

impl AuthzRules {
    pub fn new(tables: Arc<ReplTables>, max_rules: usize) -> Result<AuthzRules, TableError> {
        let table = tables
            .table(AUTHZ_RULES_TABLE)
            .cloned()
            .ok_or_else(|| TableError::Unknown(AUTHZ_RULES_TABLE.into()))?;
        Ok(AuthzRules {
            tables,
            table,
            max_rules,
            compiled: Mutex::new((u64::MAX, HashMap::new())),
        })
    }

    fn decode(b: &[u8]) -> Option<Vec<DbRule>> {
        bincode::serde::decode_from_slice(b, bincode::config::standard())
            .ok()
            .map(|(v, _)| v)
    }

    /// The rules of one owner, in order.
    pub fn get(&self, owner: &RuleOwner) -> Vec<DbRule> {
        self.table
            .get(&owner.key())
            .and_then(|b| AuthzRules::decode(&b))
            .unwrap_or_default()
    }

    /// Every owner's rules: client ids, usernames, then `all`.
    pub fn list(&self) -> Vec<(RuleOwner, Vec<DbRule>)> {
        let mut out: Vec<(RuleOwner, Vec<DbRule>)> = self
            .table
            .list()
            .into_iter()
            .filter_map(|(k, v)| Some((RuleOwner::from_key(&k)?, AuthzRules::decode(&v)?)))
            .collect();
        out.sort_by_key(|(o, _)| match o {
            RuleOwner::ClientId(c) => (0, c.clone()),
            RuleOwner::Username(u) => (1, u.clone()),
            RuleOwner::All => (2, String::new()),
        });
        out
    }

    /// Appends rules to an owner's, cluster-wide.
    pub fn add(&self, owner: &RuleOwner, rules: &[DbRule]) -> Result<usize, RulesError> {
        if matches!(owner, RuleOwner::ClientId(s) | RuleOwner::Username(s) if s.is_empty()) {
            return Err(RulesError::Empty);
        }
        let mut all = self.get(owner);
        all.extend_from_slice(rules);
        if all.len() > self.max_rules {
            return Err(RulesError::TooMany(
                owner.clone(),
                all.len(),
                self.max_rules,
            ));
        }
        let bytes =
            bincode::serde::encode_to_vec(&all, bincode::config::standard()).unwrap_or_default();
        self.tables
            .write(AUTHZ_RULES_TABLE, &owner.key(), Some(bytes))?;
        Ok(all.len())
    }

    /// Replaces an owner's rules, cluster-wide (no rules: removes them).
    pub fn set(&self, owner: &RuleOwner, rules: &[DbRule]) -> Result<(), RulesError> {
        if matches!(owner, RuleOwner::ClientId(s) | RuleOwner::Username(s) if s.is_empty()) {
            return Err(RulesError::Empty);
        }
        if rules.len() > self.max_rules {
            return Err(RulesError::TooMany(
                owner.clone(),
                rules.len(),
                self.max_rules,
            ));
        }
        let value = (!rules.is_empty()).then(|| {
            bincode::serde::encode_to_vec(rules, bincode::config::standard()).unwrap_or_default()
        });
        Ok(self.tables.write(AUTHZ_RULES_TABLE, &owner.key(), value)?)
    }

    /// Removes every rule of an owner, cluster-wide.
    pub fn delete(&self, owner: &RuleOwner) -> Result<(), RulesError> {
        if self.table.get(&owner.key()).is_none() {
            return Err(RulesError::NotFound(owner.clone()));
        }
        Ok(self.tables.write(AUTHZ_RULES_TABLE, &owner.key(), None)?)
    }

    /// An owner's rules ready to match, decoded once per table generation.
    fn compiled(&self, key: &str) -> Option<Arc<Acl>> {
        let generation = self.table.generation();
        let mut c = self.compiled.lock();
        if c.0 != generation {
            c.1.clear();
            c.0 = generation;
        }
        if let Some(a) = c.1.get(key) {
            return Some(a.clone());
        }
        let rules = AuthzRules::decode(&self.table.get(key)?)?;
        let acl = Arc::new(Acl::from_specs(rules.iter().map(DbRule::spec).collect()));
        c.1.insert(key.to_string(), acl.clone());
        Some(acl)
    }
}

impl RuleStore for AuthzRules {
    fn check(&self, c: &ClientInfo, r: &Request<'_>) -> Option<Permission> {
        if self.table.is_empty() {
            return None;
        }
        let keys = [
            Some(RuleOwner::ClientId(c.client_id.clone()).key()),
            c.username
                .as_ref()
                .map(|u| RuleOwner::Username(u.clone()).key()),
            Some(RuleOwner::All.key()),
        ];
        keys.iter()
            .flatten()
            .find_map(|k| self.compiled(k).and_then(|acl| acl.check(c, r)))
    }

    fn generation(&self) -> u64 {
        self.table.generation()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use emqx_mqtt::acl::AclAction;

    fn rule(allow: bool, action: RuleAction, topic: &str) -> DbRule {
        DbRule {
            allow,
            action,
            topic: topic.into(),
            qos: None,
            retain: None,
        }
    }

    fn req(action: AclAction, topic: &str) -> Request<'_> {
        Request {
            action,
            topic,
            qos: 1,
            retain: false,
        }
    }

    #[test]
    fn client_id_rules_come_before_username_rules_before_rules_for_all() {
        let (t, _rx) = ReplTables::open("a@h", None, &[AUTHZ_RULES_TABLE]).expect("open");
        let r = AuthzRules::new(Arc::new(t), 2).expect("rules");
        let c = ClientInfo {
            client_id: "c1".into(),
            username: Some("u1".into()),
            ..ClientInfo::default()
        };
        let pubr = |t| req(AclAction::Publish, t);
        assert_eq!(r.check(&c, &pubr("a")), None);
        let g0 = r.generation();
        r.add(&RuleOwner::All, &[rule(false, RuleAction::All, "#")])
            .expect("add");
        assert!(r.generation() > g0, "a change moves the generation");
        assert_eq!(r.check(&c, &pubr("a")), Some(Permission::Deny));
        r.add(
            &RuleOwner::Username("u1".into()),
            &[rule(true, RuleAction::Publish, "${username}/#")],
        )
        .expect("add");
        assert_eq!(r.check(&c, &pubr("u1/x")), Some(Permission::Allow));
        assert_eq!(
            r.check(&c, &req(AclAction::Subscribe, "u1/x")),
            Some(Permission::Deny)
        );
        r.add(
            &RuleOwner::ClientId("c1".into()),
            &[rule(false, RuleAction::Publish, "eq u1/#")],
        )
        .expect("add");
        assert_eq!(r.check(&c, &pubr("u1/x")), Some(Permission::Allow));
        assert_eq!(r.check(&c, &pubr("u1/#")), Some(Permission::Deny));
        // max_rules = 2 per owner.
        let e = r
            .add(
                &RuleOwner::ClientId("c1".into()),
                &[
                    rule(true, RuleAction::All, "x"),
                    rule(true, RuleAction::All, "y"),
                ],
            )
            .expect_err("too many");
        assert!(e.to_string().contains("max_rules is 2"), "{e}");
        assert_eq!(r.list().len(), 3);
        r.delete(&RuleOwner::All).expect("del");
        assert_eq!(r.check(&c, &pubr("b")), None);
        assert!(r.delete(&RuleOwner::All).is_err());
    }
}
