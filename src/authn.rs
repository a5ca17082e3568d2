//! Authentication from the configuration: the `authentication` chain
//! built over the node's replicated tables, the built-in database's
//! bootstrap file (EMQX's `auth-built-in-db-bootstrap.csv`), and the
//! `ctl users` commands.

use crate::config::{AuthnConfig, AuthnKind, Config, JwtConfig, JwtKeys};
use emqx_actors::authn::hash::HashAlgo;
use emqx_actors::authn::jwt::{ClaimCheck, Jwks, JwtAuthn, Key, Keys, TokenFrom};
use emqx_actors::authn::{Authenticator, Authn, UserRecord, Users};
use emqx_actors::replicated::ReplTables;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The longest password accepted: the most an MQTT CONNECT can carry.
pub const MAX_PASSWORD: usize = 65_535;

/// Where the default bootstrap file is: in `$EMQX_ETC_DIR`, or `etc/`.
pub fn default_bootstrap_path() -> PathBuf {
    let etc = std::env::var_os("EMQX_ETC_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("etc"));
    etc.join("auth-built-in-db-bootstrap.csv")
}

/// One row of a bootstrap file.
#[derive(Debug, Clone, PartialEq)]
pub struct BootstrapUser {
    pub user_id: String,
    pub record: UserRecord,
}

/// Reads a bootstrap file: `user_id,password,is_superuser` (plain: the
/// passwords are hashed with `algo`) or `user_id,password_hash,salt,
/// is_superuser` (hash: stored as they are, made with `algo`). Columns
/// are found by the header; `is_superuser` may be left out (false).
/// Errors name the file and the line.
pub fn read_bootstrap(
    path: &Path,
    hashed: bool,
    algo: HashAlgo,
) -> Result<Vec<BootstrapUser>, String> {
    let name = path.display();
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read {name}: {e}"))?;
    parse_bootstrap(&name.to_string(), file, hashed, algo)
}

/// [`read_bootstrap`] of any reader; `name` names it in errors.
pub fn parse_bootstrap(
    name: &str,
    input: impl std::io::Read,
    hashed: bool,
    algo: HashAlgo,
) -> Result<Vec<BootstrapUser>, String> {
    let mut rd = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(input);
    let headers = rd
        .headers()
        .map_err(|e| format!("{name}: line 1: {e}"))?
        .clone();
    let col = |h: &str| headers.iter().position(|x| x == h);
    let need = |h: &str| {
        col(h).ok_or_else(|| {
            format!(
                "{name}: line 1: no {h:?} column (the header is {:?})",
                headers.iter().collect::<Vec<_>>().join(",")
            )
        })
    };
    let id_col = need("user_id")?;
    let (pw_col, salt_col) = if hashed {
        (need("password_hash")?, Some(need("salt")?))
    } else {
        (need("password")?, None)
    };
    let su_col = col("is_superuser");
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for row in rd.records() {
        let line = |r: &csv::StringRecord| r.position().map(|p| p.line()).unwrap_or(0);
        let row = row.map_err(|e| {
            let l = e.position().map(|p| p.line()).unwrap_or(0);
            format!("{name}: line {l}: {e}")
        })?;
        let l = line(&row);
        let field = |i: usize| row.get(i).unwrap_or("");
        let user_id = field(id_col).to_string();
        if user_id.is_empty() {
            return Err(format!("{name}: line {l}: empty user_id"));
        }
        if !seen.insert(user_id.clone()) {
            return Err(format!("{name}: line {l}: user {user_id:?} appears twice"));
        }
        let secret = field(pw_col);
        if secret.len() > MAX_PASSWORD {
            return Err(format!(
                "{name}: line {l}: password of {user_id:?} is {} bytes, more than an MQTT password can be ({MAX_PASSWORD})",
                secret.len()
            ));
        }
        let is_superuser = match su_col.map(field) {
            None | Some("") | Some("false") => false,
            Some("true") => true,
            Some(other) => {
                return Err(format!(
                    "{name}: line {l}: is_superuser must be true or false, got {other:?}"
                ))
            }
        };
        let (password_hash, salt) = if hashed {
            (
                secret.to_string(),
                salt_col.map(field).unwrap_or("").to_string(),
            )
        } else {
            algo.hash_new(secret.as_bytes())
                .map_err(|e| format!("{name}: line {l}: {e}"))?
        };
        out.push(BootstrapUser {
            user_id,
            record: UserRecord {
                password_hash,
                salt,
                is_superuser,
                algo,
            },
        });
    }
    Ok(out)
}

/// The bootstrap users of one authenticator, if it has a file. The default
/// file is optional; a file the configuration names must be there.
fn bootstrap_of(a: &AuthnConfig) -> Result<Vec<BootstrapUser>, String> {
    let AuthnKind::BuiltInDb {
        algo,
        bootstrap_file,
        bootstrap_hash,
        ..
    } = &a.kind
    else {
        return Ok(Vec::new());
    };
    let (path, default) = match bootstrap_file {
        Some(p) => (p.clone(), false),
        None => (default_bootstrap_path(), true),
    };
    if default && !path.exists() {
        return Ok(Vec::new());
    }
    read_bootstrap(&path, *bootstrap_hash, *algo)
        .map_err(|e| format!("{}.bootstrap_file: {e}", a.key))
}

/// Checks what `build` reads (at `check_config` and before start).
pub fn check(cfg: &Config) -> Result<(), String> {
    for a in cfg.authentication.iter().filter(|a| a.enable) {
        bootstrap_of(a)?;
        if let AuthnKind::Jwt(j) = &a.kind {
            jwt_keys(&a.key, j)?;
        }
    }
    Ok(())
}

/// A JWT authenticator's keys: the secret or public key read and checked
/// now, or the JWKS endpoint (fetched once the node runs).
fn jwt_keys(key: &str, j: &JwtConfig) -> Result<Keys, String> {
    Ok(match &j.keys {
        JwtKeys::Hmac { secret, base64 } => {
            Keys::Fixed(Key::hmac(secret, *base64).map_err(|e| format!("{key}.secret: {e}"))?)
        }
        JwtKeys::PublicKey(pk) => {
            let pem = if pk.trim_start().starts_with("-----BEGIN") {
                pk.as_bytes().to_vec()
            } else {
                std::fs::read(pk).map_err(|e| format!("{key}.public_key: cannot read {pk}: {e}"))?
            };
            Keys::Fixed(Key::public_pem(&pem).map_err(|e| format!("{key}.public_key: {e}"))?)
        }
        JwtKeys::Jwks {
            endpoint,
            refresh_interval,
            headers,
            ssl,
        } => {
            let tls = ssl.client_tls(&format!("{key}.ssl"));
            if let Some(t) = &tls {
                // Reads the files now, so a bad path stops the start.
                t.client_config()?;
            }
            Keys::Jwks(Jwks::new(
                endpoint.clone(),
                headers.clone(),
                tls,
                *refresh_interval,
            ))
        }
    })
}

/// The chain, with the bootstrap users laid into the tables.
pub fn build(cfg: &Config, tables: &Arc<ReplTables>) -> Result<Authn, String> {
    let mut chain = Vec::new();
    for a in cfg.authentication.iter().filter(|a| a.enable) {
        let (user_id_type, algo) = match &a.kind {
            AuthnKind::BuiltInDb {
                user_id_type, algo, ..
            } => (user_id_type, algo),
            AuthnKind::Jwt(j) => {
                let keys = jwt_keys(&a.key, j)?;
                if let Keys::Jwks(jwks) = &keys {
                    jwks.start();
                }
                chain.push(Authenticator::Jwt(JwtAuthn {
                    from: if j.from_username {
                        TokenFrom::Username
                    } else {
                        TokenFrom::Password
                    },
                    keys,
                    verify_claims: j
                        .verify_claims
                        .iter()
                        .map(|(name, template)| ClaimCheck {
                            name: name.clone(),
                            template: template.clone(),
                        })
                        .collect(),
                    acl_claim_name: j.acl_claim_name.clone(),
                    disconnect_after_expire: j.disconnect_after_expire,
                }));
                continue;
            }
        };
        let users = Users::new(tables.clone()).map_err(|e| e.to_string())?;
        let boot = bootstrap_of(a)?;
        let n = boot.len();
        for u in boot {
            users
                .seed(&u.user_id, &u.record)
                .map_err(|e| format!("{}: {e}", a.key))?;
        }
        if n > 0 {
            tracing::info!("authentication: {n} user(s) from the bootstrap file");
        }
        chain.push(Authenticator::BuiltInDb {
            user_id_type: *user_id_type,
            algo: *algo,
            users,
        });
    }
    Ok(Authn { chain })
}

/// `ctl users ...` on the node: `(exit code, output)`, or `None` for a
/// command that does not exist (the caller prints the usage).
pub fn ctl(authn: &Authn, args: &[String]) -> Option<(i32, String)> {
    let Some((users, algo)) = authn.users() else {
        return Some((
            1,
            "no built-in database authenticator is configured (authentication = [{mechanism = password_based, backend = built_in_database}])\n".into(),
        ));
    };
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let too_long = |p: &str| p.len() > MAX_PASSWORD;
    Some(match a.as_slice() {
        ["list"] => {
            let mut out = String::new();
            for (id, u) in users.list() {
                out.push_str(&format!(
                    "{id} (is_superuser={}, hash={})\n",
                    u.is_superuser,
                    u.algo.name()
                ));
            }
            (0, out)
        }
        ["add", id, pw] | ["add", id, pw, "--superuser"] => {
            if too_long(pw) {
                return Some((1, format!("password longer than {MAX_PASSWORD} bytes\n")));
            }
            let su = a.len() == 4;
            match users.add(id, pw.as_bytes(), su, algo) {
                Ok(()) => (0, "ok\n".into()),
                Err(e) => (1, format!("{e}\n")),
            }
        }
        ["passwd", id, pw] => {
            if too_long(pw) {
                return Some((1, format!("password longer than {MAX_PASSWORD} bytes\n")));
            }
            match users.update(id, Some(pw.as_bytes()), None, algo) {
                Ok(()) => (0, "ok\n".into()),
                Err(e) => (1, format!("{e}\n")),
            }
        }
        ["superuser", id, v @ ("true" | "false")] => {
            match users.update(id, None, Some(*v == "true"), algo) {
                Ok(()) => (0, "ok\n".into()),
                Err(e) => (1, format!("{e}\n")),
            }
        }
        ["del", id] => match users.delete(id) {
            Ok(()) => (0, "ok\n".into()),
            Err(e) => (1, format!("{e}\n")),
        },
        _ => return None,
    })
}

/// Used by `users` with a password of `-`: the password from stdin (one
/// line, its newline removed), so it stays out of the process list.
pub fn password_from_stdin() -> Result<String, String> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| format!("cannot read the password from stdin: {e}"))?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, text: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("emqx-authn-{}-{name}", std::process::id()));
        std::fs::write(&p, text).expect("write");
        p
    }

    #[test]
    fn bootstrap_files_are_read_by_header_and_errors_name_the_line() {
        let algo = HashAlgo::default();
        let p = file(
            "plain.csv",
            "user_id,password,is_superuser\nalice,pw1,true\nbob,pw2,false\n",
        );
        let users = read_bootstrap(&p, false, algo).expect("read");
        assert_eq!(users.len(), 2);
        assert!(users[0].record.is_superuser && !users[1].record.is_superuser);
        assert!(algo.verify(
            b"pw1",
            &users[0].record.password_hash,
            &users[0].record.salt
        ));
        // The hash form keeps hash and salt as written; columns by header.
        let p = file(
            "hash.csv",
            "is_superuser,salt,password_hash,user_id\nfalse,s1,abcd,carol\n",
        );
        let users = read_bootstrap(&p, true, algo).expect("read");
        assert_eq!(
            (
                users[0].record.password_hash.as_str(),
                users[0].record.salt.as_str()
            ),
            ("abcd", "s1")
        );
        for (text, want) in [
            ("user_id,password,is_superuser\nalice,pw\n", "line 2"),
            (
                "user_id,password,is_superuser\nalice,pw,true\nbob,pw,true,extra\n",
                "line 3",
            ),
            (
                "user_id,password,is_superuser\nalice,pw,yes\n",
                "line 2: is_superuser",
            ),
            (
                "user_id,password\nalice,pw\nalice,pw\n",
                "line 3: user \"alice\" appears twice",
            ),
            ("user,password\nalice,pw\n", "line 1: no \"user_id\" column"),
            ("user_id,password\n,pw\n", "line 2: empty user_id"),
        ] {
            let p = file("bad.csv", text);
            let e = read_bootstrap(&p, false, algo).expect_err(text);
            assert!(
                e.contains(&p.display().to_string()) && e.contains(want),
                "{text}: {e}"
            );
        }
        let big = format!("user_id,password\nalice,{}\n", "x".repeat(1 << 20));
        let p = file("big.csv", &big);
        let e = read_bootstrap(&p, false, algo).expect_err("1 MB password");
        assert!(
            e.contains("line 2") && e.contains("more than an MQTT password"),
            "{e}"
        );
        let _ = std::fs::remove_file(p);
    }
}
