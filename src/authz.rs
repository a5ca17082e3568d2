//! Authorization from the configuration: `authorization.sources` read
//! into the rules every channel checks (`emqx_mqtt::authz`), and `ctl acl
//! reload` reading the files again on a running node.

use crate::config::{AuthzSourceConfig, Config};
use emqx_mqtt::acl::{Acl, Permission};
use emqx_mqtt::authz::{Authz, CacheSettings, DenyAction, Source};
use std::path::{Path, PathBuf};

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

/// The node's authorization from `authorization.*`.
pub fn build(cfg: &Config) -> Result<Authz, String> {
    let a = &cfg.authorization;
    let mut sources = Vec::new();
    for src in a.sources.iter().filter(|s| s.enable) {
        let (name, acl) = load(src)?;
        sources.push(Source { name, acl });
    }
    Ok(Authz::new(
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
    ))
}

/// Reads every source's file again and puts its rules in force. A file
/// that cannot be read or does not parse is reported and its rules stay as
/// they were; the others are reloaded. Returns whether all were, and one
/// line per source.
pub fn reload(authz: &Authz) -> (bool, Vec<String>) {
    let mut ok = true;
    let mut lines = Vec::new();
    for s in authz.sources().iter() {
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
