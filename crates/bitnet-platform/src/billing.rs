//! Monthly invoices: the tier's base price plus overage for the tokens
//! past the tier's monthly allowance, from the metered rows.
//!
//! Amounts are computed in integer micro-dollars and rounded to cents
//! once, at the end, so a bill equals a hand computation on the same rows
//! to the cent. The tier is the tenant's tier when the invoice is made.

use crate::config::Tier;
use crate::db::{Store, month_range};
use crate::error::Result;
use crate::metering::csv_field;
use serde::Serialize;
use sqlx::Row;

/// One line of an invoice.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct InvoiceLine {
    /// What is charged.
    pub description: String,
    /// How many units.
    pub quantity: i64,
    /// Price per unit in US dollars.
    pub unit_price_usd: f64,
    /// The line's amount in cents.
    pub amount_cents: i64,
}

/// A tenant's bill for one month.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Invoice {
    /// The tenant.
    pub tenant_id: String,
    /// `YYYY-MM`.
    pub month: String,
    /// The tier billed.
    pub tier: String,
    /// Requests metered in the month.
    pub requests: i64,
    /// Prompt tokens.
    pub prompt_tokens: i64,
    /// Completion tokens.
    pub completion_tokens: i64,
    /// Prompt plus completion tokens.
    pub total_tokens: i64,
    /// Tokens included in the base price.
    pub included_tokens: i64,
    /// Tokens past the allowance.
    pub overage_tokens: i64,
    /// The lines: base price, then overage.
    pub lines: Vec<InvoiceLine>,
    /// The sum in cents.
    pub total_cents: i64,
    /// The sum in dollars.
    pub total_usd: f64,
}

/// Token totals of a tenant for a month: (requests, prompt, completion).
pub async fn month_totals(store: &Store, tenant_id: &str, month: &str) -> Result<(i64, i64, i64)> {
    let (from, to) = month_range(month)?;
    let r = sqlx::query(
        "SELECT COUNT(*), CAST(COALESCE(SUM(prompt_tokens), 0) AS BIGINT), \
         CAST(COALESCE(SUM(completion_tokens), 0) AS BIGINT) FROM usage_records \
         WHERE tenant_id = $1 AND day >= $2 AND day < $3",
    )
    .bind(tenant_id)
    .bind(&from)
    .bind(&to)
    .fetch_one(store.pool())
    .await?;
    Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?))
}

/// Builds an invoice from totals (pure: the arithmetic the tests check).
pub fn price(
    tenant_id: &str,
    month: &str,
    tier: &Tier,
    requests: i64,
    prompt_tokens: i64,
    completion_tokens: i64,
) -> Invoice {
    let total = prompt_tokens + completion_tokens;
    let included = tier.monthly_tokens.min(i64::MAX as u64) as i64;
    let overage = (total - included).max(0);
    let micro = |usd: f64| (usd * 1e6).round() as i128;
    let base_micro = micro(tier.monthly_price_usd);
    // Price per million tokens in micro-dollars is price per token in
    // micro-micro-dollars: multiply first, divide once.
    let overage_micro = overage as i128 * micro(tier.overage_usd_per_million) / 1_000_000;
    let cents = |m: i128| ((m + 5_000) / 10_000) as i64;
    let lines = vec![
        InvoiceLine {
            description: format!("{} tier, {month}", tier.name),
            quantity: 1,
            unit_price_usd: tier.monthly_price_usd,
            amount_cents: cents(base_micro),
        },
        InvoiceLine {
            description: format!(
                "Tokens past the {} included (per million: ${:.2})",
                included, tier.overage_usd_per_million
            ),
            quantity: overage,
            unit_price_usd: tier.overage_usd_per_million / 1e6,
            amount_cents: cents(overage_micro),
        },
    ];
    let total_cents = cents(base_micro + overage_micro);
    Invoice {
        tenant_id: tenant_id.to_string(),
        month: month.to_string(),
        tier: tier.name.clone(),
        requests,
        prompt_tokens,
        completion_tokens,
        total_tokens: total,
        included_tokens: included,
        overage_tokens: overage,
        lines,
        total_cents,
        total_usd: total_cents as f64 / 100.0,
    }
}

/// The invoice of `tenant_id` on `tier` for `month` (`YYYY-MM`).
pub async fn invoice(store: &Store, tenant_id: &str, tier: &Tier, month: &str) -> Result<Invoice> {
    let (requests, p, c) = month_totals(store, tenant_id, month).await?;
    Ok(price(tenant_id, month, tier, requests, p, c))
}

/// An invoice as CSV: one row per line, then the total.
pub fn invoice_csv(inv: &Invoice) -> String {
    let mut out =
        String::from("tenant_id,month,tier,description,quantity,unit_price_usd,amount_usd\n");
    for l in &inv.lines {
        out.push_str(&format!(
            "{},{},{},{},{},{},{:.2}\n",
            csv_field(&inv.tenant_id),
            inv.month,
            csv_field(&inv.tier),
            csv_field(&l.description),
            l.quantity,
            l.unit_price_usd,
            l.amount_cents as f64 / 100.0
        ));
    }
    out.push_str(&format!(
        "{},{},{},total,,,{:.2}\n",
        csv_field(&inv.tenant_id),
        inv.month,
        csv_field(&inv.tier),
        inv.total_usd
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_plus_overage_matches_a_hand_computation() {
        let tier = &Tier::defaults()[0]; // $99, 10M included, $2 per million
        let inv = price("t", "2026-11", tier, 3, 7_000_000, 4_500_001);
        // 11,500,001 tokens, 1,500,001 past 10M: 1.500001 M x $2 = $3.000002.
        assert_eq!(inv.overage_tokens, 1_500_001);
        assert_eq!(inv.total_cents, 9_900 + 300);
        let hand = 99.0 + 1_500_001.0 * 2.0 / 1e6;
        assert!((inv.total_usd - hand).abs() / hand < 0.01);
        let under = price("t", "2026-11", tier, 1, 10, 10);
        assert_eq!(under.total_cents, 9_900);
        assert_eq!(under.overage_tokens, 0);
        let csv = invoice_csv(&inv);
        assert!(csv.lines().last().unwrap().ends_with(",102.00"), "{csv}");
    }
}
