//! Authorization as EMQX 5 does it: the sources are tried in order, the
//! first rule that matches decides, and `no_match` decides when none
//! does. A denied publish is dropped or ends the connection
//! (`deny_action`); each client keeps a small cache of decisions
//! (`cache.max_size` entries for `cache.ttl`), emptied when the rules
//! change.
//!
//! The sources are `acl.conf` files ([`Acl`]), whose rules can be
//! replaced on a running node ([`Authz::replace`]), and rule stores
//! ([`RuleStore`], the built-in database) that hold rules per client.

use crate::acl::{Acl, AclAction, ClientInfo, Permission, Request};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// What a denied publish does (`authorization.deny_action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyAction {
    /// Drop it (v5: acknowledged with 0x87 Not authorized).
    Ignore,
    /// End the connection (v5: DISCONNECT 0x87).
    Disconnect,
}

/// `authorization.cache`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSettings {
    pub enable: bool,
    pub max_size: usize,
    pub ttl: Duration,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            enable: true,
            max_size: 32,
            ttl: Duration::from_secs(60),
        }
    }
}

/// One source: a name for logs and its rules.
#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    pub rules: Rules,
}

/// Where a source's rules are.
#[derive(Debug, Clone)]
pub enum Rules {
    /// The rules of an `acl.conf`.
    File(Acl),
    /// Rules looked up per client (the built-in database).
    Store(Arc<dyn RuleStore>),
}

/// Rules kept per client outside the configuration.
pub trait RuleStore: Send + Sync + std::fmt::Debug {
    /// The permission of the first of this client's rules that matches.
    fn check(&self, c: &ClientInfo, r: &Request<'_>) -> Option<Permission>;
    /// Grows whenever a rule changes, so cached decisions are dropped.
    fn generation(&self) -> u64;
}

impl Rules {
    fn check(&self, c: &ClientInfo, r: &Request<'_>) -> Option<Permission> {
        match self {
            Rules::File(acl) => acl.check(c, r),
            Rules::Store(s) => s.check(c, r),
        }
    }
}

/// The node's authorization: shared by every channel.
#[derive(Debug)]
pub struct Authz {
    sources: RwLock<Arc<Vec<Source>>>,
    /// Bumped whenever a file's rules are replaced; with the stores'
    /// generations, a cache of another generation is emptied before use.
    generation: AtomicU64,
    /// The sources whose rules live in a store (fixed, like the sources).
    stores: Vec<Arc<dyn RuleStore>>,
    pub no_match: Permission,
    pub deny_action: DenyAction,
    pub cache: CacheSettings,
    /// No source and `no_match = allow` (fixed: sources are replaced,
    /// never added or removed).
    open: bool,
}

impl Default for Authz {
    /// No sources and `no_match = allow`: everything is allowed.
    fn default() -> Self {
        Authz::new(
            Vec::new(),
            Permission::Allow,
            DenyAction::Ignore,
            CacheSettings::default(),
        )
    }
}

impl Authz {
    pub fn new(
        sources: Vec<Source>,
        no_match: Permission,
        deny_action: DenyAction,
        cache: CacheSettings,
    ) -> Authz {
        let stores = sources
            .iter()
            .filter_map(|s| match &s.rules {
                Rules::Store(st) => Some(st.clone()),
                Rules::File(_) => None,
            })
            .collect();
        Authz {
            open: sources.is_empty() && no_match == Permission::Allow,
            stores,
            sources: RwLock::new(Arc::new(sources)),
            generation: AtomicU64::new(1),
            no_match,
            deny_action,
            cache,
        }
    }

    /// Whether every request is allowed without looking (no source and
    /// `no_match = allow`), so a channel can skip the work.
    pub fn allows_everything(&self) -> bool {
        self.open
    }

    fn current(&self) -> Arc<Vec<Source>> {
        match self.sources.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// The sources in order (for `ctl`).
    pub fn sources(&self) -> Arc<Vec<Source>> {
        self.current()
    }

    /// Replaces the rules of the source named `name`; false when there is
    /// no such source. Every client's cache is emptied.
    pub fn replace(&self, name: &str, acl: Acl) -> bool {
        let mut guard = match self.sources.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let mut next = (**guard).clone();
        let Some(s) = next
            .iter_mut()
            .find(|s| s.name == name && matches!(s.rules, Rules::File(_)))
        else {
            return false;
        };
        s.rules = Rules::File(acl);
        *guard = Arc::new(next);
        self.generation.fetch_add(1, Ordering::AcqRel);
        true
    }

    pub fn generation(&self) -> u64 {
        self.stores
            .iter()
            .fold(self.generation.load(Ordering::Acquire), |g, s| {
                g.wrapping_add(s.generation())
            })
    }

    /// The decision for one request, without a cache.
    pub fn authorize(&self, c: &ClientInfo, r: &Request<'_>) -> Permission {
        self.current()
            .iter()
            .find_map(|s| s.rules.check(c, r))
            .unwrap_or(self.no_match)
    }
}

/// A client's cache of decisions: per topic, the answers to the
/// questions asked about it (an action with a QoS and retain flag).
#[derive(Debug, Default)]
pub struct AuthzCache {
    generation: u64,
    entries: HashMap<Box<str>, Vec<Cached>>,
}

#[derive(Debug, Clone, Copy)]
struct Cached {
    slot: u8,
    permission: Permission,
    until: Instant,
}

/// Publish: 3 QoS x 2 retain flags (0-5); subscribe: 3 QoS (6-8).
fn slot(r: &Request<'_>) -> u8 {
    let q = r.qos.min(2);
    match r.action {
        AclAction::Publish => q * 2 + u8::from(r.retain),
        AclAction::Subscribe => 6 + q,
    }
}

impl AuthzCache {
    /// The decision for `r`, from the cache when it has a fresh one.
    pub fn check(
        &mut self,
        authz: &Authz,
        client: impl FnOnce() -> ClientInfo,
        r: &Request<'_>,
        now: Instant,
    ) -> Permission {
        self.check_with(authz, None, client, r, now)
    }

    /// [`AuthzCache::check`] with the client's own rules (fixed for the
    /// connection, see [`crate::acl::AuthInfo`]) tried before the sources.
    pub fn check_with(
        &mut self,
        authz: &Authz,
        own: Option<&Acl>,
        client: impl FnOnce() -> ClientInfo,
        r: &Request<'_>,
        now: Instant,
    ) -> Permission {
        let decide = |c: &ClientInfo| {
            own.and_then(|a| a.check(c, r))
                .unwrap_or_else(|| authz.authorize(c, r))
        };
        if !authz.cache.enable {
            return decide(&client());
        }
        let generation = authz.generation();
        if generation != self.generation {
            self.entries.clear();
            self.generation = generation;
        }
        let s = slot(r);
        let hit = self
            .entries
            .get(r.topic)
            .and_then(|e| e.iter().find(|c| c.slot == s && now < c.until));
        if let Some(c) = hit {
            return c.permission;
        }
        let permission = decide(&client());
        if !self.entries.contains_key(r.topic) && self.entries.len() >= authz.cache.max_size {
            self.entries.retain(|_, e| {
                e.retain(|c| now < c.until);
                !e.is_empty()
            });
            if self.entries.len() >= authz.cache.max_size {
                self.entries.clear();
            }
        }
        let e = self.entries.entry(r.topic.into()).or_default();
        e.retain(|c| c.slot != s);
        e.push(Cached {
            slot: s,
            permission,
            until: now + authz.cache.ttl,
        });
        permission
    }

    /// Forgets everything (the client's identity changed).
    pub fn clear(&mut self) {
        self.entries = HashMap::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authz(text: &str, no_match: Permission) -> Authz {
        Authz::new(
            vec![Source {
                name: "file".into(),
                rules: Rules::File(Acl::parse(text).expect("acl")),
            }],
            no_match,
            DenyAction::Ignore,
            CacheSettings::default(),
        )
    }

    fn client() -> ClientInfo {
        ClientInfo {
            client_id: "c1".into(),
            ..ClientInfo::default()
        }
    }

    fn publish(topic: &str) -> Request<'_> {
        Request {
            action: AclAction::Publish,
            topic,
            qos: 1,
            retain: false,
        }
    }

    #[test]
    fn no_match_decides_when_no_rule_matches() {
        let a = authz(r#"{deny, all, publish, ["x"]}."#, Permission::Allow);
        assert_eq!(a.authorize(&client(), &publish("x")), Permission::Deny);
        assert_eq!(a.authorize(&client(), &publish("y")), Permission::Allow);
        let a = authz(r#"{allow, all, publish, ["x"]}."#, Permission::Deny);
        assert_eq!(a.authorize(&client(), &publish("y")), Permission::Deny);
        assert!(!a.allows_everything());
        assert!(Authz::default().allows_everything());
    }

    #[test]
    fn the_cache_answers_until_its_ttl_or_a_rule_change() {
        let a = authz(r#"{deny, all, publish, ["x"]}."#, Permission::Allow);
        let mut cache = AuthzCache::default();
        let t0 = Instant::now();
        let asked = std::cell::Cell::new(0);
        let check = |cache: &mut AuthzCache, t| {
            cache.check(
                &a,
                || {
                    asked.set(asked.get() + 1);
                    client()
                },
                &publish("x"),
                t,
            )
        };
        assert_eq!(check(&mut cache, t0), Permission::Deny);
        assert_eq!(
            check(&mut cache, t0 + Duration::from_secs(59)),
            Permission::Deny
        );
        assert_eq!(asked.get(), 1, "the second answer came from the cache");
        assert_eq!(
            check(&mut cache, t0 + Duration::from_secs(61)),
            Permission::Deny
        );
        assert_eq!(asked.get(), 2, "expired after the ttl");
        // New rules: the cache is not trusted any more.
        assert!(a.replace("file", Acl::parse("{allow, all}.").expect("acl")));
        assert!(!a.replace("nope", Acl::default()));
        let got = cache.check(&a, client, &publish("x"), t0 + Duration::from_secs(62));
        assert_eq!(got, Permission::Allow);
    }

    #[test]
    fn the_cache_stays_within_max_size() {
        let a = authz("{allow, all}.", Permission::Deny);
        let mut cache = AuthzCache::default();
        let t0 = Instant::now();
        for i in 0..100 {
            let t = format!("t/{i}");
            cache.check(&a, client, &publish(&t), t0);
            assert!(cache.entries.len() <= 32);
        }
        // Different QoS or retain flags are different questions.
        let r = Request {
            action: AclAction::Publish,
            topic: "q",
            qos: 2,
            retain: true,
        };
        assert_ne!(slot(&r), slot(&publish("q")));
    }

    /// A store whose one rule set can be swapped, as the built-in database
    /// changes.
    #[derive(Debug, Default)]
    struct Swappable {
        acl: RwLock<Acl>,
        gen: AtomicU64,
    }

    impl RuleStore for Swappable {
        fn check(&self, c: &ClientInfo, r: &Request<'_>) -> Option<Permission> {
            self.acl.read().ok()?.check(c, r)
        }
        fn generation(&self) -> u64 {
            self.gen.load(Ordering::Acquire)
        }
    }

    #[test]
    fn a_store_decides_in_source_order_and_its_changes_empty_the_caches() {
        let store = Arc::new(Swappable::default());
        let a = Authz::new(
            vec![
                Source {
                    name: "built_in_database".into(),
                    rules: Rules::Store(store.clone()),
                },
                Source {
                    name: "file".into(),
                    rules: Rules::File(Acl::parse(r#"{deny, all, publish, ["x"]}."#).expect("acl")),
                },
            ],
            Permission::Allow,
            DenyAction::Ignore,
            CacheSettings::default(),
        );
        let mut cache = AuthzCache::default();
        let t0 = Instant::now();
        // Nothing in the store: the file decides.
        assert_eq!(cache.check(&a, client, &publish("x"), t0), Permission::Deny);
        // A rule for the client in the store, ahead of the file: the cached
        // answer goes as soon as the store changes.
        *store.acl.write().expect("lock") =
            Acl::parse(r#"{allow, {clientid, "c1"}, publish, ["x"]}."#).expect("acl");
        assert_eq!(cache.check(&a, client, &publish("x"), t0), Permission::Deny);
        store.gen.fetch_add(1, Ordering::AcqRel);
        assert_eq!(
            cache.check(&a, client, &publish("x"), t0),
            Permission::Allow
        );
        // Only files are replaced by a reload.
        assert!(!a.replace("built_in_database", Acl::default()));
    }
}
