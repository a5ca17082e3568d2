//! The node's [`SessionStore`] on the durable storage's shards: a
//! session lives in the shard of its client id, its rows keyed by the
//! client id ([`session_key`]), its owner and epoch decided by the shard.

use super::ds::host::{shard_of, DsError, DsHost};
use super::ds::{session_key, session_range, Command, DsOp, Owner, Reply};
use crate::peers::{BoxFuture, SessionClaim, SessionOp, SessionStore, StoreError, StoredSession};
use std::sync::Arc;
use std::time::Duration;

/// [`SessionStore`] over a node's [`DsHost`].
pub struct DsSessions {
    host: Arc<DsHost>,
    /// How long a command or read may wait for a leader and a quorum.
    timeout: Duration,
}

impl DsSessions {
    pub fn new(host: Arc<DsHost>, timeout: Duration) -> DsSessions {
        DsSessions { host, timeout }
    }

    fn shard(&self, client: &str) -> u16 {
        shard_of(client, self.host.n_shards())
    }

    async fn run(&self, client: &str, cmd: Command) -> Result<Reply, StoreError> {
        match self
            .host
            .submit(self.shard(client), cmd, self.timeout)
            .await
        {
            Ok((_, Reply::Fenced { owner })) => Err(StoreError::Fenced {
                client: client.to_string(),
                owner: owner.map(pair),
            }),
            Ok((_, reply)) => Ok(reply),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Runs a claim (`what` names it in an error): the shard's answer is
    /// the new epoch and the owner it replaced.
    async fn take(
        &self,
        client: &str,
        cmd: Command,
        what: &str,
    ) -> Result<SessionClaim, StoreError> {
        match self.run(client, cmd).await? {
            Reply::Claimed { epoch, previous } => Ok(SessionClaim {
                epoch,
                previous: previous.map(pair),
            }),
            other => Err(StoreError::Unavailable(format!(
                "{what} answered {other:?}"
            ))),
        }
    }
}

fn pair(o: Owner) -> (String, u64) {
    (o.node, o.epoch)
}

fn unavailable(e: DsError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl SessionStore for DsSessions {
    fn claim<'a>(&'a self, client: &'a str) -> BoxFuture<'a, Result<SessionClaim, StoreError>> {
        Box::pin(async move {
            let cmd = Command::Claim {
                client: client.to_string(),
                node: self.host.me().to_string(),
            };
            self.take(client, cmd, "a claim").await
        })
    }

    fn adopt<'a>(
        &'a self,
        client: &'a str,
        from: &'a str,
        epoch: u64,
    ) -> BoxFuture<'a, Result<SessionClaim, StoreError>> {
        Box::pin(async move {
            let cmd = Command::Adopt {
                client: client.to_string(),
                node: self.host.me().to_string(),
                from: from.to_string(),
                epoch,
            };
            self.take(client, cmd, "an adoption").await
        })
    }

    fn read<'a>(&'a self, client: &'a str) -> BoxFuture<'a, Result<StoredSession, StoreError>> {
        Box::pin(async move {
            let s = self
                .host
                .read_session(self.shard(client), client, self.timeout)
                .await
                .map_err(unavailable)?;
            let prefix = session_key(client, &[]).len();
            Ok(StoredSession {
                owner: s.owner.map(pair),
                rows: s
                    .rows
                    .into_iter()
                    .map(|(t, k, v)| (t, k.get(prefix..).unwrap_or_default().to_vec(), v))
                    .collect(),
            })
        })
    }

    fn write<'a>(
        &'a self,
        client: &'a str,
        epoch: u64,
        ops: Vec<SessionOp>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let ops = ops
                .into_iter()
                .map(|op| match op {
                    SessionOp::Put { table, key, value } => DsOp::Put {
                        table,
                        key: session_key(client, &key),
                        value,
                    },
                    SessionOp::Delete { table, key } => DsOp::Delete {
                        table,
                        key: session_key(client, &key),
                    },
                    SessionOp::Clear { table } => {
                        let (from, to) = session_range(client);
                        DsOp::DeleteRange { table, from, to }
                    }
                })
                .collect();
            let cmd = Command::Write {
                client: client.to_string(),
                epoch,
                ops,
            };
            self.run(client, cmd).await.map(|_| ())
        })
    }

    fn release<'a>(&'a self, client: &'a str, epoch: u64) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let cmd = Command::Release {
                client: client.to_string(),
                epoch,
                ops: Vec::new(),
            };
            match self.run(client, cmd).await {
                // Gone already (a release tried again after an unknown
                // outcome, or never claimed): what was asked.
                Err(StoreError::Fenced { owner: None, .. }) => Ok(()),
                r => r.map(|_| ()),
            }
        })
    }
}
