//! `trackctl events`: stored carrier events, e.g. the codes no event table maps.

use clap::Subcommand;
#[derive(Subcommand)]
pub enum EventsCommand {
    /// The (carrier, code, type) pairs of stored events that no event table maps, with their description, counts
    /// and when they were seen: what the UnmappedCarrierEventCode alert is about. Map them in
    /// crates/domain/data/CARRIER.toml (or the copy in EVENT_TABLES_DIR), then run `shipment recompute --all`.
    Unmapped,
}

pub(super) async fn run(cmd: EventsCommand) -> anyhow::Result<()> {
    match cmd {
        EventsCommand::Unmapped => events_unmapped().await,
    }
}

async fn events_unmapped() -> anyhow::Result<()> {
    let pool = tracking_store::Db::connect_lazy(&crate::boot::db_settings(2)?)?;
    let codes = tracking_store::views::unmapped_codes(&pool).await?;
    if codes.is_empty() {
        println!("Every stored carrier event maps to a status.");
        return Ok(());
    }
    println!(
        "{:<10} {:<6} {:<5} {:>7} {:>9}  {:<23}  description",
        "carrier", "code", "type", "events", "shipments", "last seen"
    );
    for c in &codes {
        println!(
            "{:<10} {:<6} {:<5} {:>7} {:>9}  {:<23}  {}",
            c.carrier,
            c.code,
            c.kind,
            c.events,
            c.shipments,
            c.last_seen.format("%Y-%m-%d %H:%M:%S UTC"),
            c.description
        );
    }
    let carriers: std::collections::BTreeSet<&str> =
        codes.iter().map(|c| c.carrier.as_str()).collect();
    let tables: Vec<String> = carriers
        .iter()
        .map(|c| format!("crates/domain/data/{c}.toml"))
        .collect();
    println!(
        "{} unmapped pair(s). Map them in {} (or the copy in EVENT_TABLES_DIR), deploy the normalizer, then run \
         `trackctl shipment recompute --all` to record and publish the changes they make.",
        codes.len(),
        tables.join(", ")
    );
    Ok(())
}
