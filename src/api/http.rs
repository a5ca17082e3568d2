//! The API's HTTP plumbing shared by its handler files: EMQX's error body,
//! JSON bodies that refuse what they do not know, and paging.

use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use std::collections::HashMap;

/// EMQX's bounds on `limit`.
pub const MAX_LIMIT: usize = 10_000;
pub const DEFAULT_LIMIT: usize = 100;

/// EMQX's error body.
pub fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({"code": code, "message": message.into()})),
    )
        .into_response()
}

pub fn bad_request(message: impl Into<String>) -> Response {
    error(StatusCode::BAD_REQUEST, "BAD_REQUEST", message)
}

/// A JSON request body; a missing, malformed or unexpected one (a field
/// we do not know included) is a 400 in EMQX's error shape.
pub struct Body<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> axum::extract::FromRequest<S> for Body<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Response> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Body(v)),
            Err(e) => Err(bad_request(e.body_text())),
        }
    }
}

/// An error answer on its way up to a handler.
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "BAD_REQUEST",
            message: message.into(),
        }
    }

    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "SERVICE_UNAVAILABLE",
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error(self.status, self.code, self.message)
    }
}

/// `page` (from 1) and `limit` (1 to 10,000, default 100); any parameter
/// other than those and `filters` is refused.
pub fn paging(q: &HashMap<String, String>, filters: &[&str]) -> Result<(usize, usize), ApiError> {
    if let Some(k) = q
        .keys()
        .find(|k| !matches!(k.as_str(), "page" | "limit") && !filters.contains(&k.as_str()))
    {
        return Err(ApiError::bad(format!("unknown parameter {k:?}")));
    }
    let num = |k: &str, default: usize, max: usize| -> Result<usize, ApiError> {
        match q.get(k) {
            None => Ok(default),
            Some(s) => match s.parse::<usize>() {
                Ok(v) if (1..=max).contains(&v) => Ok(v),
                _ => Err(ApiError::bad(format!(
                    "{k}: expected an integer from 1 to {max}, got {s:?}"
                ))),
            },
        }
    };
    Ok((
        num("page", 1, usize::MAX)?,
        num("limit", DEFAULT_LIMIT, MAX_LIMIT)?,
    ))
}

/// One page of `rows`, with EMQX's `meta`.
pub fn page_of(rows: Vec<Value>, page: usize, limit: usize) -> Response {
    let count = rows.len();
    let start = (page - 1).saturating_mul(limit);
    let data: Vec<Value> = rows.into_iter().skip(start).take(limit).collect();
    let hasnext = start.saturating_add(limit) < count;
    Json(json!({
        "data": data,
        "meta": {"count": count, "page": page, "limit": limit, "hasnext": hasnext},
    }))
    .into_response()
}

/// Sorts rows by the string fields `keys`, in order (a stable order for
/// paging over answers merged from several nodes).
pub fn sort_rows(rows: &mut [Value], keys: &[&str]) {
    rows.sort_by(|a, b| {
        keys.iter()
            .map(|k| a[*k].as_str().cmp(&b[*k].as_str()))
            .find(|o| o.is_ne())
            .unwrap_or(std::cmp::Ordering::Equal)
    });
}

/// `page` and `limit`, for the OpenAPI document.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct Paging {
    /// Page, from 1.
    page: Option<u64>,
    /// Rows a page, 1 to 10000 (default 100).
    limit: Option<u64>,
}
