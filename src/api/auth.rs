//! Who may call the HTTP API: dashboard users (`POST /api/v5/login` gives
//! a bearer token) and API keys (`key:secret` over HTTP Basic), each with
//! a role, as EMQX has them.
//!
//! Users live in the replicated table [`USERS_TABLE`] (a password change
//! on one node holds on every node), hashed with a fresh salt; the default
//! user (`dashboard.default_username` / `default_password`) is a bootstrap
//! row that any real write replaces. A token is a JWT (HS256) signed with
//! a key derived from the cluster cookie, so any node checks a token made
//! by another; it names a fingerprint of the user's salt, so a password
//! change or a deleted user ends every token given before.
//! API keys live in the replicated table [`API_KEYS_TABLE`], keyed by the
//! key, with the secret hashed: created over the API or `ctl api_keys`
//! (the secret is shown once), and seeded from `api_key.bootstrap_file`.

use emqx_actors::authn::hash::HashAlgo;
use emqx_actors::replicated::ReplTables;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The replicated table of dashboard users.
pub const USERS_TABLE: &str = "dashboard_users";
/// The replicated table of API keys.
pub const API_KEYS_TABLE: &str = "api_keys";

/// What a caller may do (EMQX's roles).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything.
    Administrator,
    /// Only reads (`GET`).
    Viewer,
    /// Only `POST /api/v5/publish` and `/publish/bulk`.
    Publisher,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "administrator" => Some(Role::Administrator),
            "viewer" => Some(Role::Viewer),
            "publisher" => Some(Role::Publisher),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::Administrator => "administrator",
            Role::Viewer => "viewer",
            Role::Publisher => "publisher",
        }
    }

    /// Whether this role may make a request with `method` to `path`.
    pub fn allows(self, method: &axum::http::Method, path: &str) -> bool {
        match self {
            Role::Administrator => true,
            Role::Viewer => method == axum::http::Method::GET,
            Role::Publisher => {
                method == axum::http::Method::POST
                    && (path == "/api/v5/publish" || path == "/api/v5/publish/bulk")
            }
        }
    }
}

/// A dashboard user as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct User {
    pub password_hash: String,
    pub salt: String,
    pub role: Role,
    #[serde(default)]
    pub description: String,
}

impl User {
    fn new(password: &str, role: Role, description: String) -> Result<User, String> {
        let (password_hash, salt) = HashAlgo::default()
            .hash_new(password.as_bytes())
            .map_err(|e| e.0)?;
        Ok(User {
            password_hash,
            salt,
            role,
            description,
        })
    }

    /// The default user as every node of a cluster seeds it: its salt
    /// comes from the cookie and the user name instead of chance.
    fn seeded(cookie: &str, name: &str, password: &str) -> Result<User, String> {
        let mut h = Sha256::new();
        h.update(b"emqx-rs default user salt\0");
        h.update(cookie.as_bytes());
        h.update(b"\0");
        h.update(name.as_bytes());
        let salt: String = h.finalize()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let password_hash = HashAlgo::default()
            .hash_with(password.as_bytes(), &salt)
            .map_err(|e| e.0)?;
        Ok(User {
            password_hash,
            salt,
            role: Role::Administrator,
            description: "administrator".into(),
        })
    }

    fn verify(&self, password: &str) -> bool {
        HashAlgo::default().verify(password.as_bytes(), &self.password_hash, &self.salt)
    }

    /// Changes with every password set: ties tokens to the password.
    fn fingerprint(&self) -> String {
        let d = Sha256::digest(self.salt.as_bytes());
        d[..8].iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// An API key as stored (under its key).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiKey {
    /// What paths and listings call it.
    pub name: String,
    pub secret_hash: String,
    pub salt: String,
    pub role: Role,
    pub enable: bool,
    /// Unix seconds; `None`: never.
    pub expired_at: Option<u64>,
    /// Unix seconds.
    pub created_at: u64,
    #[serde(default)]
    pub desc: String,
}

impl ApiKey {
    pub fn expired(&self, now_s: u64) -> bool {
        self.expired_at.is_some_and(|t| t <= now_s)
    }
}

/// A key read from the bootstrap file.
#[derive(Debug, Clone)]
struct BootKey {
    secret: String,
    role: Role,
}

/// What can change about an API key.
#[derive(Debug, Default)]
pub struct KeyChange {
    pub role: Option<Role>,
    pub enable: Option<bool>,
    /// `Some(None)`: never expires.
    pub expired_at: Option<Option<u64>>,
    pub desc: Option<String>,
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub role: Role,
    /// Through an API key (not a login token).
    pub api_key: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    iat: u64,
    fp: String,
}

/// Why a request is refused: EMQX's error codes.
#[derive(Debug, PartialEq, Eq)]
pub enum Denied {
    /// 401 `BAD_TOKEN`: no credentials, or a token that is not ours.
    BadToken,
    /// 401 `TOKEN_TIME_OUT`.
    TokenExpired,
    /// 401 `BAD_API_KEY_OR_SECRET` (also a disabled or expired key).
    BadApiKey,
}

/// An API key's name: a letter, then letters, digits, `-` and `_` (EMQX's
/// rule), at most 256 bytes.
pub fn valid_key_name(s: &str) -> bool {
    s.len() <= 256
        && s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Users, API keys and the token key.
pub struct Auth {
    tables: Arc<ReplTables>,
    encoding: EncodingKey,
    decoding: DecodingKey,
    ttl: Duration,
}

impl Auth {
    /// Seeds the default user, reads the API key file.
    pub fn new(
        tables: Arc<ReplTables>,
        cookie: &str,
        default_user: (&str, &str),
        api_key_file: Option<&Path>,
        ttl: Duration,
    ) -> Result<Auth, String> {
        // Every node seeds the same row (same salt, so the same hash):
        // when nodes that each started alone join, the default user they
        // merge is one row, and a token given before the join stays good.
        let seed = User::seeded(cookie, default_user.0, default_user.1)?;
        let bytes = serde_json::to_vec(&seed).map_err(|e| e.to_string())?;
        tables
            .seed(USERS_TABLE, default_user.0, bytes)
            .map_err(|e| format!("cannot keep dashboard users: {e}"))?;
        let boot = match api_key_file {
            Some(p) => read_api_keys(p)?,
            None => HashMap::new(),
        };
        for (key, b) in boot {
            let (secret_hash, salt) = HashAlgo::default()
                .hash_new(b.secret.as_bytes())
                .map_err(|e| e.0)?;
            let row = ApiKey {
                name: key.clone(),
                secret_hash,
                salt,
                role: b.role,
                enable: true,
                expired_at: None,
                created_at: 0,
                desc: "from api_key.bootstrap_file".into(),
            };
            let bytes = serde_json::to_vec(&row).map_err(|e| e.to_string())?;
            tables
                .seed(API_KEYS_TABLE, &key, bytes)
                .map_err(|e| format!("cannot keep API keys: {e}"))?;
        }
        let mut h = Sha256::new();
        h.update(b"emqx-rs api token\0");
        h.update(cookie.as_bytes());
        let secret = h.finalize();
        let key_err = |e: jsonwebtoken::errors::Error| format!("API token key: {e}");
        let auth = Auth {
            tables,
            encoding: EncodingKey::from_secret(&secret).map_err(key_err)?,
            decoding: DecodingKey::from_secret(&secret).map_err(key_err)?,
            ttl,
        };
        if auth
            .user(default_user.0)
            .is_some_and(|u| u.verify("public"))
        {
            tracing::warn!(
                "the API user {} still has the default password: change it (POST /api/v5/users/{}/change_pwd)",
                default_user.0,
                default_user.0
            );
        }
        Ok(auth)
    }

    pub fn user(&self, name: &str) -> Option<User> {
        let raw = self.tables.table(USERS_TABLE)?.get(name)?;
        serde_json::from_slice(&raw).ok()
    }

    pub fn users(&self) -> Vec<(String, User)> {
        let Some(t) = self.tables.table(USERS_TABLE) else {
            return Vec::new();
        };
        t.list()
            .into_iter()
            .filter_map(|(k, v)| Some((k, serde_json::from_slice(&v).ok()?)))
            .collect()
    }

    /// Adds or replaces a user, cluster-wide.
    pub fn put_user(
        &self,
        name: &str,
        password: &str,
        role: Role,
        description: String,
    ) -> Result<(), String> {
        let u = User::new(password, role, description)?;
        let bytes = serde_json::to_vec(&u).map_err(|e| e.to_string())?;
        self.tables
            .write(USERS_TABLE, name, Some(bytes))
            .map_err(|e| e.to_string())
    }

    pub fn delete_user(&self, name: &str) -> Result<(), String> {
        self.tables
            .write(USERS_TABLE, name, None)
            .map_err(|e| e.to_string())
    }

    /// A token for `name` when `password` is right, and the user's role.
    pub fn login(&self, name: &str, password: &str) -> Option<(String, Role)> {
        let u = self.user(name)?;
        if !u.verify(password) {
            return None;
        }
        let now = emqx_actors::clock::now_ms() / 1000;
        let claims = Claims {
            sub: name.to_string(),
            iat: now,
            exp: now + self.ttl.as_secs(),
            fp: u.fingerprint(),
        };
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding).ok()?;
        Some((token, u.role))
    }

    /// Every API key, `(key, row)`, by name.
    pub fn api_keys(&self) -> Vec<(String, ApiKey)> {
        let Some(t) = self.tables.table(API_KEYS_TABLE) else {
            return Vec::new();
        };
        let mut v: Vec<(String, ApiKey)> = t
            .list()
            .into_iter()
            .filter_map(|(k, v)| Some((k, serde_json::from_slice(&v).ok()?)))
            .collect();
        v.sort_by(|a, b| a.1.name.cmp(&b.1.name));
        v
    }

    /// The API key named `name`, `(key, row)`.
    pub fn api_key(&self, name: &str) -> Option<(String, ApiKey)> {
        self.api_keys().into_iter().find(|(_, k)| k.name == name)
    }

    /// Creates an API key, cluster-wide: `(key, secret, row)`. The secret
    /// is kept only hashed: this is the one time it is seen.
    pub fn add_api_key(
        &self,
        name: &str,
        role: Role,
        expired_at: Option<u64>,
        desc: String,
    ) -> Result<(String, String, ApiKey), String> {
        if !valid_key_name(name) {
            return Err(format!(
                "name {name:?}: a letter, then letters, digits, '-' or '_' (at most 256)"
            ));
        }
        if self.api_key(name).is_some() {
            return Err(format!("an API key named {name:?} exists"));
        }
        let mut k = [0u8; 8];
        let mut sec = [0u8; 24];
        rand::fill(&mut k);
        rand::fill(&mut sec);
        let key = data_encoding::HEXLOWER.encode(&k);
        let secret = data_encoding::BASE64URL_NOPAD.encode(&sec);
        let (secret_hash, salt) = HashAlgo::default()
            .hash_new(secret.as_bytes())
            .map_err(|e| e.0)?;
        let row = ApiKey {
            name: name.to_string(),
            secret_hash,
            salt,
            role,
            enable: true,
            expired_at,
            created_at: emqx_actors::clock::now_ms() / 1000,
            desc,
        };
        self.put_key(&key, &row)?;
        Ok((key, secret, row))
    }

    fn put_key(&self, key: &str, row: &ApiKey) -> Result<(), String> {
        let bytes = serde_json::to_vec(row).map_err(|e| e.to_string())?;
        self.tables
            .write(API_KEYS_TABLE, key, Some(bytes))
            .map_err(|e| e.to_string())
    }

    /// Changes an API key: `(key, row)` after the change; `None` when there
    /// is no key named `name`.
    pub fn update_api_key(
        &self,
        name: &str,
        c: KeyChange,
    ) -> Option<Result<(String, ApiKey), String>> {
        let (key, mut row) = self.api_key(name)?;
        if let Some(r) = c.role {
            row.role = r;
        }
        if let Some(e) = c.enable {
            row.enable = e;
        }
        if let Some(t) = c.expired_at {
            row.expired_at = t;
        }
        if let Some(d) = c.desc {
            row.desc = d;
        }
        Some(self.put_key(&key, &row).map(|_| (key, row)))
    }

    /// Removes an API key; `false` when there is no key named `name`.
    pub fn delete_api_key(&self, name: &str) -> Result<bool, String> {
        let Some((key, _)) = self.api_key(name) else {
            return Ok(false);
        };
        self.tables
            .write(API_KEYS_TABLE, &key, None)
            .map(|_| true)
            .map_err(|e| e.to_string())
    }

    /// Who is calling, from the `Authorization` header.
    pub fn check(&self, header: Option<&str>) -> Result<Caller, Denied> {
        let h = header.ok_or(Denied::BadToken)?;
        if let Some(token) = h.strip_prefix("Bearer ") {
            let mut v = Validation::new(Algorithm::HS256);
            v.leeway = 0;
            v.required_spec_claims = ["exp", "sub"].iter().map(|s| s.to_string()).collect();
            let data =
                jsonwebtoken::decode::<Claims>(token.trim(), &self.decoding, &v).map_err(|e| {
                    match e.kind() {
                        jsonwebtoken::errors::ErrorKind::ExpiredSignature => Denied::TokenExpired,
                        _ => Denied::BadToken,
                    }
                })?;
            let c = data.claims;
            let u = self.user(&c.sub).ok_or(Denied::BadToken)?;
            if u.fingerprint() != c.fp {
                return Err(Denied::BadToken);
            }
            return Ok(Caller {
                name: c.sub,
                role: u.role,
                api_key: false,
            });
        }
        if let Some(b64) = h.strip_prefix("Basic ") {
            let raw = data_encoding::BASE64
                .decode(b64.trim().as_bytes())
                .map_err(|_| Denied::BadApiKey)?;
            let text = String::from_utf8(raw).map_err(|_| Denied::BadApiKey)?;
            let (key, secret) = text.split_once(':').ok_or(Denied::BadApiKey)?;
            let raw = self
                .tables
                .table(API_KEYS_TABLE)
                .and_then(|t| t.get(key))
                .ok_or(Denied::BadApiKey)?;
            let k: ApiKey = serde_json::from_slice(&raw).map_err(|_| Denied::BadApiKey)?;
            // Hash first, then refuse: a disabled key costs what a good one does.
            let right = HashAlgo::default().verify(secret.as_bytes(), &k.secret_hash, &k.salt);
            if !right || !k.enable || k.expired(emqx_actors::clock::now_ms() / 1000) {
                return Err(Denied::BadApiKey);
            }
            return Ok(Caller {
                name: k.name,
                role: k.role,
                api_key: true,
            });
        }
        Err(Denied::BadToken)
    }
}

/// `api_key.bootstrap_file`: one `key:secret[:role]` per line (role
/// `administrator` when absent); blank lines and `#` comments skipped.
fn read_api_keys(path: &Path) -> Result<HashMap<String, BootKey>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "api_key.bootstrap_file: cannot read {}: {e}",
            path.display()
        )
    })?;
    let mut keys = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |why: &str| {
            format!(
                "api_key.bootstrap_file: {}:{}: {why}",
                path.display(),
                i + 1
            )
        };
        let parts: Vec<&str> = line.split(':').collect();
        let (key, secret, role) = match parts.as_slice() {
            [k, s] => (*k, *s, Role::Administrator),
            [k, s, r] => (
                *k,
                *s,
                Role::parse(r).ok_or_else(|| {
                    bad(&format!(
                        "unknown role {r:?} (administrator, viewer or publisher)"
                    ))
                })?,
            ),
            _ => return Err(bad("expected key:secret or key:secret:role")),
        };
        if key.is_empty() || secret.is_empty() {
            return Err(bad("the key and the secret must not be empty"));
        }
        if keys
            .insert(
                key.to_string(),
                BootKey {
                    secret: secret.to_string(),
                    role,
                },
            )
            .is_some()
        {
            return Err(bad(&format!("key {key:?} is given twice")));
        }
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_limit_methods_and_paths() {
        use axum::http::Method;
        assert!(Role::Viewer.allows(&Method::GET, "/api/v5/clients"));
        assert!(!Role::Viewer.allows(&Method::DELETE, "/api/v5/clients/c"));
        assert!(Role::Publisher.allows(&Method::POST, "/api/v5/publish"));
        assert!(!Role::Publisher.allows(&Method::GET, "/api/v5/clients"));
        assert!(Role::Administrator.allows(&Method::DELETE, "/api/v5/clients/c"));
    }

    #[test]
    fn api_key_file_errors_name_the_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("keys");
        std::fs::write(&p, "# keys\nk1:s1\nk2:s2:viewer\n").expect("write");
        let k = read_api_keys(&p).expect("valid");
        assert_eq!(k.len(), 2);
        assert_eq!(k["k2"].role, Role::Viewer);
        std::fs::write(&p, "k1:s1\nk2:s2:root\n").expect("write");
        let e = read_api_keys(&p).unwrap_err();
        assert!(e.contains(":2: unknown role"), "{e}");
        std::fs::write(&p, "k1:s1\nk1:s3\n").expect("write");
        assert!(read_api_keys(&p).unwrap_err().contains("given twice"));
        std::fs::write(&p, "justakey\n").expect("write");
        assert!(read_api_keys(&p).unwrap_err().contains(":1: expected"));
    }
}
