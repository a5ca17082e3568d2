//! The JWT authenticator (EMQX's `mechanism = jwt`): the client sends a
//! JSON Web Token as its password (or username); it is accepted when its
//! signature verifies with the configured secret, public key or one of
//! the keys of a JWKS endpoint, and its claims hold.
//!
//! EMQX's outcomes, kept so an EMQX user's clients see the same codes:
//! - no token, not a JWT, or no key verifies it: *ignore* (the next
//!   authenticator decides; at the end of the chain the client is refused
//!   as not authorized);
//! - `exp` passed, `nbf` not reached, a `verify_claims` claim missing or
//!   different, a malformed `acl` claim: *deny* (bad username or
//!   password);
//! - otherwise *allow*, with `is_superuser` and the `acl` claim's rules
//!   (checked before every authorization source until `exp`), and with
//!   `disconnect_after_expire` the connection closed at `exp`.
//!
//! Signatures are checked by the `jsonwebtoken` crate; `alg = none` and
//! an algorithm of another family than the key are refused by it.

use emqx_mqtt::acl::{Acl, AuthInfo, Permission, RuleSpec, TopicSpec};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use parking_lot::RwLock;
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::Duration;

/// What the authenticator says of a client.
#[derive(Debug, Clone)]
pub enum Outcome {
    Allow(AuthInfo),
    /// Bad username or password (0x86).
    Deny,
    /// Not ours to decide: the next authenticator does.
    Ignore,
}

/// Where the token is (`from`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenFrom {
    Password,
    Username,
}

/// A configured key: its family decides which `alg` values it verifies.
#[derive(Clone)]
pub struct Key(DecodingKey);

/// Why a key in the configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("secret is not valid base64")]
    Base64,
    #[error("not a PEM RSA, EC (P-256, P-384) or Ed25519 public key")]
    PublicKey,
}

impl Key {
    /// `algorithm = hmac-based`: `secret`, base64-decoded when
    /// `secret_base64_encoded`.
    pub fn hmac(secret: &str, base64: bool) -> Result<Key, KeyError> {
        let k = if base64 {
            DecodingKey::from_base64_secret(secret.trim()).map_err(|_| KeyError::Base64)?
        } else {
            DecodingKey::from_secret(secret.as_bytes()).map_err(|_| KeyError::Base64)?
        };
        Ok(Key(k))
    }

    /// `algorithm = public-key`: a PEM public key (RSA, EC or Ed25519).
    pub fn public_pem(pem: &[u8]) -> Result<Key, KeyError> {
        DecodingKey::from_rsa_pem(pem)
            .or_else(|_| DecodingKey::from_ec_pem(pem))
            .or_else(|_| DecodingKey::from_ed_pem(pem))
            .map(Key)
            .map_err(|_| KeyError::PublicKey)
    }

    /// Verifies `token`'s signature; its claims when it does.
    fn verify(&self, token: &str, alg: Algorithm) -> Option<Map<String, Value>> {
        let family = self.0.family();
        if alg.family() != family {
            return None;
        }
        let mut v = Validation::new_for_family(family);
        // The claims are EMQX's business below, not the crate's.
        v.required_spec_claims.clear();
        v.validate_exp = false;
        v.validate_nbf = false;
        v.validate_aud = false;
        v.leeway = 0;
        jsonwebtoken::decode::<Map<String, Value>>(token, &self.0, &v)
            .ok()
            .map(|d| d.claims)
    }
}

/// Where the keys come from.
pub enum Keys {
    /// One secret or public key from the configuration.
    Fixed(Key),
    /// The keys of a JWKS endpoint, refreshed in the background.
    Jwks(Arc<Jwks>),
}

/// A JWKS endpoint and the keys last fetched from it.
pub struct Jwks {
    pub endpoint: String,
    pub headers: Vec<(String, String)>,
    pub tls: Option<emqx_discovery::tls::TlsOptions>,
    pub refresh_interval: Duration,
    keys: RwLock<Arc<Vec<Key>>>,
}

/// How long one fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// How soon a failed fetch is retried while no key is known.
const RETRY_EMPTY: Duration = Duration::from_secs(5);

impl Jwks {
    pub fn new(
        endpoint: String,
        headers: Vec<(String, String)>,
        tls: Option<emqx_discovery::tls::TlsOptions>,
        refresh_interval: Duration,
    ) -> Arc<Jwks> {
        Arc::new(Jwks {
            endpoint,
            headers,
            tls,
            refresh_interval,
            keys: RwLock::new(Arc::new(Vec::new())),
        })
    }

    fn keys(&self) -> Arc<Vec<Key>> {
        self.keys.read().clone()
    }

    /// Fetches the key set once and installs it; how many keys it holds.
    pub async fn refresh(&self) -> Result<usize, String> {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .chain([("Accept", "application/json")])
            .collect();
        let (status, body) =
            emqx_discovery::http::get(&self.endpoint, &headers, self.tls.as_ref(), FETCH_TIMEOUT)
                .await?;
        if status != 200 {
            return Err(format!("HTTP status {status}"));
        }
        let set: jsonwebtoken::jwk::JwkSet =
            serde_json::from_slice(&body).map_err(|e| format!("not a JWK set: {e}"))?;
        let keys: Vec<Key> = set
            .keys
            .iter()
            .filter_map(|j| DecodingKey::from_jwk(j).ok().map(Key))
            .collect();
        if keys.is_empty() && !set.keys.is_empty() {
            return Err(format!("none of its {} keys is usable", set.keys.len()));
        }
        let n = keys.len();
        *self.keys.write() = Arc::new(keys);
        Ok(n)
    }

    /// Keeps the keys fresh: fetches now, then every `refresh_interval`
    /// (every few seconds while none was ever fetched). A failed fetch
    /// keeps the keys already known.
    pub fn start(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(j) = weak.upgrade() else { return };
                let wait = match j.refresh().await {
                    Ok(n) => {
                        tracing::debug!(endpoint = %j.endpoint, "JWKS: {n} key(s)");
                        j.refresh_interval
                    }
                    Err(e) => {
                        tracing::warn!(endpoint = %j.endpoint, "JWKS fetch failed: {e}");
                        if j.keys().is_empty() {
                            RETRY_EMPTY.min(j.refresh_interval)
                        } else {
                            j.refresh_interval
                        }
                    }
                };
                drop(j);
                tokio::time::sleep(wait).await;
            }
        });
    }
}

/// A `verify_claims` entry: the claim must be there and equal the value
/// with `${clientid}` and `${username}` filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimCheck {
    pub name: String,
    pub template: String,
}

/// The JWT authenticator.
pub struct JwtAuthn {
    pub from: TokenFrom,
    pub keys: Keys,
    pub verify_claims: Vec<ClaimCheck>,
    pub acl_claim_name: String,
    pub disconnect_after_expire: bool,
}

impl JwtAuthn {
    /// Checks the token of a client (`now_s`: the wall clock in seconds).
    pub fn check(
        &self,
        client_id: &str,
        username: Option<&str>,
        password: Option<&[u8]>,
        now_s: f64,
    ) -> Outcome {
        let token = match self.from {
            TokenFrom::Password => password.and_then(|p| std::str::from_utf8(p).ok()),
            TokenFrom::Username => username,
        };
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return Outcome::Ignore;
        };
        // Not a JWT, or an algorithm the crate does not know (`none`
        // among them): no key can verify it.
        let Ok(header) = jsonwebtoken::decode_header(token) else {
            return Outcome::Ignore;
        };
        let fetched;
        let keys: &[Key] = match &self.keys {
            Keys::Fixed(k) => std::slice::from_ref(k),
            Keys::Jwks(j) => {
                fetched = j.keys();
                &fetched
            }
        };
        let Some(claims) = keys.iter().find_map(|k| k.verify(token, header.alg)) else {
            return Outcome::Ignore;
        };
        match self.accept(claims, client_id, username, now_s) {
            Ok(info) => Outcome::Allow(info),
            Err(why) => {
                // The token itself is never logged.
                tracing::info!(client_id, "JWT refused: {why}");
                Outcome::Deny
            }
        }
    }

    /// The claims of a verified token: checked, then turned into what the
    /// client may do.
    fn accept(
        &self,
        claims: Map<String, Value>,
        client_id: &str,
        username: Option<&str>,
        now_s: f64,
    ) -> Result<AuthInfo, String> {
        let exp = number_claim(&claims, "exp")?;
        let nbf = number_claim(&claims, "nbf")?;
        if let Some(exp) = exp {
            if now_s >= exp {
                return Err("expired (exp)".into());
            }
        }
        if let Some(nbf) = nbf {
            if nbf > now_s {
                return Err("not valid yet (nbf)".into());
            }
        }
        for c in &self.verify_claims {
            let want = c
                .template
                .replace("${clientid}", client_id)
                .replace("${username}", username.unwrap_or(""));
            let ok = match claims.get(&c.name) {
                None => return Err(format!("claim {:?} missing", c.name)),
                Some(Value::String(s)) => *s == want,
                // `aud` may be a list holding the expected audience.
                Some(Value::Array(l)) if c.name == "aud" => {
                    l.iter().any(|v| v.as_str() == Some(want.as_str()))
                }
                Some(_) => false,
            };
            if !ok {
                return Err(format!("claim {:?} does not match", c.name));
            }
        }
        let superuser = truthy(claims.get("is_superuser"));
        let exp_ms = exp.map(|e| (e * 1000.0) as u64);
        let mut info = AuthInfo {
            superuser,
            ..AuthInfo::default()
        };
        if let Some(rules) = claims.get(&self.acl_claim_name) {
            info.acl = Some(Arc::new(parse_acl_claim(rules)?));
            info.acl_expire_ms = exp_ms;
        }
        if self.disconnect_after_expire {
            info.expire_at_ms = exp_ms;
        }
        Ok(info)
    }
}

/// `is_superuser` as EMQX reads it: true, 1, "true" or "1".
fn truthy(v: Option<&Value>) -> bool {
    match v {
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_u64() == Some(1),
        Some(Value::String(s)) => s == "true" || s == "1",
        _ => false,
    }
}

/// `exp` / `nbf` as a number (EMQX also takes a numeric string); absent
/// is fine, anything else is refused.
fn number_claim(claims: &Map<String, Value>, name: &str) -> Result<Option<f64>, String> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(Value::String(s)) => s
            .trim()
            .parse::<f64>()
            .map(Some)
            .map_err(|_| format!("claim {name:?} is not a number")),
        Some(_) => Err(format!("claim {name:?} is not a number")),
    }
}

/// The `acl` claim, in either of EMQX's forms:
/// - `{"pub": [..], "sub": [..], "all": [..]}`: those filters allowed for
///   publishing, subscribing or both, everything else denied;
/// - `[{"permission", "action", "topic" | "topics", "qos", "retain"}]`:
///   rules tried in order, the authorization sources deciding when none
///   matches. A topic `"eq t"` is matched exactly.
pub fn parse_acl_claim(v: &Value) -> Result<Acl, String> {
    match v {
        Value::Object(m) => {
            let mut specs = Vec::new();
            for (key, publish, subscribe) in [
                ("pub", true, false),
                ("sub", false, true),
                ("all", true, true),
            ] {
                let topics = match m.get(key) {
                    None => continue,
                    Some(Value::Array(l)) => l
                        .iter()
                        .map(|t| t.as_str().map(topic_spec))
                        .collect::<Option<Vec<_>>>()
                        .ok_or_else(|| format!("acl.{key}: expected a list of strings"))?,
                    Some(_) => return Err(format!("acl.{key}: expected a list of strings")),
                };
                specs.push(RuleSpec {
                    permission: Permission::Allow,
                    publish,
                    subscribe,
                    qos: None,
                    retain: None,
                    topics: Some(topics),
                });
            }
            specs.push(RuleSpec {
                permission: Permission::Deny,
                publish: true,
                subscribe: true,
                qos: None,
                retain: None,
                topics: None,
            });
            Ok(Acl::from_specs(specs))
        }
        Value::Array(rules) => rules
            .iter()
            .enumerate()
            .map(|(i, r)| rule_spec(r).map_err(|e| format!("acl[{i}]: {e}")))
            .collect::<Result<Vec<_>, _>>()
            .map(Acl::from_specs),
        _ => Err("acl: expected an object or a list of rules".into()),
    }
}

fn topic_spec(t: &str) -> TopicSpec {
    TopicSpec::parse(t)
}

fn rule_spec(r: &Value) -> Result<RuleSpec, String> {
    let m = r.as_object().ok_or("expected an object")?;
    let permission = match m.get("permission").and_then(Value::as_str) {
        Some("allow") => Permission::Allow,
        Some("deny") => Permission::Deny,
        _ => return Err("permission must be allow or deny".into()),
    };
    let (publish, subscribe) = match m.get("action").and_then(Value::as_str) {
        Some("publish" | "pub") => (true, false),
        Some("subscribe" | "sub") => (false, true),
        Some("all") => (true, true),
        _ => return Err("action must be publish, subscribe or all".into()),
    };
    let topics = match (m.get("topic"), m.get("topics")) {
        (Some(Value::String(t)), _) => vec![topic_spec(t)],
        (None, Some(Value::Array(l))) => l
            .iter()
            .map(|t| t.as_str().map(topic_spec))
            .collect::<Option<Vec<_>>>()
            .ok_or("topics must be a list of strings")?,
        _ => return Err("topic (a string) or topics (a list) required".into()),
    };
    let qos = match m.get("qos") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(vec![qos_level(n.as_u64())?]),
        Some(Value::String(s)) => Some(
            s.split(',')
                .map(|q| qos_level(q.trim().parse::<u64>().ok()))
                .collect::<Result<Vec<_>, _>>()?,
        ),
        Some(Value::Array(l)) => Some(
            l.iter()
                .map(|q| match q {
                    Value::Number(n) => qos_level(n.as_u64()),
                    Value::String(s) => qos_level(s.trim().parse::<u64>().ok()),
                    _ => Err("qos must be 0, 1 or 2".into()),
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
        Some(_) => return Err("qos must be 0, 1 or 2".into()),
    };
    let retain = match m.get("retain") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(Value::Number(n)) if n.as_u64() == Some(0) => Some(false),
        Some(Value::Number(n)) if n.as_u64() == Some(1) => Some(true),
        Some(Value::String(s)) => match s.as_str() {
            "true" | "1" => Some(true),
            "false" | "0" => Some(false),
            "all" => None,
            _ => return Err("retain must be true, false or all".into()),
        },
        Some(_) => return Err("retain must be true, false or all".into()),
    };
    Ok(RuleSpec {
        permission,
        publish,
        subscribe,
        qos,
        retain,
        topics: Some(topics),
    })
}

fn qos_level(q: Option<u64>) -> Result<u8, String> {
    match q {
        Some(q @ 0..=2) => Ok(q as u8),
        _ => Err("qos must be 0, 1 or 2".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Made by PyJWT 2.15: `jwt.encode({"sub": "c1", "exp": 1796280862},
    /// "a-shared-secret", algorithm="HS256")`.
    const HS256: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJjMSIsImV4cCI6MTc5NjI4MDg2Mn0.VhN1FzebbLn1bc_McnehsS1oXwHNuNaIWiVjbts_EcE";

    fn authn(secret: &str) -> JwtAuthn {
        JwtAuthn {
            from: TokenFrom::Password,
            keys: Keys::Fixed(Key::hmac(secret, false).expect("key")),
            verify_claims: vec![ClaimCheck {
                name: "sub".into(),
                template: "${clientid}".into(),
            }],
            acl_claim_name: "acl".into(),
            disconnect_after_expire: true,
        }
    }

    #[test]
    fn a_pyjwt_token_verifies_and_its_claims_are_checked() {
        let a = authn("a-shared-secret");
        let now = 1_796_280_000.0;
        let step = a.check("c1", None, Some(HS256.as_bytes()), now);
        let Outcome::Allow(info) = step else {
            panic!("not allowed")
        };
        assert_eq!(info.expire_at_ms, Some(1_796_280_862_000));
        assert!(!info.superuser && info.acl.is_none());
        assert!(matches!(
            a.check("c2", None, Some(HS256.as_bytes()), now),
            Outcome::Deny
        ));
        assert!(matches!(
            a.check("c1", None, Some(HS256.as_bytes()), 1_796_280_862.0),
            Outcome::Deny
        ));
        assert!(matches!(
            authn("other").check("c1", None, Some(HS256.as_bytes()), now),
            Outcome::Ignore
        ));
    }
}
