//! The HTTP management API on `dashboard.listeners.http.bind` (18083), in
//! the shape of EMQX 5's `/api/v5`: paths, parameters, JSON field names,
//! status codes and the `{code, message}` error body. Every answer covers
//! the whole cluster from whichever node is asked: the node asks each
//! running node ([`crate::mgmt`], through the peers' control actors) and
//! merges what they say.
//!
//! It runs on the node's runtime beside the brokers' tasks, never on the
//! MQTT path: a request costs the sessions it lists one message each.

pub mod auth;
mod authn_users;
mod authz_rules;
mod dashboard;
mod http;
mod prometheus;
mod tls_listener;

use crate::config::DashboardListeners;
use crate::ctl::{call_control, ControlKind};
use crate::listeners::tls::Tls;
use crate::mgmt::{self, Call};
use crate::running::Node;
use auth::{Auth, Denied, Role};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use emqx_actors::cluster::service::SvcMsg;
use http::{bad_request, error, page_of, paging, sort_rows, ApiError, Body, Paging};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// How long one node may take to answer.
const NODE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the handlers share.
pub struct Api {
    pub node: Arc<Node>,
    pub auth: Arc<Auth>,
    /// `cluster.name`
    pub cluster_name: String,
    /// `prometheus.enable_basic_auth`
    pub prometheus_auth: bool,
    /// The configuration file the node was started with, handed to the
    /// `ctl` process that carries an invitation.
    pub config_file: Option<std::path::PathBuf>,
    /// `node.cookie`, for that process.
    pub cookie: String,
}

type Shared = Arc<Api>;

/// The API's ports, bound before anything else starts.
pub struct Bound {
    http: Option<TcpListener>,
    https: Option<(TcpListener, Arc<Tls>)>,
}

/// Binds the API's ports (so a port in use stops the start with a clear
/// message) and reads the HTTPS certificate; a listener whose `enable` is
/// false is not bound.
pub async fn bind(cfg: &DashboardListeners) -> Result<Bound, String> {
    let listen = |key: &'static str, addr: SocketAddr| async move {
        TcpListener::bind(addr).await.map_err(|e| {
            format!("dashboard.listeners.{key}.bind = {addr}: cannot listen for the HTTP API: {e}")
        })
    };
    let http = match cfg.http.enable {
        true => Some(listen("http", cfg.http.bind).await?),
        false => None,
    };
    let https = match cfg.https.enable {
        true => {
            let tls = Tls::new(
                "dashboard.listeners.https.ssl_options".into(),
                cfg.https.ssl_options.clone(),
                false,
            )?;
            Some((listen("https", cfg.https.bind).await?, tls))
        }
        false => None,
    };
    Ok(Bound { http, https })
}

/// Serves the API on the bound ports until the task is aborted.
pub fn serve(bound: Bound, api: Api) -> tokio::task::JoinHandle<()> {
    let app = router(Arc::new(api));
    let Bound { http, https } = bound;
    let plain = {
        let app = app.clone();
        async move {
            let Some(l) = http else { return };
            if let Ok(a) = l.local_addr() {
                tracing::info!("HTTP API listening on http://{a}");
            }
            if let Err(e) = axum::serve(l, app).await {
                tracing::error!("HTTP API stopped: {e}");
            }
        }
    };
    let secure = async move {
        let Some((l, tls)) = https else { return };
        let listener = tls_listener::TlsListener::new(l, tls);
        if let Ok(a) = axum::serve::Listener::local_addr(&listener) {
            tracing::info!("HTTP API listening on https://{a}");
        }
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("HTTPS API stopped: {e}");
        }
    };
    tokio::spawn(async move {
        tokio::join!(plain, secure);
    })
}

/// The OpenAPI document's frame: title, version, the two ways to log in;
/// the paths come from the handlers' `#[utoipa::path]` attributes.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "emqx-rs HTTP API", description = "EMQX 5's /api/v5, answered for the whole cluster by any node."),
    modifiers(&Credentials),
    security(("bearer" = []), ("api_key" = []))
)]
struct ApiDoc;

/// The security schemes: a token from `POST /api/v5/login`, or an API
/// key as HTTP Basic.
struct Credentials;

impl utoipa::Modify for Credentials {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let c = doc.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        c.add_security_scheme(
            "api_key",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Basic)),
        );
    }
}

/// The routes and, from the same handlers, the OpenAPI document.
fn routes(api: &Shared) -> (Router<Shared>, utoipa::openapi::OpenApi) {
    use utoipa::OpenApi;
    use utoipa_axum::router::OpenApiRouter;
    use utoipa_axum::routes;
    let open = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(status))
        .routes(routes!(login));
    let prom = OpenApiRouter::new().routes(routes!(prometheus_stats));
    let prom = if api.prometheus_auth {
        prom.layer(axum::middleware::from_fn_with_state(api.clone(), authorize))
    } else {
        prom
    };
    let guarded = OpenApiRouter::new()
        .routes(routes!(nodes))
        .routes(routes!(node_one))
        .routes(routes!(cluster))
        .routes(routes!(force_leave))
        .routes(routes!(invite))
        .routes(routes!(stats))
        .routes(routes!(metrics))
        .routes(routes!(clients))
        .routes(routes!(client_one, kick))
        .routes(routes!(client_subscriptions))
        .routes(routes!(subscribe))
        .routes(routes!(subscribe_bulk))
        .routes(routes!(unsubscribe))
        .routes(routes!(unsubscribe_bulk))
        .routes(routes!(subscriptions))
        .routes(routes!(topics))
        .routes(routes!(publish))
        .routes(routes!(publish_bulk))
        .routes(routes!(retained_list))
        .routes(routes!(retained_one, retained_delete))
        .routes(routes!(listeners))
        .routes(routes!(listener_one))
        .routes(routes!(listener_action))
        .routes(routes!(alarms, alarms_clear))
        .routes(routes!(banned_list, banned_add, banned_clear))
        .routes(routes!(banned_delete))
        .routes(routes!(api_keys, api_key_add))
        .routes(routes!(api_key_one, api_key_update, api_key_delete))
        .routes(routes!(users, user_add))
        .routes(routes!(user_delete))
        .routes(routes!(change_pwd))
        .merge(authn_users::routes(api.node.ctx.authn.clone()))
        .merge(authz_rules::routes(api.node.ctx.authz_rules.clone()))
        .layer(axum::middleware::from_fn_with_state(api.clone(), authorize));
    open.merge(prom).merge(guarded).split_for_parts()
}

fn router(api: Shared) -> Router {
    let (app, doc) = routes(&api);
    let doc = Arc::new(doc);
    app.route(
        "/api-docs/openapi.json",
        get(move || {
            let doc = doc.clone();
            async move { Json(doc.as_ref().clone()) }
        }),
    )
    .merge(dashboard::routes())
    .fallback(not_found)
    .layer(axum::middleware::from_fn(log_request))
    .with_state(api)
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "NOT_FOUND", "Request path not found")
}

/// Logs every request: method, path, status, time.
async fn log_request(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let started = std::time::Instant::now();
    let resp = next.run(req).await;
    tracing::info!(
        target: "emqx_rs::api",
        "{method} {path} -> {} in {:?}",
        resp.status().as_u16(),
        started.elapsed()
    );
    resp
}

/// Credentials and role, before any guarded handler.
async fn authorize(State(api): State<Shared>, req: Request, next: Next) -> Response {
    let h = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match api.auth.check(h) {
        Ok(caller) => {
            let path = req.uri().path();
            let role = caller.role;
            if caller.api_key
                && (path.starts_with("/api/v5/users") || path.starts_with("/api/v5/api_key"))
            {
                tracing::warn!(target: "emqx_rs::api", "API key {} may not {} {path}", caller.name, req.method());
                return error(
                    StatusCode::FORBIDDEN,
                    "FORBIDDEN",
                    "API keys may not manage users or API keys: log in as a user",
                );
            }
            if !role.allows(req.method(), path) {
                tracing::warn!(target: "emqx_rs::api", "{} ({}) may not {} {path}", caller.name, role.name(), req.method());
                return error(
                    StatusCode::FORBIDDEN,
                    "FORBIDDEN",
                    format!("role {} may not do this", role.name()),
                );
            }
            next.run(req).await
        }
        Err(d) => {
            let (code, message) = match d {
                Denied::BadToken => (
                    "BAD_TOKEN",
                    "Get a token with POST /api/v5/login, or use an API key",
                ),
                Denied::TokenExpired => ("TOKEN_TIME_OUT", "Token expired, get a new one"),
                Denied::BadApiKey => ("BAD_API_KEY_OR_SECRET", "Check api_key/api_secret"),
            };
            let mut r = error(StatusCode::UNAUTHORIZED, code, message);
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"emqx-rs\""),
            );
            r
        }
    }
}

// ---------------------------------------------------------------- status

/// The node's health for load balancers and probes
#[utoipa::path(
    get,
    path = "/api/v5/status",
    tag = "Status",
    operation_id = "status",
    params(("format" = Option<String>, Query, description = "`json` for a JSON answer")),
    responses((status = 200, description = "The node serves MQTT"), (status = 503, description = "The node does not serve MQTT now (starting, stopping, autoheal restart)")),
    security(())
)]
async fn status(State(api): State<Shared>, Query(q): Query<HashMap<String, String>>) -> Response {
    let node = &api.node;
    let running = *node.ctx.listeners.borrow();
    let code = if running {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut r = if q.get("format").map(String::as_str) == Some("json") {
        (
            code,
            Json(json!({
                "node_name": node.name,
                "rel_vsn": emqx_actors::sys::VERSION,
                "broker_status": if running { "started" } else { "stopped" },
                "app_status": if running { "running" } else { "not_running" },
            })),
        )
            .into_response()
    } else {
        (
            code,
            format!(
                "Node {} is {}\nemqx is {}",
                node.name,
                if running { "started" } else { "stopped" },
                if running { "running" } else { "not_running" }
            ),
        )
            .into_response()
    };
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("15"));
    r
}

// ---------------------------------------------------------------- prometheus

/// Stats and metrics in Prometheus text format
#[utoipa::path(
    get,
    path = "/api/v5/prometheus/stats",
    tag = "Metrics",
    operation_id = "prometheus_stats",
    params(("mode" = Option<String>, Query, description = "`node` (default), `all_nodes_aggregated` or `all_nodes_unaggregated`")),
    responses((status = 200, description = "Prometheus exposition text"), (status = 400, description = "Bad parameter or body: `{code, message}`"), (status = 503, description = "A running node did not answer")),
    security(())
)]
async fn prometheus_stats(
    State(api): State<Shared>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    use prometheus::{Mode, NodeFigures};
    let Some(mode) = Mode::parse(q.get("mode").map(String::as_str)) else {
        return bad_request("mode: expected node, all_nodes_aggregated or all_nodes_unaggregated");
    };
    let (running, stopped) = api.members().await;
    let asked = match mode {
        Mode::Node => vec![api.node.name.clone()],
        Mode::Aggregated | Mode::Unaggregated => running.clone(),
    };
    let mut nodes = Vec::new();
    for n in asked {
        let (stats, metrics) = match (
            api.ask(&n, &Call::Stats).await,
            api.ask(&n, &Call::Metrics).await,
        ) {
            (Ok(s), Ok(m)) => (s, m),
            (Err(e), _) | (_, Err(e)) => return ApiError::unavailable(e).into_response(),
        };
        nodes.push(NodeFigures {
            node: n,
            stats,
            metrics,
        });
    }
    let text = prometheus::render(&nodes, running.len(), stopped.len(), mode);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

// ---------------------------------------------------------------- login, users

#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct LoginReq {
    username: String,
    password: String,
}

/// Log in: a bearer token for the API
#[utoipa::path(
    post,
    path = "/api/v5/login",
    tag = "Users",
    operation_id = "login",
    request_body = LoginReq,
    responses((status = 200, description = "`{token, version, role, license}`"), (status = 401, description = "Wrong user name or password")),
    security(())
)]
async fn login(State(api): State<Shared>, Body(req): Body<LoginReq>) -> Response {
    match api.auth.login(&req.username, &req.password) {
        Some((token, role)) => Json(json!({
            "token": token,
            "version": emqx_actors::sys::VERSION,
            "license": {"edition": "opensource"},
            "role": role.name(),
        }))
        .into_response(),
        None => {
            tracing::warn!(target: "emqx_rs::api", "failed login for user {:?}", req.username);
            error(
                StatusCode::UNAUTHORIZED,
                "BAD_USERNAME_OR_PWD",
                "Auth failed",
            )
        }
    }
}

/// API users
#[utoipa::path(
    get,
    path = "/api/v5/users",
    tag = "Users",
    operation_id = "users",
    responses((status = 200, description = "Users"))
)]
async fn users(State(api): State<Shared>) -> Response {
    let list: Vec<Value> = api
        .auth
        .users()
        .into_iter()
        .map(|(name, u)| {
            json!({"username": name, "role": u.role.name(), "description": u.description})
        })
        .collect();
    Json(list).into_response()
}

#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewUser {
    username: String,
    password: String,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    description: String,
}

/// Add an API user
#[utoipa::path(
    post,
    path = "/api/v5/users",
    tag = "Users",
    operation_id = "user_add",
    request_body = NewUser,
    responses((status = 200, description = "The user"), (status = 400, description = "Bad parameter or body: `{code, message}`"))
)]
async fn user_add(State(api): State<Shared>, Body(u): Body<NewUser>) -> Response {
    if !valid_username(&u.username) {
        return bad_request("username: 1 to 64 letters, digits, '-', '_' or '.'");
    }
    if u.password.len() < 8 || u.password.len() > 64 {
        return bad_request("password: 8 to 64 characters");
    }
    let role = match u.role.as_deref() {
        None => Role::Administrator,
        Some(r) => match Role::parse(r) {
            Some(r) => r,
            None => return bad_request(format!("role: unknown role {r:?}")),
        },
    };
    if api.auth.user(&u.username).is_some() {
        return bad_request(format!("username {} already exists", u.username));
    }
    match api
        .auth
        .put_user(&u.username, &u.password, role, u.description.clone())
    {
        Ok(()) => {
            Json(json!({"username": u.username, "role": role.name(), "description": u.description}))
                .into_response()
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR", e),
    }
}

fn valid_username(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Remove an API user
#[utoipa::path(
    delete,
    path = "/api/v5/users/{username}",
    tag = "Users",
    operation_id = "user_delete",
    params(("username" = String, Path, description = "User name")),
    responses((status = 204, description = "Removed"), (status = 400, description = "Bad parameter or body: `{code, message}`"), (status = 404, description = "USER_NOT_FOUND: `{code, message}`"))
)]
async fn user_delete(State(api): State<Shared>, Path(name): Path<String>) -> Response {
    if api.auth.user(&name).is_none() {
        return error(StatusCode::NOT_FOUND, "USER_NOT_FOUND", "User not found");
    }
    let admins = api
        .auth
        .users()
        .iter()
        .filter(|(n, u)| u.role == Role::Administrator && *n != name)
        .count();
    if admins == 0 {
        return bad_request("cannot delete the last administrator");
    }
    match api.auth.delete_user(&name) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR", e),
    }
}

#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ChangePwd {
    old_pwd: String,
    new_pwd: String,
}

/// Change an API user's password
#[utoipa::path(
    post,
    path = "/api/v5/users/{username}/change_pwd",
    tag = "Users",
    operation_id = "change_pwd",
    params(("username" = String, Path, description = "User name")),
    request_body = ChangePwd,
    responses((status = 204, description = "Changed"), (status = 400, description = "Bad parameter or body: `{code, message}`"), (status = 404, description = "USER_NOT_FOUND: `{code, message}`"))
)]
async fn change_pwd(
    State(api): State<Shared>,
    Path(name): Path<String>,
    Body(c): Body<ChangePwd>,
) -> Response {
    let Some(u) = api.auth.user(&name) else {
        return error(StatusCode::NOT_FOUND, "USER_NOT_FOUND", "User not found");
    };
    if api.auth.login(&name, &c.old_pwd).is_none() {
        return bad_request("The old password is incorrect");
    }
    if c.new_pwd.len() < 8 || c.new_pwd.len() > 64 {
        return bad_request("new_pwd: 8 to 64 characters");
    }
    match api.auth.put_user(&name, &c.new_pwd, u.role, u.description) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR", e),
    }
}

// ---------------------------------------------------------------- alarms, banned

/// Alarms of every node, paged
#[utoipa::path(
    get,
    path = "/api/v5/alarms",
    tag = "Alarms",
    operation_id = "alarms",
    params(Paging, ("activated" = Option<bool>, Query, description = "true (active, default) or false (history)")),
    responses((status = 200, description = "`{data, meta}`"), (status = 400, description = "Bad parameter or body: `{code, message}`"), (status = 503, description = "A running node did not answer"))
)]
async fn alarms(
    State(api): State<Shared>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let (page, limit) = paging(&q, &["activated"])?;
    let activated = match q.get("activated").map(String::as_str) {
        None | Some("true") => true,
        Some("false") => false,
        Some(o) => {
            return Err(ApiError::bad(format!(
                "activated: expected true or false, got {o:?}"
            )))
        }
    };
    let answers = api.ask_all(&Call::Alarms { activated }).await?;
    let mut rows: Vec<Value> = answers
        .into_iter()
        .flat_map(|(_, v)| v.as_array().cloned().unwrap_or_default())
        .collect();
    sort_rows(&mut rows, &["node", "activate_at", "name"]);
    Ok(page_of(rows, page, limit))
}

/// Forget the deactivated alarms
#[utoipa::path(
    delete,
    path = "/api/v5/alarms",
    tag = "Alarms",
    operation_id = "alarms_clear",
    responses((status = 204, description = "Cleared"), (status = 503, description = "A running node did not answer"))
)]
async fn alarms_clear(State(api): State<Shared>) -> Result<Response, ApiError> {
    api.ask_all(&Call::ClearAlarms).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn ms_text(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

fn ban_json(b: &emqx_actors::banned::Ban) -> Value {
    json!({
        "as": b.kind.name(),
        "who": b.who,
        "by": b.by,
        "reason": b.reason,
        "at": ms_text(b.at_ms),
        "until": b.until_ms.map_or("infinity".to_string(), ms_text),
    })
}

fn ban_kind(s: &str) -> Result<emqx_actors::banned::BanKind, ApiError> {
    emqx_actors::banned::BanKind::from_name(s).ok_or_else(|| {
        ApiError::bad(format!(
            "as: expected one of {}, got {s:?}",
            emqx_actors::banned::BanKind::ALL.join(", ")
        ))
    })
}

/// Banned clients, paged
#[utoipa::path(
    get,
    path = "/api/v5/banned",
    tag = "Banned",
    operation_id = "banned_list",
    params(Paging),
    responses((status = 200, description = "`{data, meta}`"), (status = 400, description = "Bad parameter or body: `{code, message}`"))
)]
async fn banned_list(
    State(api): State<Shared>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let (page, limit) = paging(&q, &[])?;
    let banned = &api.node.ctx.banned;
    banned.purge_expired(emqx_actors::clock::now_ms());
    let rows = banned.list().iter().map(ban_json).collect();
    Ok(page_of(rows, page, limit))
}

#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewBan {
    #[serde(rename = "as")]
    kind: String,
    who: String,
    #[serde(default)]
    by: Option<String>,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    at: Option<String>,
    #[serde(default)]
    until: Option<String>,
}

/// An RFC 3339 time in UTC as wall-clock milliseconds.
fn parse_time(key: &str, v: &str) -> Result<u64, ApiError> {
    humantime::parse_rfc3339_weak(v)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as u64)
        .ok_or_else(|| {
            ApiError::bad(format!(
                "{key}: expected a time such as 2030-01-01T00:00:00Z, got {v:?}"
            ))
        })
}

/// Ban a client id, user name, address or pattern
#[utoipa::path(
    post,
    path = "/api/v5/banned",
    tag = "Banned",
    operation_id = "banned_add",
    request_body = NewBan,
    responses((status = 200, description = "The ban"), (status = 400, description = "ALREADY_EXISTS or a bad ban"))
)]
async fn banned_add(
    State(api): State<Shared>,
    Body(n): Body<NewBan>,
) -> Result<Response, ApiError> {
    let kind = ban_kind(&n.kind)?;
    let now = emqx_actors::clock::now_ms();
    let at_ms =
        n.at.as_deref()
            .map(|v| parse_time("at", v))
            .transpose()?
            .unwrap_or(now);
    let until_ms = match n.until.as_deref() {
        None | Some("infinity") => None,
        Some(v) => Some(parse_time("until", v)?),
    };
    if until_ms.is_some_and(|u| u <= now) {
        return Err(ApiError::bad("until: already past"));
    }
    let banned = &api.node.ctx.banned;
    banned.purge_expired(now);
    if banned.get(kind, &n.who).is_some() {
        return Ok(error(
            StatusCode::BAD_REQUEST,
            "ALREADY_EXISTS",
            "this client is already banned",
        ));
    }
    let ban = emqx_actors::banned::Ban {
        kind,
        who: n.who,
        reason: n.reason,
        by: n.by.unwrap_or_else(|| "mgmt_api".into()),
        at_ms,
        until_ms,
    };
    banned
        .add(ban.clone())
        .map_err(|e| ApiError::bad(e.to_string()))?;
    tracing::info!(target: "emqx_rs::api", "banned {} {}", ban.kind.name(), ban.who);
    Ok(Json(ban_json(&ban)).into_response())
}

/// Lift one ban
#[utoipa::path(
    delete,
    path = "/api/v5/banned/{kind}/{who}",
    tag = "Banned",
    operation_id = "banned_delete",
    params(("kind" = String, Path, description = "clientid, username, peerhost, clientid_re or username_re"), ("who" = String, Path, description = "What is banned")),
    responses((status = 204, description = "Lifted"), (status = 400, description = "Bad parameter or body: `{code, message}`"), (status = 404, description = "No such ban: `{code, message}`"))
)]
async fn banned_delete(
    State(api): State<Shared>,
    Path((kind, who)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let kind = ban_kind(&kind)?;
    Ok(match api.node.ctx.banned.delete(kind, &who) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e @ emqx_actors::banned::BanError::NotFound(..)) => {
            error(StatusCode::NOT_FOUND, "NOT_FOUND", e.to_string())
        }
        Err(e) => return Err(ApiError::unavailable(e.to_string())),
    })
}

/// Lift every ban
#[utoipa::path(
    delete,
    path = "/api/v5/banned",
    tag = "Banned",
    operation_id = "banned_clear",
    responses((status = 204, description = "Lifted"), (status = 503, description = "A running node did not answer"))
)]
async fn banned_clear(State(api): State<Shared>) -> Result<Response, ApiError> {
    let banned = &api.node.ctx.banned;
    for b in banned.list() {
        banned
            .delete(b.kind, &b.who)
            .map_err(|e| ApiError::unavailable(e.to_string()))?;
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---------------------------------------------------------------- API keys

/// `expired_at` as EMQX writes it: RFC 3339, or `infinity`.
fn expiry_text(t: Option<u64>) -> Value {
    match t {
        None => json!("infinity"),
        Some(s) => json!(humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + Duration::from_secs(s)
        )
        .to_string()),
    }
}

/// `"infinity"` or an RFC 3339 time in UTC, as unix seconds.
fn parse_expiry(v: &str) -> Result<Option<u64>, ApiError> {
    if v == "infinity" {
        return Ok(None);
    }
    humantime::parse_rfc3339_weak(v)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| Some(d.as_secs()))
        .ok_or_else(|| {
            ApiError::bad(format!(
                "expired_at: expected infinity or a time such as 2030-01-01T00:00:00Z, got {v:?}"
            ))
        })
}

fn api_key_json(key: &str, k: &auth::ApiKey) -> Value {
    json!({
        "name": k.name,
        "api_key": key,
        "role": k.role.name(),
        "enable": k.enable,
        "expired_at": expiry_text(k.expired_at),
        "expired": k.expired(emqx_actors::clock::now_ms() / 1000),
        "created_at": expiry_text(Some(k.created_at)),
        "desc": k.desc,
    })
}

fn role_of(r: Option<&str>) -> Result<Option<Role>, ApiError> {
    r.map(|r| {
        Role::parse(r).ok_or_else(|| {
            ApiError::bad(format!(
                "role: expected administrator, viewer or publisher, got {r:?}"
            ))
        })
    })
    .transpose()
}

/// API keys (never their secrets)
#[utoipa::path(
    get,
    path = "/api/v5/api_key",
    tag = "API keys",
    operation_id = "api_keys",
    responses((status = 200, description = "Keys"))
)]
async fn api_keys(State(api): State<Shared>) -> Response {
    let list: Vec<Value> = api
        .auth
        .api_keys()
        .iter()
        .map(|(key, k)| api_key_json(key, k))
        .collect();
    Json(list).into_response()
}

fn key_not_found() -> Response {
    error(StatusCode::NOT_FOUND, "NOT_FOUND", "API key not found")
}

/// One API key
#[utoipa::path(
    get,
    path = "/api/v5/api_key/{name}",
    tag = "API keys",
    operation_id = "api_key_one",
    params(("name" = String, Path, description = "Key name")),
    responses((status = 200, description = "The key"), (status = 404, description = "NOT_FOUND: `{code, message}`"))
)]
async fn api_key_one(State(api): State<Shared>, Path(name): Path<String>) -> Response {
    match api.auth.api_key(&name) {
        Some((key, k)) => Json(api_key_json(&key, &k)).into_response(),
        None => key_not_found(),
    }
}

#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewKey {
    name: String,
    #[serde(default)]
    expired_at: Option<String>,
    #[serde(default)]
    desc: String,
    #[serde(default)]
    enable: Option<bool>,
    #[serde(default)]
    role: Option<String>,
}

/// Create an API key; the answer holds its secret, once
#[utoipa::path(
    post,
    path = "/api/v5/api_key",
    tag = "API keys",
    operation_id = "api_key_add",
    request_body = NewKey,
    responses((status = 200, description = "The key with api_secret"), (status = 400, description = "Bad parameter or body: `{code, message}`"))
)]
async fn api_key_add(
    State(api): State<Shared>,
    Body(n): Body<NewKey>,
) -> Result<Response, ApiError> {
    let role = role_of(n.role.as_deref())?.unwrap_or(Role::Administrator);
    let expiry = n
        .expired_at
        .as_deref()
        .map(parse_expiry)
        .transpose()?
        .flatten();
    let (key, secret, mut row) = api
        .auth
        .add_api_key(&n.name, role, expiry, n.desc)
        .map_err(ApiError::bad)?;
    if n.enable == Some(false) {
        let change = auth::KeyChange {
            enable: Some(false),
            ..Default::default()
        };
        if let Some(r) = api.auth.update_api_key(&n.name, change) {
            row = r.map_err(ApiError::bad)?.1;
        }
    }
    tracing::info!(target: "emqx_rs::api", "API key {} created ({})", row.name, role.name());
    let mut v = api_key_json(&key, &row);
    v["api_secret"] = json!(secret);
    Ok(Json(v).into_response())
}

#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct KeyUpdate {
    #[serde(default)]
    expired_at: Option<String>,
    #[serde(default)]
    desc: Option<String>,
    #[serde(default)]
    enable: Option<bool>,
    #[serde(default)]
    role: Option<String>,
}

/// Change an API key
#[utoipa::path(
    put,
    path = "/api/v5/api_key/{name}",
    tag = "API keys",
    operation_id = "api_key_update",
    params(("name" = String, Path, description = "Key name")),
    request_body = KeyUpdate,
    responses((status = 200, description = "The key"), (status = 400, description = "Bad parameter or body: `{code, message}`"), (status = 404, description = "NOT_FOUND: `{code, message}`"))
)]
async fn api_key_update(
    State(api): State<Shared>,
    Path(name): Path<String>,
    Body(u): Body<KeyUpdate>,
) -> Result<Response, ApiError> {
    let change = auth::KeyChange {
        role: role_of(u.role.as_deref())?,
        enable: u.enable,
        expired_at: u.expired_at.as_deref().map(parse_expiry).transpose()?,
        desc: u.desc,
    };
    Ok(match api.auth.update_api_key(&name, change) {
        None => key_not_found(),
        Some(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR", e),
        Some(Ok((key, row))) => Json(api_key_json(&key, &row)).into_response(),
    })
}

/// Revoke an API key
#[utoipa::path(
    delete,
    path = "/api/v5/api_key/{name}",
    tag = "API keys",
    operation_id = "api_key_delete",
    params(("name" = String, Path, description = "Key name")),
    responses((status = 204, description = "Revoked"), (status = 404, description = "NOT_FOUND: `{code, message}`"))
)]
async fn api_key_delete(State(api): State<Shared>, Path(name): Path<String>) -> Response {
    match api.auth.delete_api_key(&name) {
        Ok(true) => {
            tracing::info!(target: "emqx_rs::api", "API key {name} deleted");
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(false) => key_not_found(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR", e),
    }
}

// ---------------------------------------------------------------- cluster-wide answers

impl Api {
    /// The running nodes (this one first) and the stopped ones.
    /// `cluster status --json` of this node: running and stopped nodes,
    /// and while there are any, its partitions and the autoheal state.
    async fn cluster_view(&self) -> Value {
        let status = match self
            .node
            .cluster
            .call(|r| SvcMsg::Status(true, r), Some(NODE_TIMEOUT))
            .await
        {
            Ok(ractor::rpc::CallResult::Success(s)) => s,
            _ => String::new(),
        };
        serde_json::from_str(&status).unwrap_or(Value::Null)
    }

    async fn members(&self) -> (Vec<String>, Vec<String>) {
        let v = self.cluster_view().await;
        self.members_of(&v)
    }

    /// Running (this node always among them) and stopped members in a view
    /// from [`Api::cluster_view`].
    fn members_of(&self, v: &Value) -> (Vec<String>, Vec<String>) {
        let list = |k: &str| -> Vec<String> {
            v[k].as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut running = list("running_nodes");
        if !running.contains(&self.node.name) {
            running.push(self.node.name.clone());
        }
        running.sort();
        (running, list("stopped_nodes"))
    }

    /// Asks `node` (this one or a peer).
    async fn ask(&self, node: &str, call: &Call) -> Result<Value, String> {
        if node == self.node.name {
            return Ok(mgmt::answer(&self.node, call).await);
        }
        let req = serde_json::to_string(call).map_err(|e| e.to_string())?;
        match call_control(node, ControlKind::Api, req, NODE_TIMEOUT).await {
            Some(s) => {
                serde_json::from_str(&s).map_err(|e| format!("node {node}: bad answer: {e}"))
            }
            None => Err(format!("node {node} is not reachable or did not answer")),
        }
    }

    /// Asks every running node at once; `(node, answer)` sorted by node.
    async fn ask_all(&self, call: &Call) -> Result<Vec<(String, Value)>, ApiError> {
        let (running, _) = self.members().await;
        let answers =
            futures_util::future::join_all(running.iter().map(|n| self.ask(n, call))).await;
        running
            .into_iter()
            .zip(answers)
            .map(|(n, a)| match a {
                Ok(v) => Ok((n, v)),
                Err(e) => Err(ApiError::unavailable(e)),
            })
            .collect()
    }
}

/// Every node of the cluster
#[utoipa::path(
    get,
    path = "/api/v5/nodes",
    tag = "Nodes",
    operation_id = "nodes",
    responses((status = 200, description = "One object per node"), (status = 503, description = "A running node did not answer"))
)]
async fn nodes(State(api): State<Shared>) -> Response {
    let (_, stopped) = api.members().await;
    let mut all = match api.ask_all(&Call::Node).await {
        Ok(v) => v.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
        Err(r) => return r.into_response(),
    };
    for n in stopped {
        all.push(json!({"node": n, "node_status": "stopped"}));
    }
    Json(all).into_response()
}

/// One node
#[utoipa::path(
    get,
    path = "/api/v5/nodes/{node}",
    tag = "Nodes",
    operation_id = "node_one",
    params(("node" = String, Path, description = "Node name")),
    responses((status = 200, description = "The node"), (status = 404, description = "No such node: `{code, message}`"), (status = 503, description = "A running node did not answer"))
)]
async fn node_one(State(api): State<Shared>, Path(node): Path<String>) -> Response {
    let (running, stopped) = api.members().await;
    if running.contains(&node) {
        match api.ask(&node, &Call::Node).await {
            Ok(v) => Json(v).into_response(),
            Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, "SERVICE_UNAVAILABLE", e),
        }
    } else if stopped.contains(&node) {
        Json(json!({"node": node, "node_status": "stopped"})).into_response()
    } else {
        error(StatusCode::NOT_FOUND, "NOT_FOUND", "Node not found")
    }
}

/// The cluster's name and members
#[utoipa::path(
    get,
    path = "/api/v5/cluster",
    tag = "Cluster",
    operation_id = "cluster",
    responses((status = 200, description = "`{name, nodes, self, partitions, autoheal}`: the partitions this node sees and, while there are any, the autoheal state (`pending`, `off`, `restarting this node`, `restarting the minority`)"))
)]
async fn cluster(State(api): State<Shared>) -> Response {
    let view = api.cluster_view().await;
    let (mut running, stopped) = api.members_of(&view);
    running.extend(stopped);
    running.sort();
    Json(json!({
        "name": api.cluster_name,
        "nodes": running,
        "self": api.node.name,
        "partitions": view.get("partitions").cloned().unwrap_or(json!([])),
        "autoheal": view.get("autoheal").cloned().unwrap_or(Value::Null),
    }))
    .into_response()
}

/// Remove a node from the cluster
#[utoipa::path(
    delete,
    path = "/api/v5/cluster/{node}/force_leave",
    tag = "Cluster",
    operation_id = "force_leave",
    params(("node" = String, Path, description = "Node name")),
    responses((status = 204, description = "Removed"), (status = 400, description = "Bad parameter or body: `{code, message}`"), (status = 503, description = "A running node did not answer"))
)]
async fn force_leave(State(api): State<Shared>, Path(node): Path<String>) -> Response {
    if node == api.node.name {
        return bad_request("cannot remove the node answering this request");
    }
    let t = node.clone();
    match api
        .node
        .cluster
        .call(|r| SvcMsg::ForceLeave(t, r), Some(NODE_TIMEOUT))
        .await
    {
        Ok(ractor::rpc::CallResult::Success(out)) if out.starts_with("Remove") => {
            tracing::warn!(target: "emqx_rs::api", "node {node} removed from the cluster");
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(ractor::rpc::CallResult::Success(out)) => {
            let why = out
                .trim()
                .rsplit(": ")
                .next()
                .unwrap_or("failed")
                .to_string();
            bad_request(why)
        }
        _ => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "SERVICE_UNAVAILABLE",
            "the cluster service did not answer",
        ),
    }
}

/// How long an invitation may take by default, and at most.
const INVITE_TIMEOUT: Duration = Duration::from_secs(15);
const INVITE_TIMEOUT_MAX: Duration = Duration::from_secs(300);

#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Invitation {
    /// How long to wait for the node to join: `"15s"` or milliseconds.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    timeout: Option<Value>,
}

fn invite_timeout(v: Option<&Value>) -> Result<Duration, String> {
    let t = match v {
        None => return Ok(INVITE_TIMEOUT),
        Some(Value::Number(n)) => n.as_u64().map(Duration::from_millis),
        Some(Value::String(s)) => humantime::parse_duration(s).ok(),
        Some(_) => None,
    };
    match t {
        Some(t) if !t.is_zero() && t <= INVITE_TIMEOUT_MAX => Ok(t),
        _ => Err(format!(
            "timeout: expected a duration such as \"15s\" or milliseconds, at most 5 minutes, got {}",
            v.map_or(String::new(), Value::to_string)
        )),
    }
}

/// Invite a node to join this node's cluster
///
/// The invited node runs `cluster join` toward the node answering, as if
/// an operator had typed it there: it leaves its own cluster, if any, and
/// joins this one. The node answering reaches it as `emqx-rs ctl` does
/// (the inter-node port its name implies, the cookie, `cluster.proto_dist`),
/// from a separate process, so a node that is not a member never meets
/// this node's cluster state.
#[utoipa::path(
    put,
    path = "/api/v5/cluster/{node}/invite",
    tag = "Cluster",
    operation_id = "invite",
    params(("node" = String, Path, description = "The node to invite, `name@host`")),
    request_body(content = Option<Invitation>, description = "Optional: `{\"timeout\": \"15s\"}`"),
    responses((status = 200, description = "The node joined"), (status = 400, description = "Bad name or timeout, a member already, or the join failed (the reason, as `ctl cluster join` says it): `{code, message}`"))
)]
async fn invite(
    State(api): State<Shared>,
    Path(node): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let inv: Invitation = if body.iter().all(u8::is_ascii_whitespace) {
        Invitation { timeout: None }
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::bad(format!("body: {e}")))?
    };
    let timeout = invite_timeout(inv.timeout.as_ref()).map_err(ApiError::bad)?;
    let well_formed = node.split_once('@').is_some_and(|(n, h)| {
        !n.is_empty()
            && !h.is_empty()
            && node
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '@' | '.' | '-' | '_'))
    });
    if !well_formed {
        return Err(ApiError::bad(format!(
            "node: expected name@host, got {node:?}"
        )));
    }
    if node == api.node.name {
        return Err(ApiError::bad(
            "cannot invite the node answering this request",
        ));
    }
    let (running, _) = api.members().await;
    if running.contains(&node) {
        return Err(ApiError::bad(format!("{node} is already in the cluster")));
    }
    let exe = std::env::current_exe()
        .map_err(|e| ApiError::bad(format!("cannot find this program to reach {node}: {e}")))?;
    let mut cmd = tokio::process::Command::new(exe);
    if let Some(f) = &api.config_file {
        cmd.arg("-config").arg(f);
    }
    let port =
        emqx_actors::cluster::service::dist_port_of(node.split_once('@').map_or("", |(n, _)| n));
    cmd.args(["-name", &node, "ctl", "cluster", "join", &api.node.name])
        .env("EMQX_NODE__COOKIE", json!(api.cookie).to_string())
        .env("EMQX_NODE__DIST_LISTEN_PORT", port.to_string())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    tracing::warn!(target: "emqx_rs::api", "inviting {node} to join the cluster");
    let out = match tokio::time::timeout(timeout, cmd.output()).await {
        Err(_) => {
            return Err(ApiError::bad(format!(
                "{node} did not join within {}",
                humantime::format_duration(timeout)
            )))
        }
        Ok(Err(e)) => return Err(ApiError::bad(format!("cannot reach {node}: {e}"))),
        Ok(Ok(o)) => o,
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && text.starts_with("Join the cluster successfully") {
        tracing::warn!(target: "emqx_rs::api", "{node} joined the cluster on invitation");
        return Ok(StatusCode::OK.into_response());
    }
    let why = text
        .lines()
        .next()
        .unwrap_or("no answer")
        .trim()
        .to_string();
    tracing::warn!(target: "emqx_rs::api", "invitation of {node} failed: {why}");
    Err(ApiError::bad(format!("{node}: {why}")))
}

/// `?aggregate=true`: one object summed over the nodes; else one object per
/// node with its `node`.
async fn per_node_numbers(api: &Api, call: Call, q: &HashMap<String, String>) -> Response {
    let aggregate = match q.get("aggregate").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return bad_request(format!("aggregate: expected true or false, got {other:?}"))
        }
    };
    let answers = match api.ask_all(&call).await {
        Ok(a) => a,
        Err(r) => return r.into_response(),
    };
    if aggregate {
        let mut sums: BTreeMap<String, i64> = BTreeMap::new();
        for (_, v) in &answers {
            if let Some(o) = v.as_object() {
                for (k, x) in o {
                    let x = x.as_i64().unwrap_or(0);
                    let sum = sums.entry(k.clone()).or_default();
                    if mgmt::CLUSTER_WIDE_STATS.contains(&k.as_str()) {
                        *sum = (*sum).max(x);
                    } else {
                        *sum += x;
                    }
                }
            }
        }
        return Json(sums).into_response();
    }
    let list: Vec<Value> = answers
        .into_iter()
        .map(|(n, mut v)| {
            if let Some(o) = v.as_object_mut() {
                o.insert("node".into(), json!(n));
            }
            v
        })
        .collect();
    Json(list).into_response()
}

/// Stats per node, or summed
#[utoipa::path(
    get,
    path = "/api/v5/stats",
    tag = "Metrics",
    operation_id = "stats",
    params(("aggregate" = Option<bool>, Query, description = "`true` to sum over the nodes")),
    responses((status = 200, description = "Stats"), (status = 400, description = "Bad parameter or body: `{code, message}`"), (status = 503, description = "A running node did not answer"))
)]
async fn stats(State(api): State<Shared>, Query(q): Query<HashMap<String, String>>) -> Response {
    per_node_numbers(&api, Call::Stats, &q).await
}

/// Metrics per node, or summed
#[utoipa::path(
    get,
    path = "/api/v5/metrics",
    tag = "Metrics",
    operation_id = "metrics",
    params(("aggregate" = Option<bool>, Query, description = "`true` to sum over the nodes")),
    responses((status = 200, description = "Metrics"), (status = 400, description = "Bad parameter or body: `{code, message}`"), (status = 503, description = "A running node did not answer"))
)]
async fn metrics(State(api): State<Shared>, Query(q): Query<HashMap<String, String>>) -> Response {
    per_node_numbers(&api, Call::Metrics, &q).await
}

// ---------------------------------------------------------------- clients

/// Checks the client filters EMQX's `GET /clients` takes.
fn check_client_query(q: &HashMap<String, String>) -> Result<(), ApiError> {
    for (k, v) in q {
        match k.as_str() {
            "conn_state" if v == "connected" || v == "disconnected" => {}
            "conn_state" => {
                return Err(ApiError::bad(
                    "conn_state: expected connected or disconnected",
                ))
            }
            "proto_ver" if v.parse::<u8>().is_ok() => {}
            "proto_ver" => return Err(ApiError::bad("proto_ver: expected 3, 4 or 5")),
            "clean_start" if v == "true" || v == "false" => {}
            "clean_start" => return Err(ApiError::bad("clean_start: expected true or false")),
            _ => {}
        }
    }
    Ok(())
}

/// Whether client `c` passes the (checked) filters.
fn client_matches(c: &Value, q: &HashMap<String, String>) -> bool {
    let s = |k: &str| c[k].as_str().unwrap_or("");
    q.iter().all(|(k, want)| match k.as_str() {
        "clientid" => s("clientid") == want,
        "username" => s("username") == want,
        "node" => s("node") == want,
        "ip_address" => s("ip_address") == want,
        "like_clientid" => s("clientid").contains(want.as_str()),
        "like_username" => s("username").contains(want.as_str()),
        "conn_state" => s("conn_state") == want,
        "proto_ver" => c["proto_ver"].as_u64().map(|v| v.to_string()).as_deref() == Some(want),
        "clean_start" => c["clean_start"].as_bool() == Some(want == "true"),
        _ => true,
    })
}

/// Clients of every node, paged
#[utoipa::path(
    get,
    path = "/api/v5/clients",
    tag = "Clients",
    operation_id = "clients",
    params(Paging, ("clientid" = Option<String>, Query, description = "Exact client id"), ("username" = Option<String>, Query, description = "Exact user name"), ("node" = Option<String>, Query, description = "Node name"), ("ip_address" = Option<String>, Query, description = "Peer address"), ("like_clientid" = Option<String>, Query, description = "Part of the client id"), ("like_username" = Option<String>, Query, description = "Part of the user name"), ("conn_state" = Option<String>, Query, description = "`connected` or `disconnected`"), ("proto_ver" = Option<u8>, Query, description = "3, 4 or 5"), ("clean_start" = Option<bool>, Query, description = "true or false")),
    responses((status = 200, description = "`{data, meta}`"), (status = 400, description = "Bad parameter or body: `{code, message}`"), (status = 503, description = "A running node did not answer"))
)]
async fn clients(
    State(api): State<Shared>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let (page, limit) = paging(
        &q,
        &[
            "clientid",
            "username",
            "node",
            "ip_address",
            "like_clientid",
            "like_username",
            "conn_state",
            "proto_ver",
            "clean_start",
        ],
    )?;
    check_client_query(&q)?;
    let answers = api.ask_all(&Call::Clients).await?;
    let mut rows = Vec::new();
    for (_, v) in answers {
        if let Value::Array(list) = v {
            rows.extend(list.into_iter().filter(|c| client_matches(c, &q)));
        }
    }
    // Stable across pages: node, then client id.
    sort_rows(&mut rows, &["node", "clientid"]);
    Ok(page_of(
        rows.into_iter().map(with_dates).collect(),
        page,
        limit,
    ))
}

/// A client as the API shows it: `created_at` / `connected_at` /
/// `disconnected_at` as RFC 3339 times, its subscriptions left to their
/// own endpoint.
fn with_dates(mut c: Value) -> Value {
    if let Some(o) = c.as_object_mut() {
        o.remove("subscriptions");
    }
    for k in ["created_at", "connected_at", "disconnected_at"] {
        if let Some(ms) = c[k].as_u64() {
            let t = std::time::UNIX_EPOCH + Duration::from_millis(ms);
            c[k] = json!(humantime::format_rfc3339_millis(t).to_string());
        }
    }
    c
}

/// The client, from whichever node holds it.
async fn find_client(api: &Api, id: &str) -> Result<Option<(String, Value)>, ApiError> {
    let call = Call::Client {
        clientid: id.to_string(),
    };
    let answers = api.ask_all(&call).await?;
    Ok(answers.into_iter().find(|(_, v)| !v.is_null()))
}

fn client_not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "CLIENTID_NOT_FOUND",
        "Client ID not found",
    )
}

/// One client, wherever it is
#[utoipa::path(
    get,
    path = "/api/v5/clients/{clientid}",
    tag = "Clients",
    operation_id = "client_one",
    params(("clientid" = String, Path, description = "Client id")),
    responses((status = 200, description = "The client"), (status = 404, description = "CLIENTID_NOT_FOUND: `{code, message}`"), (status = 503, description = "A running node did not answer"))
)]
async fn client_one(State(api): State<Shared>, Path(id): Path<String>) -> Response {
    match find_client(&api, &id).await {
        Ok(Some((_, c))) => Json(with_dates(c)).into_response(),
        Ok(None) => client_not_found(),
        Err(r) => r.into_response(),
    }
}

/// Kick a client: close its connection and drop its session
#[utoipa::path(
    delete,
    path = "/api/v5/clients/{clientid}",
    tag = "Clients",
    operation_id = "kick",
    params(("clientid" = String, Path, description = "Client id")),
    responses((status = 204, description = "Kicked"), (status = 404, description = "CLIENTID_NOT_FOUND: `{code, message}`"), (status = 503, description = "A running node did not answer"))
)]
async fn kick(State(api): State<Shared>, Path(id): Path<String>) -> Response {
    let node = match find_client(&api, &id).await {
        Ok(Some((n, _))) => n,
        Ok(None) => return client_not_found(),
        Err(r) => return r.into_response(),
    };
    let call = Call::Kick {
        clientid: id.clone(),
    };
    match api.ask(&node, &call).await {
        Ok(Value::Bool(true)) => {
            tracing::info!(target: "emqx_rs::api", "client {id} kicked on {node}");
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(_) => client_not_found(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, "SERVICE_UNAVAILABLE", e),
    }
}

/// A client's subscriptions
#[utoipa::path(
    get,
    path = "/api/v5/clients/{clientid}/subscriptions",
    tag = "Clients",
    operation_id = "client_subscriptions",
    params(("clientid" = String, Path, description = "Client id")),
    responses((status = 200, description = "Subscriptions"), (status = 404, description = "CLIENTID_NOT_FOUND: `{code, message}`"), (status = 503, description = "A running node did not answer"))
)]
async fn client_subscriptions(State(api): State<Shared>, Path(id): Path<String>) -> Response {
    match find_client(&api, &id).await {
        Ok(Some((_, c))) => Json(c["subscriptions"].clone()).into_response(),
        Ok(None) => client_not_found(),
        Err(r) => r.into_response(),
    }
}

#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct SubReq {
    topic: String,
    #[serde(default)]
    qos: u8,
    #[serde(default)]
    nl: u8,
    #[serde(default)]
    rap: u8,
    #[serde(default)]
    rh: u8,
}

#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct UnsubReq {
    topic: String,
}

/// A topic filter as a client may send it (`$share/<group>/...` too).
fn check_filter(topic: &str) -> Result<(), ApiError> {
    let inner = match emqx_mqtt::topic::parse_shared(topic) {
        Ok(Some((_, f))) => f,
        Ok(None) => topic,
        Err(e) => return Err(ApiError::bad(format!("topic: {e:?}"))),
    };
    emqx_mqtt::topic::validate_topic_filter(inner, 128)
        .map_err(|e| ApiError::bad(format!("topic: {e:?}")))
}

fn sub_call(clientid: &str, r: &SubReq) -> Result<Call, ApiError> {
    check_filter(&r.topic)?;
    let bit = |k: &str, v: u8| match v {
        0 | 1 => Ok(v == 1),
        _ => Err(ApiError::bad(format!("{k}: expected 0 or 1, got {v}"))),
    };
    if r.qos > 2 || r.rh > 2 {
        return Err(ApiError::bad("qos and rh: expected 0, 1 or 2"));
    }
    Ok(Call::Subscribe {
        clientid: clientid.to_string(),
        topic: r.topic.clone(),
        qos: r.qos,
        nl: bit("nl", r.nl)?,
        rap: bit("rap", r.rap)?,
        rh: r.rh,
    })
}

/// Has the node holding a client carry out `calls` for it, in order; `None`
/// if no node holds the client (or it left meanwhile).
async fn on_behalf(
    api: &Api,
    clientid: &str,
    calls: &[Call],
) -> Result<Option<(String, Vec<Value>)>, ApiError> {
    let Some((node, _)) = find_client(api, clientid).await? else {
        return Ok(None);
    };
    let mut out = Vec::new();
    for c in calls {
        match api.ask(&node, c).await {
            Ok(Value::Null) => return Ok(None),
            Ok(v) => out.push(v),
            Err(e) => return Err(ApiError::unavailable(e)),
        }
    }
    Ok(Some((node, out)))
}

/// The subscriptions made, as EMQX answers them, or the first refusal;
/// `None` if no node holds the client.
async fn do_subscribe(
    api: &Api,
    clientid: &str,
    reqs: &[SubReq],
) -> Result<Option<Vec<Value>>, ApiError> {
    let calls = reqs
        .iter()
        .map(|r| sub_call(clientid, r))
        .collect::<Result<Vec<_>, _>>()?;
    let Some((node, answers)) = on_behalf(api, clientid, &calls).await? else {
        return Ok(None);
    };
    if let Some(e) = answers.iter().find_map(|a| a["error"].as_str()) {
        return Err(ApiError::bad(e.to_string()));
    }
    tracing::info!(
        target: "emqx_rs::api",
        "client {clientid} subscribed on {node} to {} filter(s)",
        reqs.len()
    );
    Ok(Some(
        reqs.iter()
            .map(|r| {
                json!({"clientid": clientid, "topic": r.topic, "qos": r.qos,
                       "nl": r.nl, "rap": r.rap, "rh": r.rh, "node": node})
            })
            .collect(),
    ))
}

/// Subscribe a client on its behalf
#[utoipa::path(
    post,
    path = "/api/v5/clients/{clientid}/subscribe",
    tag = "Clients",
    operation_id = "subscribe",
    params(("clientid" = String, Path, description = "Client id")),
    request_body = SubReq,
    responses((status = 200, description = "The subscription"), (status = 400, description = "Bad parameter or body: `{code, message}`"), (status = 404, description = "CLIENTID_NOT_FOUND: `{code, message}`"), (status = 503, description = "A running node did not answer"))
)]
async fn subscribe(
    State(api): State<Shared>,
    Path(id): Path<String>,
    Body(r): Body<SubReq>,
) -> Result<Response, ApiError> {
    Ok(
        match do_subscribe(&api, &id, std::slice::from_ref(&r)).await? {
            Some(mut v) => Json(v.swap_remove(0)).into_response(),
            None => client_not_found(),
        },
    )
}

/// Subscribe a client to several filters
#[utoipa::path(
    post,
    path = "/api/v5/clients/{clientid}/subscribe/bulk",
    tag = "Clients",
    operation_id = "subscribe_bulk",
    params(("clientid" = String, Path, description = "Client id")),
    request_body = Vec<SubReq>,
    responses((status = 200, description = "The subscriptions"), (status = 400, description = "Bad parameter or body: `{code, message}`"), (status = 404, description = "CLIENTID_NOT_FOUND: `{code, message}`"), (status = 503, description = "A running node did not answer"))
)]
async fn subscribe_bulk(
    State(api): State<Shared>,
    Path(id): Path<String>,
    Body(rs): Body<Vec<SubReq>>,
) -> Result<Response, ApiError> {
    Ok(match do_subscribe(&api, &id, &rs).await? {
        Some(v) => Json(v).into_response(),
        None => client_not_found(),
    })
}

async fn do_unsubscribe(
    api: &Api,
    clientid: &str,
    topics: &[String],
) -> Result<Response, ApiError> {
    for t in topics {
        check_filter(t)?;
    }
    let calls: Vec<Call> = topics
        .iter()
        .map(|t| Call::Unsubscribe {
            clientid: clientid.to_string(),
            topic: t.clone(),
        })
        .collect();
    match on_behalf(api, clientid, &calls).await? {
        None => Ok(client_not_found()),
        Some(_) => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

/// Unsubscribe a client on its behalf
#[utoipa::path(
    post,
    path = "/api/v5/clients/{clientid}/unsubscribe",
    tag = "Clients",
    operation_id = "unsubscribe",
    params(("clientid" = String, Path, description = "Client id")),
    request_body = UnsubReq,
    responses((status = 204, description = "Unsubscribed"), (status = 400, description = "Bad parameter or body: `{code, message}`"), (status = 404, description = "CLIENTID_NOT_FOUND: `{code, message}`"), (status = 503, description = "A running node did not answer"))
)]
async fn unsubscribe(
    State(api): State<Shared>,
    Path(id): Path<String>,
    Body(r): Body<UnsubReq>,
) -> Result<Response, ApiError> {
    do_unsubscribe(&api, &id, &[r.topic]).await
}

/// Unsubscribe a client from several filters
#[utoipa::path(
    post,
    path = "/api/v5/clients/{clientid}/unsubscribe/bulk",
    tag = "Clients",
    operation_id = "unsubscribe_bulk",
    params(("clientid" = String, Path, description = "Client id")),
    request_body = Vec<UnsubReq>,
    responses((status = 204, description = "Unsubscribed"), (status = 400, description = "Bad parameter or body: `{code, message}`"), (status = 404, description = "CLIENTID_NOT_FOUND: `{code, message}`"), (status = 503, description = "A running node did not answer"))
)]
async fn unsubscribe_bulk(
    State(api): State<Shared>,
    Path(id): Path<String>,
    Body(rs): Body<Vec<UnsubReq>>,
) -> Result<Response, ApiError> {
    let topics: Vec<String> = rs.into_iter().map(|r| r.topic).collect();
    do_unsubscribe(&api, &id, &topics).await
}

/// Every subscription, paged
#[utoipa::path(
    get,
    path = "/api/v5/subscriptions",
    tag = "Subscriptions",
    operation_id = "subscriptions",
    params(Paging, ("clientid" = Option<String>, Query, description = "Client id"), ("topic" = Option<String>, Query, description = "Exact filter"), ("qos" = Option<u8>, Query, description = "0, 1 or 2"), ("node" = Option<String>, Query, description = "Node name"), ("match_topic" = Option<String>, Query, description = "Subscriptions whose filter matches this topic"), ("share_group" = Option<String>, Query, description = "Shared subscription group")),
    responses((status = 200, description = "`{data, meta}`"), (status = 400, description = "Bad parameter or body: `{code, message}`"), (status = 503, description = "A running node did not answer"))
)]
async fn subscriptions(
    State(api): State<Shared>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let (page, limit) = paging(
        &q,
        &[
            "clientid",
            "topic",
            "qos",
            "node",
            "match_topic",
            "share_group",
        ],
    )?;
    if let Some(m) = q.get("match_topic") {
        if emqx_mqtt::topic::validate_topic_filter(m, 128).is_err() {
            return Err(ApiError::bad(format!(
                "match_topic: not a topic filter: {m:?}"
            )));
        }
    }
    let answers = api.ask_all(&Call::Clients).await?;
    let mut rows = Vec::new();
    for (_, v) in answers {
        for c in v.as_array().into_iter().flatten() {
            rows.extend(c["subscriptions"].as_array().into_iter().flatten().cloned());
        }
    }
    rows.retain(|s| {
        let t = s["topic"].as_str().unwrap_or("");
        q.get("clientid")
            .is_none_or(|v| s["clientid"].as_str() == Some(v))
            && q.get("topic").is_none_or(|v| t == v)
            && q.get("node").is_none_or(|v| s["node"].as_str() == Some(v))
            && q.get("qos").is_none_or(|v| {
                s["qos"].as_u64().map(|x| x.to_string()).as_deref() == Some(v.as_str())
            })
            && q.get("match_topic")
                .is_none_or(|m| emqx_mqtt::topic::matches(m, t) || emqx_mqtt::topic::matches(t, m))
            && q.get("share_group").is_none_or(
                |g| matches!(emqx_mqtt::topic::parse_shared(t), Ok(Some((group, _))) if group == g),
            )
    });
    sort_rows(&mut rows, &["node", "clientid", "topic"]);
    Ok(page_of(rows, page, limit))
}

/// Routes: which node needs which filter
#[utoipa::path(
    get,
    path = "/api/v5/topics",
    tag = "Subscriptions",
    operation_id = "topics",
    params(Paging, ("topic" = Option<String>, Query, description = "Exact filter"), ("node" = Option<String>, Query, description = "Node name")),
    responses((status = 200, description = "`{data, meta}`"), (status = 400, description = "Bad parameter or body: `{code, message}`"))
)]
async fn topics(
    State(api): State<Shared>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let (page, limit) = paging(&q, &["topic", "node"])?;
    let node = &api.node;
    let mut r = node.ctx.broker.routes();
    r.extend(node.view.routes.read().all());
    r.sort();
    r.dedup();
    let rows: Vec<Value> = r
        .into_iter()
        .filter(|(t, n)| {
            q.get("topic").is_none_or(|v| v == t) && q.get("node").is_none_or(|v| v == n)
        })
        .map(|(t, n)| json!({"topic": t, "node": n}))
        .collect();
    Ok(page_of(rows, page, limit))
}

// ---------------------------------------------------------------- publish

#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct PublishReq {
    topic: String,
    #[serde(default)]
    payload: String,
    #[serde(default)]
    qos: u8,
    #[serde(default)]
    retain: bool,
    #[serde(default)]
    payload_encoding: Option<String>,
    #[serde(default)]
    clientid: Option<String>,
}

/// Publishes one message; `(status, body)` as EMQX answers it.
fn publish_one(api: &Api, p: PublishReq) -> (StatusCode, Value) {
    let bad = |m: String| {
        (
            StatusCode::BAD_REQUEST,
            json!({"code": "BAD_REQUEST", "message": m}),
        )
    };
    if let Err(e) = emqx_mqtt::topic::validate_topic_name(&p.topic, 128) {
        return bad(format!("topic: {e:?}"));
    }
    let Some(qos) = emqx_mqtt::packet::QoS::from_u8(p.qos) else {
        return bad(format!("qos: expected 0, 1 or 2, got {}", p.qos));
    };
    let payload = match p.payload_encoding.as_deref() {
        None | Some("plain") => p.payload.into_bytes(),
        Some("base64") => match data_encoding::BASE64.decode(p.payload.as_bytes()) {
            Ok(b) => b,
            Err(e) => return bad(format!("payload: not base64: {e}")),
        },
        Some(other) => {
            return bad(format!(
                "payload_encoding: expected plain or base64, got {other:?}"
            ))
        }
    };
    let mut m = emqx_mqtt::message::Message::system(
        p.topic,
        payload,
        p.retain,
        emqx_actors::clock::now_ms(),
    );
    m.qos = qos;
    if let Some(c) = p.clientid {
        m.from = Arc::from(c.as_str());
    }
    let id = format!("{:032X}", m.id);
    let published = api.node.ctx.broker.publish(m);
    if published.subscribers == 0 {
        (
            StatusCode::ACCEPTED,
            json!({"id": id, "reason_code": 16, "message": "no_matching_subscribers"}),
        )
    } else {
        (StatusCode::OK, json!({"id": id}))
    }
}

/// Publish a message
#[utoipa::path(
    post,
    path = "/api/v5/publish",
    tag = "Publish",
    operation_id = "publish",
    request_body = PublishReq,
    responses((status = 200, description = "Delivered to a subscriber"), (status = 202, description = "No subscriber (reason_code 16)"), (status = 400, description = "Bad parameter or body: `{code, message}`"))
)]
async fn publish(State(api): State<Shared>, Body(p): Body<PublishReq>) -> Response {
    let (status, v) = publish_one(&api, p);
    (status, Json(v)).into_response()
}

/// Publish several messages
#[utoipa::path(
    post,
    path = "/api/v5/publish/bulk",
    tag = "Publish",
    operation_id = "publish_bulk",
    request_body = Vec<PublishReq>,
    responses((status = 200, description = "All delivered to someone"), (status = 202, description = "Some had no subscriber"), (status = 400, description = "Bad parameter or body: `{code, message}`"))
)]
async fn publish_bulk(State(api): State<Shared>, Body(list): Body<Vec<PublishReq>>) -> Response {
    let mut out = Vec::new();
    let mut all_ok = true;
    for p in list {
        let (status, v) = publish_one(&api, p);
        all_ok &= status == StatusCode::OK;
        out.push(v);
    }
    let status = if all_ok {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    (status, Json(out)).into_response()
}

// ---------------------------------------------------------------- retained

fn retained_json(m: &emqx_mqtt::message::Message, with_payload: bool) -> Value {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(m.timestamp_ms);
    let mut v = json!({
        "topic": m.topic.as_ref(),
        "qos": m.qos as u8,
        "from_clientid": m.from.as_ref(),
        "publish_at": humantime::format_rfc3339_millis(t).to_string(),
        "msgid": format!("{:032X}", m.id),
    });
    if with_payload {
        v["payload"] = json!(data_encoding::BASE64.encode(&m.payload));
    }
    v
}

/// Retained messages, paged
#[utoipa::path(
    get,
    path = "/api/v5/mqtt/retainer/messages",
    tag = "Retainer",
    operation_id = "retained_list",
    params(Paging),
    responses((status = 200, description = "`{data, meta}`"), (status = 400, description = "Bad parameter or body: `{code, message}`"))
)]
async fn retained_list(
    State(api): State<Shared>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let (page, limit) = paging(&q, &[])?;
    let mut all = api.node.ctx.broker.retainer.all();
    all.sort_by(|a, b| a.topic.cmp(&b.topic));
    let rows = all.iter().map(|m| retained_json(m, false)).collect();
    Ok(page_of(rows, page, limit))
}

/// One retained message with its payload
#[utoipa::path(
    get,
    path = "/api/v5/mqtt/retainer/message/{topic}",
    tag = "Retainer",
    operation_id = "retained_one",
    params(("topic" = String, Path, description = "Topic, URL-encoded")),
    responses((status = 200, description = "The message"), (status = 404, description = "No retained message: `{code, message}`"))
)]
async fn retained_one(State(api): State<Shared>, Path(topic): Path<String>) -> Response {
    let found = api
        .node
        .ctx
        .broker
        .retainer
        .all()
        .into_iter()
        .find(|m| *m.topic == *topic);
    match found {
        Some(m) => Json(retained_json(&m, true)).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "Viewed message doesn't exist",
        ),
    }
}

/// Clear a retained message on every node
#[utoipa::path(
    delete,
    path = "/api/v5/mqtt/retainer/message/{topic}",
    tag = "Retainer",
    operation_id = "retained_delete",
    params(("topic" = String, Path, description = "Topic, URL-encoded")),
    responses((status = 204, description = "Cleared"), (status = 404, description = "No retained message: `{code, message}`"))
)]
async fn retained_delete(State(api): State<Shared>, Path(topic): Path<String>) -> Response {
    if !api.node.ctx.broker.clear_retained(&topic) {
        return error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "Viewed message doesn't exist",
        );
    }
    StatusCode::NO_CONTENT.into_response()
}

// ---------------------------------------------------------------- listeners

/// Every node's answer for its listeners, merged by listener id: the
/// settings of the first node, `status` summed over the nodes (running
/// when it runs on all of them) and each node's own `node_status`.
async fn listener_rows(api: &Api) -> Result<Vec<Value>, ApiError> {
    let answers = api.ask_all(&Call::Listeners).await?;
    let mut by_id: BTreeMap<String, (Value, Vec<Value>)> = BTreeMap::new();
    for (node, list) in answers {
        for l in list.as_array().cloned().unwrap_or_default() {
            let Some(id) = l["id"].as_str().map(str::to_string) else {
                continue;
            };
            let status = json!({
                "running": l["running"],
                "current_connections": l["current_connections"],
                "max_connections": l["max_connections"],
            });
            let e = by_id.entry(id).or_insert_with(|| (l.clone(), Vec::new()));
            e.1.push(json!({"node": node, "status": status}));
        }
    }
    Ok(by_id
        .into_values()
        .map(|(mut l, nodes)| {
            let running = nodes.iter().all(|n| n["status"]["running"] == json!(true));
            let current: u64 = nodes
                .iter()
                .filter_map(|n| n["status"]["current_connections"].as_u64())
                .sum();
            let max = if nodes
                .iter()
                .all(|n| n["status"]["max_connections"].is_u64())
            {
                json!(nodes
                    .iter()
                    .filter_map(|n| n["status"]["max_connections"].as_u64())
                    .sum::<u64>())
            } else {
                json!("infinity")
            };
            if let Some(o) = l.as_object_mut() {
                o.remove("running");
                o.remove("current_connections");
                o.insert(
                    "status".into(),
                    json!({"running": running, "current_connections": current, "max_connections": max}),
                );
                o.insert("node_status".into(), json!(nodes));
            }
            l
        })
        .collect())
}

/// Listeners of every node
#[utoipa::path(
    get,
    path = "/api/v5/listeners",
    tag = "Listeners",
    operation_id = "listeners",
    params(("type" = Option<String>, Query, description = "Only listeners of this type: tcp, ssl, ws, wss or quic")),
    responses((status = 200, description = "One object per listener id, with `status` for the cluster and `node_status` per node"), (status = 400, description = "Bad parameter or body: `{code, message}`"), (status = 503, description = "A running node did not answer"))
)]
async fn listeners(
    State(api): State<Shared>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    if let Some(k) = q.keys().find(|k| *k != "type") {
        return Err(ApiError::bad(format!("unknown parameter {k:?}")));
    }
    let kind = q.get("type").map(String::as_str);
    if let Some(k) = kind.filter(|k| !matches!(*k, "tcp" | "ssl" | "ws" | "wss" | "quic")) {
        return Err(ApiError::bad(format!(
            "type: expected tcp, ssl, ws, wss or quic, got {k:?}"
        )));
    }
    let rows = listener_rows(&api).await?;
    let rows: Vec<Value> = rows
        .into_iter()
        .filter(|l| kind.is_none_or(|k| l["type"] == json!(k)))
        .collect();
    Ok(Json(rows).into_response())
}

/// One listener
#[utoipa::path(
    get,
    path = "/api/v5/listeners/{id}",
    tag = "Listeners",
    operation_id = "listener_one",
    params(("id" = String, Path, description = "Listener id, `type:name` (tcp:default)")),
    responses((status = 200, description = "The listener"), (status = 404, description = "No such listener: `{code, message}`"), (status = 503, description = "A running node did not answer"))
)]
async fn listener_one(
    State(api): State<Shared>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let rows = listener_rows(&api).await?;
    match rows.into_iter().find(|l| l["id"] == json!(id)) {
        Some(l) => Ok(Json(l).into_response()),
        None => Ok(error(
            StatusCode::NOT_FOUND,
            "BAD_LISTENER_ID",
            "Listener not found",
        )),
    }
}

/// Start, stop or restart a listener on every node
#[utoipa::path(
    post,
    path = "/api/v5/listeners/{id}/{action}",
    tag = "Listeners",
    operation_id = "listener_action",
    params(("id" = String, Path, description = "Listener id, `type:name` (tcp:default)"), ("action" = String, Path, description = "start, stop or restart")),
    responses((status = 200, description = "Done on every running node"), (status = 400, description = "Bad action, or a node could not do it (the port is taken): `{code, message}`"), (status = 404, description = "No such listener: `{code, message}`"), (status = 503, description = "A running node did not answer"))
)]
async fn listener_action(
    State(api): State<Shared>,
    Path((id, action)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    if crate::listeners::spec::Action::parse(&action).is_none() {
        return Err(ApiError::bad(format!(
            "action: expected start, stop or restart, got {action:?}"
        )));
    }
    let answers = api
        .ask_all(&Call::Listener {
            id: id.clone(),
            action: action.clone(),
        })
        .await?;
    if answers.iter().all(|(_, v)| v.is_null()) {
        return Ok(error(
            StatusCode::NOT_FOUND,
            "BAD_LISTENER_ID",
            "Listener not found",
        ));
    }
    let failed: Vec<String> = answers
        .iter()
        .filter_map(|(n, v)| v["error"].as_str().map(|e| format!("{n}: {e}")))
        .collect();
    if !failed.is_empty() {
        return Err(ApiError::bad(format!(
            "failed to {action} {id}: {}",
            failed.join("; ")
        )));
    }
    tracing::warn!(target: "emqx_rs::api", "listener {id}: {action} on every node");
    Ok(StatusCode::OK.into_response())
}
