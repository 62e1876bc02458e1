//! `trackctl shipment`: one shipment shown in full, and recomputing statuses after the event tables changed.

use anyhow::bail;
use clap::Subcommand;
use tracking_runtime::amqp::{AmqpSettings, Publisher};
use tracking_store::shipments;

use super::store_arg;

#[derive(Subcommand)]
pub enum ShipmentCommand {
    /// A shipment's status, order context, events and status changes.
    Show {
        tracking_code: String,
        /// Only this store's shipment of the code.
        #[arg(long)]
        store: Option<String>,
    },
    /// Re-read stored events through the current event-code table (EVENT_TABLES_DIR or the built-in one) and
    /// record and publish the status changes that are new. Run it after the table changed.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["tracking_code", "all"])))]
    Recompute {
        /// One shipment's tracking code.
        tracking_code: Option<String>,
        /// Every shipment.
        #[arg(long)]
        all: bool,
    },
}

pub(super) async fn run(cmd: ShipmentCommand) -> anyhow::Result<()> {
    match cmd {
        ShipmentCommand::Show {
            tracking_code,
            store,
        } => show(&tracking_code, store_arg(store.as_deref())?.as_ref()).await,
        ShipmentCommand::Recompute { tracking_code, .. } => {
            recompute(tracking_code.as_deref()).await
        }
    }
}

async fn recompute(code: Option<&str>) -> anyhow::Result<()> {
    let tables = crate::normalizer::event_tables_from_env()?;
    let pool = tracking_store::Db::connect_lazy(&crate::boot::db_settings(2)?)?;
    let code = code.map(|c| c.trim().to_ascii_uppercase());
    let policy = crate::policy::PollPolicy::from_env()?;
    let report = crate::normalizer::recompute(&pool, &tables, &policy, code.as_deref()).await?;
    for c in &report.changes {
        println!(
            "{} {}: {} -> {}  (change {})",
            c.carrier, c.tracking_code, c.previous_status, c.status, c.change_id
        );
    }
    println!(
        "Recomputed {} shipment(s): {} event(s) remapped, {} new status change(s).",
        report.shipments,
        report.events_remapped,
        report.changes.len()
    );
    if !report.changes.is_empty() {
        // Publish them now rather than waiting for a normalizer's relay (which would also find them).
        let publisher = Publisher::new(AmqpSettings::from_env()?, "trackctl");
        let mut published = 0;
        loop {
            let n =
                crate::normalizer::relay_once(&pool, &publisher, std::time::Duration::ZERO).await?;
            if n == 0 {
                break;
            }
            published += n;
        }
        publisher.close().await;
        println!("Published {published} change(s) to order.status.");
    }
    Ok(())
}

async fn show(code: &str, store: Option<&tracking_domain::StoreName>) -> anyhow::Result<()> {
    let pool = tracking_store::Db::connect_lazy(&crate::boot::db_settings(2)?)?;
    let found = shipments::by_code(&pool, &code.trim().to_ascii_uppercase(), store).await?;
    if found.is_empty() {
        bail!("no shipment with tracking code {code}");
    }
    for found in found {
        let s = found.shipment;
        let (late, stalled) = (s.late(), s.stalled());
        println!(
            "{} {}  store {}  status {}{}{}",
            s.carrier,
            s.tracking_code,
            s.store,
            s.status,
            s.status_reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default(),
            s.retired_at
                .map(|at| format!("  RETIRED {at} (the code was recycled for a newer parcel)"))
                .unwrap_or_default()
        );
        let mut conn = pool.acquire().await?;
        for po in tracking_store::orders::of_parcels(&mut conn, &[s.id]).await? {
            let o = po.order;
            println!(
                "  order {}  customer {}  locale {}",
                o.order_id,
                if o.erased {
                    "(erased)"
                } else {
                    o.customer_email.as_str()
                },
                o.customer_locale
            );
            if let (Some(m), Some(mo)) = (&o.marketplace_name, &o.marketplace_order_id) {
                println!("    marketplace {m} order {mo}");
            }
        }
        if let Some(reason) = &s.not_trackable_reason {
            println!(
                "  NOT TRACKABLE with this account{}: {reason}",
                s.not_trackable_at
                    .map(|at| format!(" since {at}"))
                    .unwrap_or_default()
            );
        }
        if let Some(reason) = &s.quarantine_reason {
            println!(
                "  QUARANTINED (not polled; a valid tracking request for it lifts this): {reason}"
            );
        }
        if let Some(promised) = late {
            println!("  LATE: promised by {promised}, not delivered");
        }
        if let Some(news) = stalled {
            println!("  STALLED: no carrier event since {news}");
        }
        if let Some(n) = tracking_store::late::notice_of(&pool, s.id).await? {
            println!(
                "  late email: notice {} recorded {}{}  email={}",
                n.notice_id,
                n.created_at,
                if n.published {
                    ""
                } else {
                    " (not yet published)"
                },
                n.email.as_deref().unwrap_or("not yet taken")
            );
        }
        println!(
            "  next poll {}{}",
            s.next_poll_at,
            s.finished_at
                .map(|f| format!("  finished {f}"))
                .unwrap_or_default()
        );
        println!("  events:");
        for e in shipments::events(&mut conn, s.id).await? {
            println!(
                "    {}  {} {}  {}  {}/{}  -> {}",
                e.occurred_at,
                e.code,
                e.kind.as_deref().unwrap_or_default(),
                e.description,
                e.city.as_deref().unwrap_or_default(),
                e.state.as_deref().unwrap_or_default(),
                e.status().map_or(
                    if e.reverses {
                        "(reverses previous)"
                    } else {
                        "(unmapped)"
                    },
                    tracking_domain::Status::as_str
                )
            );
        }
        println!("  status changes:");
        let changes = tracking_store::changes::of_shipment(&pool, s.id).await?;
        for tracking_store::changes::Listed {
            change_id: id,
            previous_status: prev,
            status: st,
            occurred_at: at,
            published,
            ..
        } in changes
        {
            let deliveries = tracking_store::deliveries::of_change(&pool, id).await?;
            let d: Vec<String> = deliveries
                .into_iter()
                .map(|(dest, state)| format!("{dest}={state}"))
                .collect();
            println!(
                "    {at}  {prev} -> {st}  {id}{}  {}",
                if published {
                    ""
                } else {
                    " (not yet published)"
                },
                d.join(" ")
            );
        }
    }
    Ok(())
}
