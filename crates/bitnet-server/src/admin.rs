//! The admin API (`/admin/*`, bearer admin token): tenants, keys, usage,
//! invoices, the audit log, privacy exports and deletion, retention.
//! Thin handlers over `bitnet_platform`; every change is audited there.

use crate::account::{invoice_response, platform_error};
use crate::error::ApiError;
use crate::gate::bearer;
use crate::state::AppState;
use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use bitnet_platform::db::{day_of, now_ms};
use bitnet_platform::{Platform, audit, keys, metering, privacy, tenants};
use serde::Deserialize;
use std::sync::Arc;

const ACTOR: &str = "admin";

/// The admin routes, behind [`admin_gate`].
pub(crate) fn routes(state: Arc<AppState>) -> Router<Arc<AppState>> {
    Router::new()
        .route("/admin/tenants", post(create_tenant).get(list_tenants))
        .route(
            "/admin/tenants/{id}",
            get(get_tenant).patch(update_tenant).delete(delete_tenant),
        )
        .route("/admin/tenants/{id}/keys", post(create_key).get(list_keys))
        .route("/admin/tenants/{id}/usage", get(tenant_usage))
        .route("/admin/tenants/{id}/invoice", get(tenant_invoice))
        .route("/admin/tenants/{id}/export", get(export_tenant))
        .route("/admin/keys/{id}/rotate", post(rotate_key))
        .route("/admin/keys/{id}", delete(revoke_key))
        .route("/admin/audit", get(list_audit))
        .route("/admin/audit/verify", get(verify_audit))
        .route("/admin/purge", post(purge))
        .route_layer(axum::middleware::from_fn_with_state(state, admin_gate))
}

/// Lets a request through only with the admin token (compared in constant
/// time). Without a platform or a configured token the admin API is off.
async fn admin_gate(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let Some(platform) = &state.platform else {
        return ApiError::not_found("The admin API is not enabled (start with --database-url)")
            .into_response();
    };
    let Some(token) = &platform.config.admin_token else {
        return ApiError::not_found("The admin API is not enabled (no admin token configured)")
            .into_response();
    };
    let presented = bearer(req.headers()).unwrap_or("");
    if !keys::secrets_equal(presented, token) {
        let store = platform.store.clone();
        let path = req.uri().path().to_string();
        tokio::spawn(async move {
            let detail = serde_json::json!({ "path": path });
            if let Err(e) =
                audit::append(&store, "anonymous", "admin.auth_failed", None, detail).await
            {
                tracing::warn!(error = %e, "admin auth failure not audited");
            }
        });
        state.metrics.auth_failure("admin");
        return ApiError::unauthorized("Invalid admin token").into_response();
    }
    next.run(req).await
}

fn platform(state: &AppState) -> Result<&Arc<Platform>, ApiError> {
    state
        .platform
        .as_ref()
        .ok_or_else(|| ApiError::not_found("The admin API is not enabled"))
}

/// The JSON body of an admin request; syntax errors are 400s.
pub(crate) struct AdminJson<T>(T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> axum::extract::FromRequest<S>
    for AdminJson<T>
{
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        crate::routes::OpenAiJson::<T>::from_request(req, state)
            .await
            .map(|j| AdminJson(j.0))
    }
}

/// An optional JSON body: empty means every field's default.
fn optional_json<T: serde::de::DeserializeOwned + Default>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::invalid(format!("The request body is not valid JSON here: {e}")))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTenant {
    name: String,
    tier: Option<String>,
}

async fn create_tenant(
    State(state): State<Arc<AppState>>,
    AdminJson(body): AdminJson<NewTenant>,
) -> Result<Response, ApiError> {
    let p = platform(&state)?;
    let tier = body.tier.unwrap_or_else(|| p.config.tiers[0].name.clone());
    let t = p
        .create_tenant(ACTOR, &body.name, &tier)
        .await
        .map_err(platform_error)?;
    Ok((axum::http::StatusCode::CREATED, Json(t)).into_response())
}

async fn list_tenants(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let p = platform(&state)?;
    let list = tenants::list_tenants(&p.store)
        .await
        .map_err(platform_error)?;
    Ok(Json(serde_json::json!({ "object": "list", "data": list })).into_response())
}

async fn get_tenant(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let p = platform(&state)?;
    let t = tenants::get_tenant(&p.store, &id)
        .await
        .map_err(platform_error)?;
    Ok(Json(t).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantUpdate {
    tier: Option<String>,
    status: Option<String>,
}

async fn update_tenant(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    AdminJson(body): AdminJson<TenantUpdate>,
) -> Result<Response, ApiError> {
    let p = platform(&state)?;
    let mut t = tenants::get_tenant(&p.store, &id)
        .await
        .map_err(platform_error)?;
    if let Some(tier) = &body.tier {
        t = p.set_tier(ACTOR, &id, tier).await.map_err(platform_error)?;
    }
    if let Some(status) = &body.status {
        t = tenants::set_status(&p.store, ACTOR, &id, status)
            .await
            .map_err(platform_error)?;
    }
    Ok(Json(t).into_response())
}

async fn delete_tenant(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let p = platform(&state)?;
    let d = privacy::delete_tenant(&p.store, ACTOR, &id)
        .await
        .map_err(platform_error)?;
    Ok(Json(serde_json::json!({ "id": id, "deleted": true, "keys": d.keys, "usage_rows": d.usage_rows }))
        .into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKey {
    name: Option<String>,
}

async fn create_key(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let p = platform(&state)?;
    let body: NewKey = optional_json(&body)?;
    let name = body.name.unwrap_or_else(|| "default".into());
    let k = p
        .create_key(ACTOR, &id, &name)
        .await
        .map_err(platform_error)?;
    Ok((axum::http::StatusCode::CREATED, Json(k)).into_response())
}

async fn list_keys(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let p = platform(&state)?;
    let list = tenants::list_keys(&p.store, &id)
        .await
        .map_err(platform_error)?;
    Ok(Json(serde_json::json!({ "object": "list", "data": list })).into_response())
}

async fn rotate_key(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let p = platform(&state)?;
    let k = tenants::rotate_key(&p.store, ACTOR, &id)
        .await
        .map_err(platform_error)?;
    Ok((axum::http::StatusCode::CREATED, Json(k)).into_response())
}

async fn revoke_key(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let p = platform(&state)?;
    let k = tenants::revoke_key(&p.store, ACTOR, &id)
        .await
        .map_err(platform_error)?;
    Ok(Json(k).into_response())
}

#[derive(Debug, Deserialize)]
struct DayRange {
    from: Option<String>,
    to: Option<String>,
    format: Option<String>,
}

async fn tenant_usage(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    Query(q): Query<DayRange>,
) -> Result<Response, ApiError> {
    let p = platform(&state)?;
    tenants::get_tenant(&p.store, &id)
        .await
        .map_err(platform_error)?;
    let (from, to) = crate::account::day_range(q.from.as_deref(), q.to.as_deref())?;
    if q.format.as_deref() == Some("csv") {
        let rows = metering::records(&p.store, &id, &from, &to)
            .await
            .map_err(platform_error)?;
        return Ok((
            [(axum::http::header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            metering::records_csv(&rows),
        )
            .into_response());
    }
    let data = metering::daily(&p.store, &id, &from, &to)
        .await
        .map_err(platform_error)?;
    Ok(Json(serde_json::json!({ "object": "usage", "tenant_id": id, "from": from, "to": to, "data": data }))
        .into_response())
}

#[derive(Debug, Deserialize)]
struct InvoiceQuery {
    month: Option<String>,
    format: Option<String>,
}

async fn tenant_invoice(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    Query(q): Query<InvoiceQuery>,
) -> Result<Response, ApiError> {
    let p = platform(&state)?;
    let t = tenants::get_tenant(&p.store, &id)
        .await
        .map_err(platform_error)?;
    let month = q.month.unwrap_or_else(|| day_of(now_ms())[..7].to_string());
    let inv = p.invoice(&t, &month).await.map_err(platform_error)?;
    invoice_response(&inv, q.format.as_deref())
}

async fn export_tenant(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let p = platform(&state)?;
    let e = privacy::export(&p.store, ACTOR, &id)
        .await
        .map_err(platform_error)?;
    Ok(Json(e).into_response())
}

#[derive(Debug, Deserialize)]
struct AuditQuery {
    tenant_id: Option<String>,
    limit: Option<i64>,
}

async fn list_audit(
    State(state): State<Arc<AppState>>,
    Query(q): Query<AuditQuery>,
) -> Result<Response, ApiError> {
    let p = platform(&state)?;
    let limit = q.limit.unwrap_or(100).clamp(1, 10_000);
    let rows = audit::list(&p.store, q.tenant_id.as_deref(), limit)
        .await
        .map_err(platform_error)?;
    Ok(Json(serde_json::json!({ "object": "list", "data": rows })).into_response())
}

async fn verify_audit(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let p = platform(&state)?;
    let v = audit::verify(&p.store).await.map_err(platform_error)?;
    Ok(Json(v).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeBody {
    older_than_days: Option<u32>,
}

async fn purge(
    State(state): State<Arc<AppState>>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let p = platform(&state)?;
    let body: PurgeBody = optional_json(&body)?;
    let days = body.older_than_days.unwrap_or(p.config.retention_days);
    if days == 0 {
        return Err(ApiError::invalid_param(
            "older_than_days",
            "give older_than_days (no retention_days is configured)",
        ));
    }
    let n = privacy::purge(&p.store, ACTOR, days)
        .await
        .map_err(platform_error)?;
    Ok(Json(serde_json::json!({ "purged_rows": n, "older_than_days": days })).into_response())
}
