//! `trackctl carriers`: the carriers' health as the fetchers report it, and replaying kept unreadable answers.

use clap::Subcommand;
use tracking_runtime::amqp::{AmqpSettings, Publisher};

use super::store_arg;

#[derive(Subcommand)]
pub enum CarriersCommand {
    /// Each carrier's state (ok, degraded, broken) as the fetchers last reported it, with the reason and
    /// counters; `unknown` for a carrier no fetcher reported on yet. Then each carrier account (its key, the
    /// stores using it, its state and reason).
    Health {
        /// Only the accounts this store uses.
        #[arg(long)]
        store: Option<String>,
    },
    /// Read the kept unreadable carrier answers (`carrier_responses`) again with this version's parsers and publish
    /// their events; run it after deploying a fixed parser. Needs the fetcher's carrier settings.
    Replay,
}

pub(super) async fn run(cmd: CarriersCommand) -> anyhow::Result<()> {
    match cmd {
        CarriersCommand::Health { store } => {
            carriers_health(store_arg(store.as_deref())?.as_ref()).await
        }
        CarriersCommand::Replay => carriers_replay().await,
    }
}

async fn carriers_replay() -> anyhow::Result<()> {
    let pool = tracking_store::Db::connect_lazy(&crate::boot::db_settings(2)?)?;
    let clients = crate::fetcher::CarrierSettings::from_env()?.parsers()?;
    let publisher = Publisher::new(AmqpSettings::from_env()?, "trackctl");
    let report = crate::fetcher::replay_responses(&pool, &clients, &publisher).await;
    publisher.close().await;
    let report = report?;
    println!(
        "Replayed {} kept answer(s): {} carrier update(s) published; {} still unreadable (see carrier_responses.replay_error).",
        report.replayed, report.published, report.still_unreadable
    );
    Ok(())
}

async fn carriers_health(store: Option<&tracking_domain::StoreName>) -> anyhow::Result<()> {
    let pool = tracking_store::Db::connect_lazy(&crate::boot::db_settings(2)?)?;
    let carriers = tracking_store::views::carrier_health(&pool).await?;
    for c in carriers.iter().filter(|_| store.is_none()) {
        let state = c.state.map_or("unknown", |s| s.as_str());
        let mut line = format!("{:<10} {:<9}", c.carrier, state);
        match c.updated_at {
            Some(at) => line.push_str(&format!(" reported {}", at.format("%Y-%m-%d %H:%M:%S UTC"))),
            None => line.push_str(" no fetcher has reported on it yet"),
        }
        if let Some(r) = &c.reason {
            line.push_str(&format!("  reason: {r}"));
        }
        if let Some(counters) = c
            .counters
            .as_ref()
            .filter(|v| v.as_object().is_some_and(|o| !o.is_empty()))
        {
            line.push_str(&format!("  counters: {counters}"));
        }
        println!("{line}");
    }
    let accounts = tracking_store::carrier_health::accounts(&pool).await?;
    for a in accounts
        .iter()
        .filter(|a| store.is_none_or(|s| a.store_list().contains(&s.as_str())))
    {
        let mut line = format!(
            "{:<10} {:<9} account {}  stores {}  reported {}",
            a.carrier,
            a.state,
            a.account,
            a.stores,
            a.updated_at.format("%Y-%m-%d %H:%M:%S UTC")
        );
        if let Some(r) = &a.reason {
            line.push_str(&format!("  reason: {r}"));
        }
        println!("{line}");
    }
    Ok(())
}
