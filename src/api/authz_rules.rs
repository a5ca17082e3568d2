//! The built-in database authorization source's rules over HTTP, as EMQX's
//! `/api/v5/authorization/sources/built_in_database/rules/...`: per client
//! id, per username and for all, on the replicated table `ctl acl rules`
//! writes, so a rule set through any node holds on every node.

use super::http::{page_of, paging, ApiError, Body, Paging};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use emqx_actors::authz_db::{AuthzRules, DbRule, RuleAction, RuleOwner, RulesError};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

type Rules = Option<Arc<AuthzRules>>;

/// The routes, for the guarded part of the API.
pub fn routes<S: Clone + Send + Sync + 'static>(rules: Rules) -> OpenApiRouter<S> {
    OpenApiRouter::new()
        .routes(routes!(clients_list, clients_create))
        .routes(routes!(client_get, client_replace, client_delete))
        .routes(routes!(users_list, users_create))
        .routes(routes!(user_get, user_replace, user_delete))
        .routes(routes!(all_get, all_set, all_delete))
        .with_state(rules)
}

/// Rules per clientid, paged
#[utoipa::path(
    get,
    path = "/api/v5/authorization/sources/built_in_database/rules/clients",
    tag = "Authorization",
    operation_id = "authz_clients_list",
    params(Paging, ("like_clientid" = Option<String>, Query, description = "Part of the clientid")),
    responses((status = 200, description = "`{data, meta}`"), (status = 400, description = "Bad parameter"), (status = 404, description = "No built-in database source"))
)]
async fn clients_list(
    s: State<Rules>,
    q: Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    list(s, q, Kind::Client).await
}

/// Set the rules of clientids that have none
#[utoipa::path(
    post,
    path = "/api/v5/authorization/sources/built_in_database/rules/clients",
    tag = "Authorization",
    operation_id = "authz_clients_create",
    request_body = Vec<ClientRulesDoc>,
    responses((status = 204, description = "Set"), (status = 400, description = "A bad rule, or more than max_rules"), (status = 409, description = "ALREADY_EXISTS"))
)]
async fn clients_create(s: State<Rules>, b: Body<Vec<Value>>) -> Result<Response, ApiError> {
    create(s, b, Kind::Client).await
}

/// One clientid's rules
#[utoipa::path(
    get,
    path = "/api/v5/authorization/sources/built_in_database/rules/clients/{who}",
    tag = "Authorization",
    operation_id = "authz_client_get",
    params(("who" = String, Path, description = "The clientid")),
    responses((status = 200, description = "The rules"), (status = 404, description = "No rules"))
)]
async fn client_get(s: State<Rules>, p: Path<String>) -> Result<Response, ApiError> {
    one(s, p, Kind::Client).await
}

/// Replace one clientid's rules
#[utoipa::path(
    put,
    path = "/api/v5/authorization/sources/built_in_database/rules/clients/{who}",
    tag = "Authorization",
    operation_id = "authz_client_replace",
    params(("who" = String, Path, description = "The clientid")),
    request_body = ClientRulesDoc,
    responses((status = 204, description = "Replaced"), (status = 400, description = "A bad rule"))
)]
async fn client_replace(
    s: State<Rules>,
    p: Path<String>,
    b: Body<Value>,
) -> Result<Response, ApiError> {
    replace(s, p, b, Kind::Client).await
}

/// Remove one clientid's rules
#[utoipa::path(
    delete,
    path = "/api/v5/authorization/sources/built_in_database/rules/clients/{who}",
    tag = "Authorization",
    operation_id = "authz_client_delete",
    params(("who" = String, Path, description = "The clientid")),
    responses((status = 204, description = "Removed"), (status = 404, description = "No rules"))
)]
async fn client_delete(s: State<Rules>, p: Path<String>) -> Result<Response, ApiError> {
    remove(s, p, Kind::Client).await
}

/// Rules per username, paged
#[utoipa::path(
    get,
    path = "/api/v5/authorization/sources/built_in_database/rules/users",
    tag = "Authorization",
    operation_id = "authz_users_list",
    params(Paging, ("like_username" = Option<String>, Query, description = "Part of the username")),
    responses((status = 200, description = "`{data, meta}`"), (status = 400, description = "Bad parameter"), (status = 404, description = "No built-in database source"))
)]
async fn users_list(
    s: State<Rules>,
    q: Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    list(s, q, Kind::User).await
}

/// Set the rules of usernames that have none
#[utoipa::path(
    post,
    path = "/api/v5/authorization/sources/built_in_database/rules/users",
    tag = "Authorization",
    operation_id = "authz_users_create",
    request_body = Vec<UserRulesDoc>,
    responses((status = 204, description = "Set"), (status = 400, description = "A bad rule, or more than max_rules"), (status = 409, description = "ALREADY_EXISTS"))
)]
async fn users_create(s: State<Rules>, b: Body<Vec<Value>>) -> Result<Response, ApiError> {
    create(s, b, Kind::User).await
}

/// One username's rules
#[utoipa::path(
    get,
    path = "/api/v5/authorization/sources/built_in_database/rules/users/{who}",
    tag = "Authorization",
    operation_id = "authz_user_get",
    params(("who" = String, Path, description = "The username")),
    responses((status = 200, description = "The rules"), (status = 404, description = "No rules"))
)]
async fn user_get(s: State<Rules>, p: Path<String>) -> Result<Response, ApiError> {
    one(s, p, Kind::User).await
}

/// Replace one username's rules
#[utoipa::path(
    put,
    path = "/api/v5/authorization/sources/built_in_database/rules/users/{who}",
    tag = "Authorization",
    operation_id = "authz_user_replace",
    params(("who" = String, Path, description = "The username")),
    request_body = UserRulesDoc,
    responses((status = 204, description = "Replaced"), (status = 400, description = "A bad rule"))
)]
async fn user_replace(
    s: State<Rules>,
    p: Path<String>,
    b: Body<Value>,
) -> Result<Response, ApiError> {
    replace(s, p, b, Kind::User).await
}

/// Remove one username's rules
#[utoipa::path(
    delete,
    path = "/api/v5/authorization/sources/built_in_database/rules/users/{who}",
    tag = "Authorization",
    operation_id = "authz_user_delete",
    params(("who" = String, Path, description = "The username")),
    responses((status = 204, description = "Removed"), (status = 404, description = "No rules"))
)]
async fn user_delete(s: State<Rules>, p: Path<String>) -> Result<Response, ApiError> {
    remove(s, p, Kind::User).await
}

/// A client id's rules, as the API takes them (for the document).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct ClientRulesDoc {
    clientid: String,
    rules: Vec<RuleIn>,
}

/// A username's rules, as the API takes them (for the document).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct UserRulesDoc {
    username: String,
    rules: Vec<RuleIn>,
}

#[derive(Clone, Copy)]
enum Kind {
    Client,
    User,
}

impl Kind {
    /// The JSON field naming the owner.
    fn field(self) -> &'static str {
        match self {
            Kind::Client => "clientid",
            Kind::User => "username",
        }
    }

    fn owner(self, who: &str) -> RuleOwner {
        match self {
            Kind::Client => RuleOwner::ClientId(who.to_string()),
            Kind::User => RuleOwner::Username(who.to_string()),
        }
    }

    fn who(self, o: &RuleOwner) -> Option<&str> {
        match (self, o) {
            (Kind::Client, RuleOwner::ClientId(c)) => Some(c),
            (Kind::User, RuleOwner::Username(u)) => Some(u),
            _ => None,
        }
    }
}

fn not_found(what: String) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", what)
}

fn table(r: &Rules) -> Result<&AuthzRules, ApiError> {
    r.as_deref().ok_or_else(|| {
        not_found(
            "no built-in database authorization source is configured (authorization.sources = [{type = built_in_database}])".into(),
        )
    })
}

fn rules_error(e: RulesError) -> ApiError {
    match e {
        RulesError::NotFound(_) => not_found(e.to_string()),
        RulesError::Table(_) => ApiError::unavailable(e.to_string()),
        RulesError::TooMany(..) | RulesError::Empty => ApiError::bad(e.to_string()),
    }
}

/// One rule as EMQX's API writes it.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RuleIn {
    topic: String,
    permission: String,
    action: String,
    #[serde(default)]
    qos: Option<Vec<u8>>,
    /// `true`, `false` or `"all"`.
    #[serde(default)]
    retain: Option<Value>,
}

fn rule_in(r: RuleIn) -> Result<DbRule, ApiError> {
    let allow = match r.permission.as_str() {
        "allow" => true,
        "deny" => false,
        o => {
            return Err(ApiError::bad(format!(
                "permission: allow or deny, got {o:?}"
            )))
        }
    };
    let action = match r.action.as_str() {
        "publish" => RuleAction::Publish,
        "subscribe" => RuleAction::Subscribe,
        "all" => RuleAction::All,
        o => {
            return Err(ApiError::bad(format!(
                "action: publish, subscribe or all, got {o:?}"
            )))
        }
    };
    if r.topic.is_empty() {
        return Err(ApiError::bad("topic: must not be empty"));
    }
    if let Some(q) = &r.qos {
        if q.is_empty() || q.iter().any(|q| *q > 2) {
            return Err(ApiError::bad("qos: a list of 0, 1 and 2"));
        }
    }
    let retain = match r.retain {
        None => None,
        Some(Value::Bool(b)) => Some(b),
        Some(Value::String(s)) if s == "all" => None,
        Some(o) => {
            return Err(ApiError::bad(format!(
                "retain: true, false or \"all\", got {o}"
            )))
        }
    };
    Ok(DbRule {
        allow,
        action,
        topic: r.topic,
        qos: r.qos,
        retain,
    })
}

fn rule_out(r: &DbRule) -> Value {
    let mut v = json!({
        "topic": r.topic,
        "permission": if r.allow { "allow" } else { "deny" },
        "action": match r.action {
            RuleAction::Publish => "publish",
            RuleAction::Subscribe => "subscribe",
            RuleAction::All => "all",
        },
    });
    if let Some(q) = &r.qos {
        v["qos"] = json!(q);
    }
    v["retain"] = r.retain.map_or(json!("all"), |b| json!(b));
    v
}

fn rules_in(list: Vec<RuleIn>) -> Result<Vec<DbRule>, ApiError> {
    list.into_iter().map(rule_in).collect()
}

fn owner_json(kind: Kind, who: &str, rules: &[DbRule]) -> Value {
    json!({ kind.field(): who, "rules": rules.iter().map(rule_out).collect::<Vec<_>>() })
}

async fn list(
    State(r): State<Rules>,
    Query(q): Query<HashMap<String, String>>,
    kind: Kind,
) -> Result<Response, ApiError> {
    let t = table(&r)?;
    let like = match kind {
        Kind::Client => "like_clientid",
        Kind::User => "like_username",
    };
    let (page, limit) = paging(&q, &[like])?;
    let rows: Vec<Value> = t
        .list()
        .iter()
        .filter_map(|(o, rules)| {
            let who = kind.who(o)?;
            q.get(like)
                .is_none_or(|l| who.contains(l.as_str()))
                .then(|| owner_json(kind, who, rules))
        })
        .collect();
    Ok(page_of(rows, page, limit))
}

/// `{clientid|username, rules}`.
struct OwnerIn {
    who: String,
    rules: Vec<RuleIn>,
}

async fn create(
    State(r): State<Rules>,
    Body(list): Body<Vec<Value>>,
    kind: Kind,
) -> Result<Response, ApiError> {
    let t = table(&r)?;
    let mut sets = Vec::new();
    for v in list {
        let o = owner_in(v, kind)?;
        let owner = kind.owner(&o.who);
        if !t.get(&owner).is_empty() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "ALREADY_EXISTS",
                format!("{owner} has rules: change them with PUT"),
            ));
        }
        sets.push((owner, rules_in(o.rules)?));
    }
    for (owner, rules) in sets {
        t.set(&owner, &rules).map_err(rules_error)?;
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// An owner's body: only its own field (`clientid` or `username`) and
/// `rules`.
fn owner_in(v: Value, kind: Kind) -> Result<OwnerIn, ApiError> {
    let Value::Object(mut o) = v else {
        return Err(ApiError::bad(format!(
            "expected {{\"{}\": ..., \"rules\": [...]}}",
            kind.field()
        )));
    };
    if let Some(k) = o.keys().find(|k| *k != kind.field() && *k != "rules") {
        return Err(ApiError::bad(format!(
            "unknown field {k:?}: expected {} and rules",
            kind.field()
        )));
    }
    let who = match o.remove(kind.field()) {
        Some(Value::String(w)) if !w.is_empty() => w,
        _ => {
            return Err(ApiError::bad(format!(
                "{}: a non-empty string",
                kind.field()
            )))
        }
    };
    let rules = serde_json::from_value(o.remove("rules").unwrap_or(Value::Null))
        .map_err(|e| ApiError::bad(format!("rules: {e}")))?;
    Ok(OwnerIn { who, rules })
}

async fn one(
    State(r): State<Rules>,
    Path(who): Path<String>,
    kind: Kind,
) -> Result<Response, ApiError> {
    let t = table(&r)?;
    let owner = kind.owner(&who);
    let rules = t.get(&owner);
    if rules.is_empty() {
        return Err(not_found(format!("{owner} has no rules")));
    }
    Ok(Json(owner_json(kind, &who, &rules)).into_response())
}

async fn replace(
    State(r): State<Rules>,
    Path(who): Path<String>,
    Body(v): Body<Value>,
    kind: Kind,
) -> Result<Response, ApiError> {
    let t = table(&r)?;
    let o = owner_in(v, kind)?;
    if o.who != who {
        return Err(ApiError::bad(format!(
            "{} in the body ({:?}) is not the one in the path ({who:?})",
            kind.field(),
            o.who
        )));
    }
    let rules = rules_in(o.rules)?;
    t.set(&kind.owner(&who), &rules).map_err(rules_error)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn remove(
    State(r): State<Rules>,
    Path(who): Path<String>,
    kind: Kind,
) -> Result<Response, ApiError> {
    table(&r)?.delete(&kind.owner(&who)).map_err(rules_error)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The rules for every client
#[utoipa::path(
    get,
    path = "/api/v5/authorization/sources/built_in_database/rules/all",
    tag = "Authorization",
    operation_id = "authz_all_get",
    responses((status = 200, description = "`{rules}`"), (status = 404, description = "No built-in database source"))
)]
async fn all_get(State(r): State<Rules>) -> Result<Response, ApiError> {
    let rules = table(&r)?.get(&RuleOwner::All);
    Ok(Json(json!({"rules": rules.iter().map(rule_out).collect::<Vec<_>>()})).into_response())
}

#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct AllIn {
    rules: Vec<RuleIn>,
}

/// Replace the rules for every client
#[utoipa::path(
    post,
    path = "/api/v5/authorization/sources/built_in_database/rules/all",
    tag = "Authorization",
    operation_id = "authz_all_set",
    request_body = AllIn,
    responses((status = 204, description = "Set"), (status = 400, description = "A bad rule, or more than max_rules"))
)]
async fn all_set(State(r): State<Rules>, Body(a): Body<AllIn>) -> Result<Response, ApiError> {
    let t = table(&r)?;
    let rules = rules_in(a.rules)?;
    t.set(&RuleOwner::All, &rules).map_err(rules_error)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Remove the rules for every client
#[utoipa::path(
    delete,
    path = "/api/v5/authorization/sources/built_in_database/rules/all",
    tag = "Authorization",
    operation_id = "authz_all_delete",
    responses((status = 204, description = "Removed"))
)]
async fn all_delete(State(r): State<Rules>) -> Result<Response, ApiError> {
    let t = table(&r)?;
    t.set(&RuleOwner::All, &[]).map_err(rules_error)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
