//! One listener as its accept loop and its connections see it: its
//! settings, its connection count, the operator's stop/start switch and
//! its state, and the limits (`max_connections`, `max_conn_rate`) shared
//! by the TCP and QUIC accept loops.

use super::tls::{self, Tls};
use crate::config::{Config, Listener, ListenerKind, PeerCertAs, Rate};
use emqx_actors::conn::Accepted;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// One listener, as its connections need it.
pub struct Spec {
    /// EMQX's listener id, `<type>:<name>` (`ssl:default`).
    pub id: String,
    pub kind: ListenerKind,
    pub bind: SocketAddr,
    pub acceptors: u32,
    pub max_connections: Option<u64>,
    pub(super) max_conn_rate: Option<Rate>,
    pub(super) mountpoint: Option<Arc<str>>,
    /// `proxy_protocol_timeout` when `proxy_protocol = true`.
    pub(super) proxy: Option<Duration>,
    pub(super) tls: Option<Arc<Tls>>,
    pub(super) ws: Option<crate::config::WsOptions>,
    pub(super) cert_as_username: PeerCertAs,
    pub(super) cert_as_clientid: PeerCertAs,
    /// `enable_authn`.
    pub(super) authn: emqx_actors::authn::ListenerAuthn,
    /// Connections open now.
    pub open: Arc<AtomicU64>,
    /// Whether the operator wants it open (`ctl listeners stop|start`).
    pub(super) wanted: watch::Sender<bool>,
    /// Whether its socket is bound now, or why it could not be.
    pub(super) state: watch::Sender<State>,
}

/// What a listener's accept loop is doing.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    Running,
    Stopped,
    /// The socket could not be bound again (the port is taken).
    Failed(String),
}

impl Spec {
    /// What the connection starts with: its address and this listener's
    /// mount point and `enable_authn`.
    pub(super) fn accepted(&self, peer: SocketAddr) -> emqx_actors::conn::Accepted {
        let mut acc = emqx_actors::conn::Accepted::new(peer, self.mountpoint.clone());
        acc.authn = self.authn;
        acc
    }

    /// Builds what a listener needs, reading its certificate files.
    pub fn new(cfg: &Config, kind: ListenerKind, name: &str, l: &Listener) -> Result<Spec, String> {
        let tls = if kind.tls() {
            let key = format!("listeners.{kind}.{name}.ssl_options");
            Some(Tls::new(
                key,
                l.ssl_options.clone(),
                kind == ListenerKind::Quic,
            )?)
        } else {
            None
        };
        Ok(Spec {
            id: format!("{kind}:{name}"),
            kind,
            bind: l.bind,
            acceptors: l.acceptors,
            max_connections: l.max_connections,
            max_conn_rate: l.max_conn_rate,
            mountpoint: Some(l.mountpoint.as_str())
                .filter(|m| !m.is_empty())
                .map(Arc::from),
            proxy: l.proxy_protocol.then_some(l.proxy_protocol_timeout),
            tls,
            ws: kind.websocket().then(|| l.websocket.clone()),
            cert_as_username: cfg.mqtt.peer_cert_as_username,
            cert_as_clientid: cfg.mqtt.peer_cert_as_clientid,
            authn: l.enable_authn,
            open: Arc::new(AtomicU64::new(0)),
            wanted: watch::channel(true).0,
            state: watch::channel(State::Stopped).0,
        })
    }

    /// What `mqtt.peer_cert_as_*` takes from the client's certificate.
    pub(super) fn cert_identity(
        &self,
        acc: &mut Accepted,
        cert: &rustls::pki_types::CertificateDer<'_>,
    ) {
        acc.cert_cn = tls::peer_cert_field(PeerCertAs::Cn, cert).map(Into::into);
        if self.cert_as_username != PeerCertAs::Disabled {
            acc.cert_username = tls::peer_cert_field(self.cert_as_username, cert);
        }
        if self.cert_as_clientid != PeerCertAs::Disabled {
            acc.cert_client_id = tls::peer_cert_field(self.cert_as_clientid, cert);
        }
    }

    pub fn proxy_protocol(&self) -> bool {
        self.proxy.is_some()
    }

    pub fn state(&self) -> State {
        self.state.borrow().clone()
    }

    /// Opens (`true`) or closes the listening socket, and waits (up to
    /// 5 s) for the accept loop to say how it went. Open connections are
    /// not touched.
    pub async fn set_wanted(&self, open: bool) -> State {
        let done =
            |s: &State| matches!((s, open), (State::Running, true) | (State::Stopped, false));
        let mut state = self.state.subscribe();
        state.mark_unchanged();
        self.wanted.send_replace(open);
        if done(&state.borrow()) {
            return self.state();
        }
        // The accept loop's next report (a bind that fails is retried and
        // reported again).
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Ok(Ok(())) = tokio::time::timeout_at(deadline, state.changed()).await {
            let s = state.borrow_and_update().clone();
            if done(&s) || matches!(s, State::Failed(_)) {
                return s;
            }
        }
        self.state()
    }

    /// `stop`, `start` or `restart` as `ctl listeners` and the HTTP API
    /// do it: `Err` says why the listener is not in the state asked for.
    pub async fn act(&self, action: Action) -> Result<(), String> {
        if action == Action::Restart {
            if let State::Failed(e) = self.set_wanted(false).await {
                return Err(e);
            }
        }
        let open = action != Action::Stop;
        match (self.set_wanted(open).await, open) {
            (State::Running, true) | (State::Stopped, false) => Ok(()),
            (State::Failed(e), _) => Err(e),
            (State::Running, false) => Err("still running".into()),
            (State::Stopped, true) => {
                Err("not running (the node is restarting for autoheal)".into())
            }
        }
    }
}

/// What an operator can do to a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Start,
    Stop,
    Restart,
}

impl Action {
    pub fn parse(s: &str) -> Option<Action> {
        match s {
            "start" => Some(Action::Start),
            "stop" => Some(Action::Stop),
            "restart" => Some(Action::Restart),
            _ => None,
        }
    }
}

/// `max_conn_rate` as a token bucket: up to `count` connections at once,
/// refilled at `count` per `per`.
pub(super) struct Bucket {
    rate: Rate,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub(super) fn new(rate: Rate) -> Bucket {
        Bucket {
            rate,
            tokens: rate.count as f64,
            at: Instant::now(),
        }
    }

    /// How long to wait before the next connection may be accepted; takes
    /// its token.
    pub(super) fn take(&mut self) -> Duration {
        let per_token = self.rate.per.as_secs_f64() / self.rate.count as f64;
        let now = Instant::now();
        let refill = now.duration_since(self.at).as_secs_f64() / per_token;
        self.tokens = (self.tokens + refill).min(self.rate.count as f64);
        self.at = now;
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens * per_token)
        }
    }
}

/// Sleeps `wait`, or less if the listener is to close meanwhile.
pub(super) async fn rate_wait(
    wait: Duration,
    node_open: &mut watch::Receiver<bool>,
    wanted: &mut watch::Receiver<bool>,
) {
    if wait.is_zero() {
        return;
    }
    tokio::select! {
        _ = tokio::time::sleep(wait) => {}
        _ = node_open.changed() => {}
        _ = wanted.changed() => {}
    }
}

/// The node is past its memory watermark with `backoff_new_conn`: a new
/// connection is closed at once, before a byte is read (as EMQX does),
/// and counted.
pub(super) fn overloaded(ctx: &emqx_actors::Ctx) -> bool {
    if ctx.overload.refuse_new_conn() {
        emqx_actors::metrics::inc(&ctx.broker.metrics.overload_protection_new_conn);
        return true;
    }
    false
}

/// Whether `max_connections` leaves room for one more connection; a
/// refusal is counted.
pub(super) fn handle_limits(spec: &Spec, ctx: &emqx_actors::Ctx, peer: SocketAddr) -> bool {
    match spec.max_connections {
        Some(max) if spec.open.load(Ordering::Relaxed) >= max => {
            emqx_actors::metrics::inc(&ctx.broker.metrics.connections_refused_max_connections);
            tracing::info!(%peer, "listener {}: max_connections ({max}) reached, closing", spec.id);
            false
        }
        _ => true,
    }
}
