//! Authentication (EMQX's `authentication = [...]` chain): each connecting
//! client's credentials are tried against the authenticators in order. An
//! authenticator allows, denies, or ignores (passes to the next); a chain
//! where every authenticator ignored refuses the client, and an empty
//! chain allows everyone.
//!
//! The built-in database keeps its users in the replicated table
//! [`USERS_TABLE`] (see [`crate::replicated`]), so a user added on one node
//! is known on every node.

pub mod hash;
pub mod jwt;

use crate::replicated::{ReplTables, Table, TableError};
use emqx_mqtt::acl::AuthInfo;
use hash::{HashAlgo, HashError};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::sync::Arc;

/// The replicated table of the built-in database's users.
pub const USERS_TABLE: &str = "authn_users";

/// One user of the built-in database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub password_hash: String,
    pub salt: String,
    pub is_superuser: bool,
    /// How `password_hash` was made (kept with the user, so a user added
    /// on a node stays valid on a node configured with another algorithm).
    pub algo: HashAlgo,
}

impl UserRecord {
    fn encode(&self) -> Vec<u8> {
        bincode::serde::encode_to_vec(self, bincode::config::standard()).unwrap_or_default()
    }

    fn decode(b: &[u8]) -> Option<UserRecord> {
        bincode::serde::decode_from_slice(b, bincode::config::standard())
            .ok()
            .map(|(u, _)| u)
    }
}

/// `user_id_type`: what identifies a user of the built-in database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserIdType {
    Username,
    ClientId,
}

/// The built-in database's users, over the replicated table.
#[derive(Clone)]
pub struct Users {
    tables: Arc<ReplTables>,
    table: Arc<Table>,
}

/// Why a user could not be added or changed.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("user {0:?} already exists")]
    Exists(String),
    #[error("user {0:?} not found")]
    NotFound(String),
    #[error("user id must not be empty")]
    EmptyId,
    #[error(transparent)]
    Hash(#[from] HashError),
    #[error(transparent)]
    Table(#[from] TableError),
}

impl Users {
    pub fn new(tables: Arc<ReplTables>) -> Result<Users, TableError> {
        let table = tables
            .table(USERS_TABLE)
            .cloned()
            .ok_or_else(|| TableError::Unknown(USERS_TABLE.into()))?;
        Ok(Users { tables, table })
    }

    pub fn get(&self, user_id: &str) -> Option<UserRecord> {
        self.table.get(user_id).and_then(|b| UserRecord::decode(&b))
    }

    /// Every user, ordered by id.
    pub fn list(&self) -> Vec<(String, UserRecord)> {
        self.table
            .list()
            .into_iter()
            .filter_map(|(k, v)| UserRecord::decode(&v).map(|u| (k, u)))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// A user from the bootstrap file (any later change wins over it).
    pub fn seed(&self, user_id: &str, rec: &UserRecord) -> Result<(), TableError> {
        self.tables.seed(USERS_TABLE, user_id, rec.encode())
    }

    /// Adds a user, cluster-wide.
    pub fn add(
        &self,
        user_id: &str,
        password: &[u8],
        is_superuser: bool,
        algo: HashAlgo,
    ) -> Result<(), UserError> {
        if user_id.is_empty() {
            return Err(UserError::EmptyId);
        }
        if self.get(user_id).is_some() {
            return Err(UserError::Exists(user_id.into()));
        }
        let (password_hash, salt) = algo.hash_new(password)?;
        let rec = UserRecord {
            password_hash,
            salt,
            is_superuser,
            algo,
        };
        Ok(self
            .tables
            .write(USERS_TABLE, user_id, Some(rec.encode()))?)
    }

    /// Changes a user's password and, if given, superuser flag.
    pub fn update(
        &self,
        user_id: &str,
        password: Option<&[u8]>,
        is_superuser: Option<bool>,
        algo: HashAlgo,
    ) -> Result<(), UserError> {
        let mut rec = self
            .get(user_id)
            .ok_or_else(|| UserError::NotFound(user_id.into()))?;
        if let Some(p) = password {
            let (h, s) = algo.hash_new(p)?;
            rec.password_hash = h;
            rec.salt = s;
            rec.algo = algo;
        }
        if let Some(su) = is_superuser {
            rec.is_superuser = su;
        }
        Ok(self
            .tables
            .write(USERS_TABLE, user_id, Some(rec.encode()))?)
    }

    pub fn delete(&self, user_id: &str) -> Result<(), UserError> {
        if self.get(user_id).is_none() {
            return Err(UserError::NotFound(user_id.into()));
        }
        Ok(self.tables.write(USERS_TABLE, user_id, None)?)
    }
}

/// One authenticator of the chain.
pub enum Authenticator {
    /// `mechanism = password_based, backend = built_in_database`.
    BuiltInDb {
        user_id_type: UserIdType,
        /// For users added with a plain password (ctl, bootstrap `plain`).
        algo: HashAlgo,
        users: Users,
    },
    /// `mechanism = jwt`.
    Jwt(jwt::JwtAuthn),
}

/// `enable_authn` of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ListenerAuthn {
    #[default]
    Enabled,
    Disabled,
    /// Clients without a username are refused before the chain runs.
    QuickDenyAnonymous,
}

/// What a client presents.
pub struct Credentials {
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<bytes::Bytes>,
    pub peer: IpAddr,
}

/// Why a client was refused (EMQX's reasons, mapped to CONNACK codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// v5 0x86, v3 0x04.
    BadUsernameOrPassword,
    /// v5 0x87, v3 0x05.
    NotAuthorized,
}

/// The chain's answer.
#[derive(Debug, Clone)]
pub enum Verdict {
    Allow(AuthInfo),
    Deny(Refusal),
}

enum Step {
    Allow(AuthInfo),
    Deny(Refusal),
    Ignore,
}

/// The authentication chain of a node.
#[derive(Default)]
pub struct Authn {
    pub chain: Vec<Authenticator>,
}

impl Authn {
    pub fn is_empty(&self) -> bool {
        self.chain.is_empty()
    }

    /// The built-in database's users, if the chain has that authenticator.
    pub fn users(&self) -> Option<(&Users, HashAlgo)> {
        self.chain.iter().find_map(|a| match a {
            Authenticator::BuiltInDb { users, algo, .. } => Some((users, *algo)),
            Authenticator::Jwt(_) => None,
        })
    }

    /// Runs the chain. Slow hashes (bcrypt, PBKDF2) run on the blocking
    /// pool, never on the connection's task.
    pub async fn authenticate(&self, c: &Credentials, mode: ListenerAuthn) -> Verdict {
        match mode {
            ListenerAuthn::Disabled => return Verdict::Allow(AuthInfo::default()),
            ListenerAuthn::QuickDenyAnonymous
                if c.username.as_deref().is_none_or(str::is_empty) =>
            {
                return Verdict::Deny(Refusal::NotAuthorized)
            }
            _ => {}
        }
        if self.chain.is_empty() {
            return Verdict::Allow(AuthInfo::default());
        }
        for a in &self.chain {
            match a.check(c).await {
                Step::Allow(info) => return Verdict::Allow(info),
                Step::Deny(r) => return Verdict::Deny(r),
                Step::Ignore => {}
            }
        }
        Verdict::Deny(Refusal::NotAuthorized)
    }
}

impl Authenticator {
    async fn check(&self, c: &Credentials) -> Step {
        match self {
            Authenticator::BuiltInDb {
                user_id_type,
                users,
                ..
            } => {
                let Some(password) = c.password.clone() else {
                    return Step::Ignore;
                };
                let id = match user_id_type {
                    UserIdType::Username => match c.username.as_deref() {
                        Some(u) => u,
                        None => return Step::Ignore,
                    },
                    UserIdType::ClientId => c.client_id.as_str(),
                };
                let Some(user) = users.get(id) else {
                    return Step::Ignore;
                };
                let ok = if user.algo.is_slow() {
                    // At most half the cores hash at once: a storm of
                    // bcrypt connects waits here instead of taking the CPU
                    // from the clients already connected.
                    let Ok(_permit) = slow_checks().acquire().await else {
                        return Step::Ignore;
                    };
                    let u = user.clone();
                    tokio::task::spawn_blocking(move || {
                        u.algo.verify(&password, &u.password_hash, &u.salt)
                    })
                    .await
                    .unwrap_or(false)
                } else {
                    user.algo.verify(&password, &user.password_hash, &user.salt)
                };
                if ok {
                    Step::Allow(AuthInfo {
                        superuser: user.is_superuser,
                        ..AuthInfo::default()
                    })
                } else {
                    Step::Deny(Refusal::BadUsernameOrPassword)
                }
            }
            Authenticator::Jwt(j) => match j.check(
                &c.client_id,
                c.username.as_deref(),
                c.password.as_deref(),
                crate::clock::now_ms() as f64 / 1000.0,
            ) {
                jwt::Outcome::Allow(info) => Step::Allow(info),
                jwt::Outcome::Deny => Step::Deny(Refusal::BadUsernameOrPassword),
                jwt::Outcome::Ignore => Step::Ignore,
            },
        }
    }
}

/// The permits of slow hash checks: half the cores, at least one.
fn slow_checks() -> &'static tokio::sync::Semaphore {
    static S: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    S.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        tokio::sync::Semaphore::new((cores / 2).max(1))
    })
}

#[cfg(test)]
mod tests;
