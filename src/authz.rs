//! Authorization from the configuration: `authorization.sources` read
//! into the rules every channel checks (`emqx_mqtt::authz`), and `ctl acl
//! reload` reading the files again on a running node.

use crate::config::{AuthzSourceConfig, Config};
use emqx_actors::authz_db::{AuthzRules, DbRule, RuleAction, RuleOwner};
use emqx_actors::replicated::ReplTables;
use emqx_mqtt::acl::{Acl, Permission};
use emqx_mqtt::authz::{Authz, CacheSettings, DenyAction, Rules, Source};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// EMQX's shipped `acl.conf`, the rules of a node whose default file is
/// absent (the same file is installed as `etc/acl.conf`).
const SHIPPED_ACL: &str = include_str!("../etc/acl.conf");

/// Where the default source's file is: `acl.conf` in `$EMQX_ETC_DIR`, or
/// in `etc/` under the working directory (as EMQX's default
/// `${EMQX_ETC_DIR}/acl.conf`).
pub fn default_acl_path() -> PathBuf {
    let etc = std::env::var_os("EMQX_ETC_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("etc"));
    etc.join("acl.conf")
}

/// The rules in the file at `path`; when it is the default source's file
/// and absent, the shipped rules. Errors name the file, and the line and
/// column of a parse error.
fn read_rules(path: &Path, default: bool) -> Result<Acl, String> {
    let name = path.display();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if default && e.kind() == std::io::ErrorKind::NotFound => {
            tracing::info!(
                "authorization: {name} not found; using the default rules of EMQX's acl.conf"
            );
            SHIPPED_ACL.to_string()
        }
        Err(e) => return Err(format!("cannot read {name}: {e}")),
    };
    Acl::parse(&text).map_err(|e| format!("{name}: {e}"))
}

/// The rules of one configured source; errors are prefixed with its key.
fn load(src: &AuthzSourceConfig) -> Result<(String, Acl), String> {
    let (path, default) = match &src.path {
        Some(p) => (p.clone(), false),
        None => (default_acl_path(), true),
    };
    let acl = read_rules(&path, default).map_err(|e| format!("{}.path: {e}", src.key))?;
    Ok((path.display().to_string(), acl))
}

/// The node's authorization from `authorization.*`, and the built-in
/// database's rules if a source keeps them there. Without `tables`
/// (`check_config`) a built-in database source is left out: it has
/// nothing to read at start.
pub fn build(
    cfg: &Config,
    tables: Option<&Arc<ReplTables>>,
) -> Result<(Authz, Option<Arc<AuthzRules>>), String> {
    let a = &cfg.authorization;
    let mut sources = Vec::new();
    let mut db = None;
    let mut seen_db = false;
    for src in a.sources.iter().filter(|s| s.enable) {
        if let Some(max_rules) = src.built_in_database {
            if std::mem::replace(&mut seen_db, true) {
                return Err(format!(
                    "{}.type: only one built_in_database source may be configured",
                    src.key
                ));
            }
            let Some(tables) = tables else { continue };
            let rules = Arc::new(
                AuthzRules::new(tables.clone(), max_rules)
                    .map_err(|e| format!("{}: {e}", src.key))?,
            );
            db = Some(rules.clone());
            sources.push(Source {
                name: "built_in_database".into(),
                rules: Rules::Store(rules),
            });
            continue;
        }
        let (name, acl) = load(src)?;
        sources.push(Source {
            name,
            rules: Rules::File(acl),
        });
    }
    let authz = Authz::new(
        sources,
        if a.no_match_allow {
            Permission::Allow
        } else {
            Permission::Deny
        },
        if a.deny_disconnect {
            DenyAction::Disconnect
        } else {
            DenyAction::Ignore
        },
        CacheSettings {
            enable: a.cache_enable,
            max_size: a.cache_max_size,
            ttl: a.cache_ttl,
        },
    );
    Ok((authz, db))
}

/// Reads every source's file again and puts its rules in force. A file
/// that cannot be read or does not parse is reported and its rules stay as
/// they were; the others are reloaded. Returns whether all were, and one
/// line per source.
pub fn reload(authz: &Authz) -> (bool, Vec<String>) {
    let mut ok = true;
    let mut lines = Vec::new();
    for s in authz.sources().iter() {
        if !matches!(s.rules, Rules::File(_)) {
            continue;
        }
        let path = PathBuf::from(&s.name);
        match read_rules(&path, path == default_acl_path()) {
            Ok(acl) => {
                let n = acl.len();
                authz.replace(&s.name, acl);
                lines.push(format!("{}: {n} rules loaded", s.name));
            }
            Err(e) => {
                ok = false;
                lines.push(format!("{e}; the rules in force are kept"));
            }
        }
    }
    if lines.is_empty() {
        lines.push("no authorization source is enabled".into());
    }
    (ok, lines)
}

/// `ctl acl rules ...`: the built-in database source's rules (ours: EMQX
/// offers them over its HTTP API only). `(exit code, output)`, or `None`
/// for a command that does not exist.
pub fn ctl_rules(rules: Option<&AuthzRules>, w: &[&str]) -> Option<(i32, String)> {
    let Some(rules) = rules else {
        return Some((
            1,
            "no built_in_database authorization source is configured (authorization.sources = [{type = built_in_database}])\n".into(),
        ));
    };
    let owner = |kind: &str, who: Option<&str>| -> Result<RuleOwner, String> {
        match (kind, who) {
            ("all", None) => Ok(RuleOwner::All),
            ("clientid", Some(w)) => Ok(RuleOwner::ClientId(w.into())),
            ("username", Some(w)) => Ok(RuleOwner::Username(w.into())),
            _ => Err(format!(
                "expected clientid <ClientId>, username <Username> or all, got {kind:?}"
            )),
        }
    };
    let fail = |e: String| Some((1, format!("{e}\n")));
    match w {
        ["list"] => {
            let out: String = rules
                .list()
                .iter()
                .flat_map(|(o, rs)| rs.iter().map(move |r| format!("{o}: {r}\n")))
                .collect();
            Some((0, out))
        }
        ["add", rest @ ..] => {
            let (owner, rest) = match rest {
                ["all", r @ ..] => (owner("all", None), r),
                [kind, who, r @ ..] => (owner(kind, Some(who)), r),
                _ => return None,
            };
            let owner = match owner {
                Ok(o) => o,
                Err(e) => return fail(e),
            };
            let rule = match parse_rule(rest) {
                Ok(r) => r,
                Err(e) => return fail(e),
            };
            match rules.add(&owner, &[rule]) {
                Ok(n) => Some((0, format!("{owner}: {n} rule(s)\n"))),
                Err(e) => fail(e.to_string()),
            }
        }
        ["del", "all"] | ["del", _, _] => {
            let o = match w {
                [_, "all"] => owner("all", None),
                [_, kind, who] => owner(kind, Some(who)),
                _ => return None,
            };
            match o.and_then(|o| rules.delete(&o).map_err(|e| e.to_string())) {
                Ok(()) => Some((0, "ok\n".into())),
                Err(e) => fail(e),
            }
        }
        _ => None,
    }
}

/// `<allow|deny> <publish|subscribe|all> <Topic> [qos=0,1,2]
/// [retain=true|false]`.
fn parse_rule(w: &[&str]) -> Result<DbRule, String> {
    let [perm, action, topic, opts @ ..] = w else {
        return Err(
            "expected <allow|deny> <publish|subscribe|all> <Topic> [qos=..] [retain=..]".into(),
        );
    };
    let allow = match *perm {
        "allow" => true,
        "deny" => false,
        other => return Err(format!("expected allow or deny, got {other:?}")),
    };
    let action = match *action {
        "publish" => RuleAction::Publish,
        "subscribe" => RuleAction::Subscribe,
        "all" => RuleAction::All,
        other => return Err(format!("expected publish, subscribe or all, got {other:?}")),
    };
    if topic.is_empty() {
        return Err("the topic must not be empty".into());
    }
    let mut rule = DbRule {
        allow,
        action,
        topic: topic.to_string(),
        qos: None,
        retain: None,
    };
    for o in opts {
        match o.split_once('=') {
            Some(("qos", v)) => {
                let q: Result<Vec<u8>, _> = v
                    .split(',')
                    .map(|q| match q.trim() {
                        "0" => Ok(0),
                        "1" => Ok(1),
                        "2" => Ok(2),
                        other => Err(format!("bad qos {other:?} (0, 1 or 2)")),
                    })
                    .collect();
                rule.qos = Some(q?);
            }
            Some(("retain", "true")) => rule.retain = Some(true),
            Some(("retain", "false")) => rule.retain = Some(false),
            Some(("retain", "all")) => rule.retain = None,
            _ => {
                return Err(format!(
                    "unknown option {o:?} (qos=0,1,2 or retain=true|false|all)"
                ))
            }
        }
    }
    Ok(rule)
}
