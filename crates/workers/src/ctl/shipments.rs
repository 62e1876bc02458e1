//! `trackctl shipments`: lists of shipments (late or stalled).

use anyhow::{Context, bail};
use clap::Subcommand;

#[derive(Subcommand)]
pub enum ShipmentsCommand {
    /// Shipments the scheduler marked late (the carrier's promised date passed by LATE_GRACE_HOURS without
    /// delivery), the longest-waiting first; with --stalled, those with no carrier event for
    /// CARRIER_STALE_AFTER_HOURS instead.
    Late(LateArgs),
}

#[derive(clap::Args)]
pub struct LateArgs {
    /// Only this carrier's (correios, jadlog).
    #[arg(long)]
    pub carrier: Option<String>,
    /// Only those whose promised date (with --stalled: last carrier news) is at or after this: a date
    /// (2026-12-01), an RFC 3339 time, or a span back from now (48h, 7d).
    #[arg(long)]
    pub since: Option<String>,
    /// List stalled shipments instead of late ones.
    #[arg(long)]
    pub stalled: bool,
    #[arg(long, default_value_t = 100)]
    pub limit: i64,
}

pub(super) async fn run(cmd: ShipmentsCommand) -> anyhow::Result<()> {
    match cmd {
        ShipmentsCommand::Late(args) => late_list(args).await,
    }
}

/// `--since`: a date, an RFC 3339 time, or a span back from now (`48h`, `7d`).
fn parse_since(
    text: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    let t = text.trim();
    if let Ok(at) = chrono::DateTime::parse_from_rfc3339(t) {
        return Ok(at.to_utc());
    }
    if let Ok(day) = chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        return Ok(day.and_time(chrono::NaiveTime::MIN).and_utc());
    }
    let span = |digits: &str, unit_hours: i64| -> Option<chrono::DateTime<chrono::Utc>> {
        let n: i64 = digits.parse().ok()?;
        now.checked_sub_signed(chrono::Duration::try_hours(n.checked_mul(unit_hours)?)?)
    };
    let back = match t.char_indices().last() {
        Some((i, 'h')) => span(&t[..i], 1),
        Some((i, 'd')) => span(&t[..i], 24),
        _ => None,
    };
    back.with_context(|| {
        format!("--since {t:?}: expected a date (2026-12-01), an RFC 3339 time or a span (48h, 7d)")
    })
}

async fn late_list(args: LateArgs) -> anyhow::Result<()> {
    let carrier = match &args.carrier {
        Some(c) => Some(
            c.trim()
                .to_ascii_lowercase()
                .parse::<tracking_domain::Carrier>()
                .map_err(|e| anyhow::anyhow!("--carrier: {e}"))?,
        ),
        None => None,
    };
    let since = args
        .since
        .as_deref()
        .map(|s| parse_since(s, chrono::Utc::now()))
        .transpose()?;
    if args.limit < 1 {
        bail!("--limit must be at least 1");
    }
    let pool = tracking_store::Db::connect_lazy(&crate::boot::db_settings(2)?)?;
    let mark = if args.stalled {
        tracking_store::late::Mark::Stalled
    } else {
        tracking_store::late::Mark::Late
    };
    let rows = tracking_store::late::list(&pool, mark, carrier, since, args.limit).await?;
    let what = if args.stalled { "stalled" } else { "late" };
    if rows.is_empty() {
        println!("No {what} shipments.");
        return Ok(());
    }
    for s in &rows {
        let (label, at) = if args.stalled {
            ("last news", s.stalled_since)
        } else {
            ("promised by", s.late_since)
        };
        println!(
            "{} {}  {}  store {}  {label} {}",
            s.carrier,
            s.tracking_code,
            s.status,
            s.store,
            at.map(|a| a.to_rfc3339()).unwrap_or_default()
        );
    }
    println!(
        "{} {what} shipment(s){}.",
        rows.len(),
        if rows.len() as i64 == args.limit {
            " (the limit; --limit shows more)"
        } else {
            ""
        }
    );
    Ok(())
}
