//! The users of the built-in database authenticator over HTTP, as EMQX's
//! `/api/v5/authentication/password_based:built_in_database/users`: the
//! same replicated table `ctl users` writes, so a user added through any
//! node can connect to every node.

use super::http::{page_of, paging, ApiError, Body, Paging};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use emqx_actors::authn::{Authn, UserError};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// EMQX's id of the built-in database password authenticator.
const AUTHENTICATOR: &str = "password_based:built_in_database";

/// The routes, for the guarded part of the API.
pub fn routes<S: Clone + Send + Sync + 'static>(authn: Arc<Authn>) -> OpenApiRouter<S> {
    OpenApiRouter::new()
        .routes(routes!(list, add))
        .routes(routes!(one, update, remove))
        .with_state(authn)
}

fn not_found(what: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", what.to_string())
}

/// The authenticator named in the path must be the built-in database one,
/// and configured.
fn check(authn: &Authn, id: &str) -> Result<(), ApiError> {
    if id != AUTHENTICATOR {
        return Err(not_found(&format!(
            "authenticator {id:?} not found: only {AUTHENTICATOR} has users here"
        )));
    }
    if authn.users().is_none() {
        return Err(not_found(
            "no built-in database authenticator is configured (authentication = [{mechanism = password_based, backend = built_in_database}])",
        ));
    }
    Ok(())
}

fn user_error(e: UserError) -> ApiError {
    match e {
        UserError::Exists(_) => {
            ApiError::new(StatusCode::CONFLICT, "ALREADY_EXISTS", e.to_string())
        }
        UserError::NotFound(_) => not_found(&e.to_string()),
        UserError::EmptyId | UserError::Hash(_) => ApiError::bad(e.to_string()),
        UserError::Table(_) => ApiError::unavailable(e.to_string()),
    }
}

fn password_ok(p: &str) -> Result<(), ApiError> {
    if p.is_empty() || p.len() > crate::authn::MAX_PASSWORD {
        return Err(ApiError::bad(format!(
            "password: 1 to {} bytes",
            crate::authn::MAX_PASSWORD
        )));
    }
    Ok(())
}

/// Users of the built-in database, paged
#[utoipa::path(
    get,
    path = "/api/v5/authentication/{id}/users",
    tag = "Authentication",
    operation_id = "authn_users_list",
    params(("id" = String, Path, description = "`password_based:built_in_database`"), Paging, ("like_user_id" = Option<String>, Query, description = "Part of the user id"), ("is_superuser" = Option<bool>, Query, description = "true or false")),
    responses((status = 200, description = "`{data, meta}`"), (status = 400, description = "Bad parameter or body: `{code, message}`"), (status = 404, description = "No such authenticator: `{code, message}`"))
)]
async fn list(
    State(authn): State<Arc<Authn>>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    check(&authn, &id)?;
    let (page, limit) = paging(&q, &["like_user_id", "is_superuser"])?;
    let su = match q.get("is_superuser").map(String::as_str) {
        None => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(o) => {
            return Err(ApiError::bad(format!(
                "is_superuser: expected true or false, got {o:?}"
            )))
        }
    };
    let Some((users, _)) = authn.users() else {
        return Err(not_found("no built-in database authenticator"));
    };
    let mut rows: Vec<(String, bool)> = users
        .list()
        .into_iter()
        .map(|(id, u)| (id, u.is_superuser))
        .filter(|(id, s)| {
            q.get("like_user_id")
                .is_none_or(|l| id.contains(l.as_str()))
                && su.is_none_or(|want| want == *s)
        })
        .collect();
    rows.sort();
    let rows: Vec<Value> = rows
        .into_iter()
        .map(|(id, s)| json!({"user_id": id, "is_superuser": s}))
        .collect();
    Ok(page_of(rows, page, limit))
}

/// One user
#[utoipa::path(
    get,
    path = "/api/v5/authentication/{id}/users/{user_id}",
    tag = "Authentication",
    operation_id = "authn_users_one",
    params(("id" = String, Path, description = "`password_based:built_in_database`"), ("user_id" = String, Path, description = "User id")),
    responses((status = 200, description = "The user"), (status = 404, description = "NOT_FOUND: `{code, message}`"))
)]
async fn one(
    State(authn): State<Arc<Authn>>,
    Path((id, user_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    check(&authn, &id)?;
    let u = authn
        .users()
        .and_then(|(users, _)| users.get(&user_id))
        .ok_or_else(|| not_found("user not found"))?;
    Ok(Json(json!({"user_id": user_id, "is_superuser": u.is_superuser})).into_response())
}

#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewMqttUser {
    user_id: String,
    password: String,
    #[serde(default)]
    is_superuser: bool,
}

/// Add a user
#[utoipa::path(
    post,
    path = "/api/v5/authentication/{id}/users",
    tag = "Authentication",
    operation_id = "authn_users_add",
    params(("id" = String, Path, description = "`password_based:built_in_database`")),
    request_body = NewMqttUser,
    responses((status = 201, description = "Added"), (status = 400, description = "Bad parameter or body: `{code, message}`"), (status = 409, description = "ALREADY_EXISTS"))
)]
async fn add(
    State(authn): State<Arc<Authn>>,
    Path(id): Path<String>,
    Body(u): Body<NewMqttUser>,
) -> Result<Response, ApiError> {
    check(&authn, &id)?;
    password_ok(&u.password)?;
    let a = authn.clone();
    let (uid, su) = (u.user_id.clone(), u.is_superuser);
    // Slow hashes (bcrypt, PBKDF2) run off the runtime.
    let r = tokio::task::spawn_blocking(move || {
        let (users, algo) = a.users().ok_or(UserError::NotFound(String::new()))?;
        users.add(&uid, u.password.as_bytes(), su, algo)
    })
    .await
    .map_err(|e| ApiError::unavailable(e.to_string()))?;
    r.map_err(user_error)?;
    tracing::info!(target: "emqx_rs::api", "authentication user {} added", u.user_id);
    Ok((
        StatusCode::CREATED,
        Json(json!({"user_id": u.user_id, "is_superuser": su})),
    )
        .into_response())
}

#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct MqttUserChange {
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    is_superuser: Option<bool>,
}

/// Change a user's password or superuser flag
#[utoipa::path(
    put,
    path = "/api/v5/authentication/{id}/users/{user_id}",
    tag = "Authentication",
    operation_id = "authn_users_update",
    params(("id" = String, Path, description = "`password_based:built_in_database`"), ("user_id" = String, Path, description = "User id")),
    request_body = MqttUserChange,
    responses((status = 200, description = "The user"), (status = 400, description = "Bad parameter or body: `{code, message}`"), (status = 404, description = "NOT_FOUND: `{code, message}`"))
)]
async fn update(
    State(authn): State<Arc<Authn>>,
    Path((id, user_id)): Path<(String, String)>,
    Body(c): Body<MqttUserChange>,
) -> Result<Response, ApiError> {
    check(&authn, &id)?;
    if let Some(p) = &c.password {
        password_ok(p)?;
    }
    let a = authn.clone();
    let uid = user_id.clone();
    let r = tokio::task::spawn_blocking(move || {
        let (users, algo) = a.users().ok_or(UserError::NotFound(String::new()))?;
        users.update(
            &uid,
            c.password.as_deref().map(str::as_bytes),
            c.is_superuser,
            algo,
        )?;
        Ok::<_, UserError>(users.get(&uid).map(|u| u.is_superuser))
    })
    .await
    .map_err(|e| ApiError::unavailable(e.to_string()))?;
    let su = r.map_err(user_error)?.unwrap_or_default();
    Ok(Json(json!({"user_id": user_id, "is_superuser": su})).into_response())
}

/// Remove a user
#[utoipa::path(
    delete,
    path = "/api/v5/authentication/{id}/users/{user_id}",
    tag = "Authentication",
    operation_id = "authn_users_remove",
    params(("id" = String, Path, description = "`password_based:built_in_database`"), ("user_id" = String, Path, description = "User id")),
    responses((status = 204, description = "Removed"), (status = 404, description = "NOT_FOUND: `{code, message}`"))
)]
async fn remove(
    State(authn): State<Arc<Authn>>,
    Path((id, user_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    check(&authn, &id)?;
    let (users, _) = authn
        .users()
        .ok_or_else(|| not_found("no built-in database authenticator"))?;
    users.delete(&user_id).map_err(user_error)?;
    tracing::info!(target: "emqx_rs::api", "authentication user {user_id} deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}
