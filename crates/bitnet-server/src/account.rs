//! What a tenant sees with its own key: usage by day and model, the rows
//! as CSV, its invoice, and the dashboard page that shows them.
//!
//! Every handler takes the tenant from the [`TenantContext`] the gate put
//! on the request, never from the request itself, so no parameter can
//! name another tenant.

use crate::error::ApiError;
use crate::gate::TenantContext;
use crate::state::AppState;
use axum::Json;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use bitnet_platform::db::{day_of, now_ms, parse_day};
use bitnet_platform::{PlatformError, billing, metering};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// A platform error as an answer.
pub(crate) fn platform_error(e: PlatformError) -> ApiError {
    match e {
        PlatformError::NotFound(what) => ApiError::not_found(format!("{what} not found")),
        PlatformError::Invalid(m) => ApiError::invalid(m),
        PlatformError::Conflict(m) => ApiError {
            status: axum::http::StatusCode::CONFLICT,
            ..ApiError::invalid(m)
        },
        e if e.is_unavailable() => {
            tracing::error!(error = %e, "platform backend unavailable");
            ApiError::unavailable("The service is temporarily unavailable; retry shortly")
        }
        e => ApiError::internal(e.to_string()),
    }
}

fn tenant_of(
    state: &AppState,
    ctx: Option<axum::Extension<Arc<TenantContext>>>,
) -> Result<(Arc<bitnet_platform::Platform>, Arc<TenantContext>), ApiError> {
    match (&state.platform, ctx) {
        (Some(p), Some(c)) => Ok((Arc::clone(p), c.0)),
        _ => Err(ApiError::not_found(
            "Accounts are not enabled on this server (start it with --database-url)",
        )),
    }
}

/// A day range.
#[derive(Debug, Deserialize)]
pub(crate) struct Range {
    from: Option<String>,
    to: Option<String>,
}

/// The days `from..=to` (default: the last 30 days), checked.
pub(crate) fn day_range(
    from: Option<&str>,
    to: Option<&str>,
) -> Result<(String, String), ApiError> {
    let today = day_of(now_ms());
    let to = match to {
        Some(d) => parse_day(d).map_err(platform_error)?,
        None => today,
    };
    let from = match from {
        Some(d) => parse_day(d).map_err(platform_error)?,
        None => day_of(now_ms() - 29 * 86_400_000),
    };
    if from > to {
        return Err(ApiError::invalid_param("from", "`from` is after `to`"));
    }
    Ok((from, to))
}

/// Usage by day and model.
#[derive(Debug, Serialize)]
pub(crate) struct UsageReport {
    object: &'static str,
    tenant_id: String,
    from: String,
    to: String,
    data: Vec<metering::DailyUsage>,
}

/// `GET /v1/usage?from=YYYY-MM-DD&to=YYYY-MM-DD`: the caller's usage by day
/// and model (default: the last 30 days).
pub(crate) async fn usage(
    State(state): State<Arc<AppState>>,
    ctx: Option<axum::Extension<Arc<TenantContext>>>,
    Query(r): Query<Range>,
) -> Result<Json<UsageReport>, ApiError> {
    let (p, ctx) = tenant_of(&state, ctx)?;
    let (from, to) = day_range(r.from.as_deref(), r.to.as_deref())?;
    let id = &ctx.principal.tenant.id;
    let data = metering::daily(&p.store, id, &from, &to)
        .await
        .map_err(platform_error)?;
    Ok(Json(UsageReport {
        object: "usage",
        tenant_id: id.clone(),
        from,
        to,
        data,
    }))
}

/// `GET /v1/usage/export?from=&to=`: the caller's usage rows as CSV.
pub(crate) async fn usage_export(
    State(state): State<Arc<AppState>>,
    ctx: Option<axum::Extension<Arc<TenantContext>>>,
    Query(r): Query<Range>,
) -> Result<Response, ApiError> {
    let (p, ctx) = tenant_of(&state, ctx)?;
    let (from, to) = day_range(r.from.as_deref(), r.to.as_deref())?;
    let rows = metering::records(&p.store, &ctx.principal.tenant.id, &from, &to)
        .await
        .map_err(platform_error)?;
    Ok(csv(
        metering::records_csv(&rows),
        &format!("usage-{from}-{to}.csv"),
    ))
}

fn csv(body: String, filename: &str) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{filename}\""),
            ),
        ],
        body,
    )
        .into_response()
}

/// Which invoice, in which format.
#[derive(Debug, Deserialize)]
pub(crate) struct InvoiceQuery {
    month: Option<String>,
    format: Option<String>,
}

/// Renders an invoice as JSON or CSV.
pub(crate) fn invoice_response(
    inv: &billing::Invoice,
    format: Option<&str>,
) -> Result<Response, ApiError> {
    match format.unwrap_or("json") {
        "json" => Ok(Json(inv).into_response()),
        "csv" => Ok(csv(
            billing::invoice_csv(inv),
            &format!("invoice-{}-{}.csv", inv.tenant_id, inv.month),
        )),
        other => Err(ApiError::invalid_param(
            "format",
            format!("format must be json or csv, not `{other}`"),
        )),
    }
}

/// `GET /v1/invoice?month=YYYY-MM&format=json|csv`: the caller's invoice
/// (default: this month so far).
pub(crate) async fn invoice(
    State(state): State<Arc<AppState>>,
    ctx: Option<axum::Extension<Arc<TenantContext>>>,
    Query(q): Query<InvoiceQuery>,
) -> Result<Response, ApiError> {
    let (p, ctx) = tenant_of(&state, ctx)?;
    let month = q
        .month
        .clone()
        .unwrap_or_else(|| day_of(now_ms())[..7].to_string());
    let inv = p
        .invoice(&ctx.principal.tenant, &month)
        .await
        .map_err(platform_error)?;
    invoice_response(&inv, q.format.as_deref())
}

/// Everything the dashboard shows.
#[derive(Debug, Serialize)]
pub(crate) struct Summary {
    tenant: TenantView,
    limits: bitnet_platform::Tier,
    usage: Vec<metering::DailyUsage>,
    invoice: billing::Invoice,
}

#[derive(Debug, Serialize)]
struct TenantView {
    id: String,
    name: String,
    tier: String,
    status: String,
}

/// `GET /v1/dashboard/summary`: the caller's tenant, limits, last 30 days
/// of usage and this month's invoice so far.
pub(crate) async fn summary(
    State(state): State<Arc<AppState>>,
    ctx: Option<axum::Extension<Arc<TenantContext>>>,
) -> Result<Json<Summary>, ApiError> {
    let (p, ctx) = tenant_of(&state, ctx)?;
    let t = &ctx.principal.tenant;
    let today = day_of(now_ms());
    let from = day_of(now_ms() - 29 * 86_400_000);
    let usage = metering::daily(&p.store, &t.id, &from, &today)
        .await
        .map_err(platform_error)?;
    let invoice = p.invoice(t, &today[..7]).await.map_err(platform_error)?;
    Ok(Json(Summary {
        tenant: TenantView {
            id: t.id.clone(),
            name: t.name.clone(),
            tier: t.tier.clone(),
            status: t.status.clone(),
        },
        limits: ctx.tier.clone(),
        usage,
        invoice,
    }))
}

/// `GET /dashboard`: the page. It holds no data itself: it asks for the
/// tenant's key and reads `/v1/dashboard/summary` with it.
pub(crate) async fn dashboard_page() -> Html<&'static str> {
    Html(include_str!("dashboard.html"))
}
