//! `trackctl`: the operator's command line. Publishes tracking requests (one, JSON lines or CSV), shows a
//! shipment and the carriers' health, lists and replays parked messages, and migrates the database.
//!
//! Layout: this module holds the command tree and the dispatch; each subcommand (or group of them) lives in a
//! file of its own: `migrate`, `publish`, `shipment`, `shipments` (lists), `dead` (parked messages),
//! `carriers`, `events` and `customer`.

use clap::{Parser, Subcommand};

mod carriers;
mod customer;
mod dead;
mod events;
mod migrate;
mod publish;
mod shipment;
mod shipments;

pub use carriers::CarriersCommand;
pub use customer::{CustomerCommand, requested_by};
pub use dead::{DeadCommand, park_reason};
pub use events::EventsCommand;
pub use publish::PublishArgs;
pub use shipment::ShipmentCommand;
pub use shipments::{LateArgs, ShipmentsCommand};

#[derive(Parser)]
#[command(name = "trackctl", version, about = "Operate the tracking pipeline", after_help = EXAMPLES)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

const EXAMPLES: &str = "Examples:
  trackctl migrate
  trackctl publish --order-id 1385310000001-01 --code DL746686536BR --email ana@example.com --locale pt-BR --marketplace acme:ACME-991
  trackctl publish --file requests.jsonl        (one JSON tracking request per line; - reads standard input)
  trackctl publish --csv requests.csv           (header: order_id,tracking_code,email,name,locale,carrier,marketplace,marketplace_order_id,invoice_number)
  trackctl shipment show DL746686536BR
  trackctl shipment recompute --all     (after the event-code table changed: records and publishes only new changes)
  trackctl customer erase ana@example.com   (erases the address from the database and the parked messages)
  trackctl shipments late --carrier correios --since 7d   (late parcels: promised date passed without delivery)
  trackctl shipments late --stalled             (parcels with no carrier event for CARRIER_STALE_AFTER_HOURS)
  trackctl dead list tracking.requests
  trackctl dead show email.order-status 1
  trackctl dead replay email.order-status --limit 10
  trackctl carriers health                      (each carrier's state as the fetchers last reported it, and each account's)
  trackctl carriers health --store loja-a       (the accounts of one store of STORES_FILE)
  trackctl shipment show DL746686536BR --store loja-a
  trackctl publish --store loja-a --order-id 1001 --code DL746686536BR --email ana@example.com
  trackctl carriers replay                      (after a parser fix: publish the events of kept unreadable answers)
  trackctl events unmapped                      (carrier event codes no table maps: add them, then shipment recompute --all)

Settings come from the environment: AMQP_URL, DATABASE_URL.";

#[derive(Subcommand)]
pub enum Command {
    /// Create the database if it is missing and apply the schema's migrations.
    Migrate,
    /// Publish tracking requests to `tracking.requests` (validated here first; invalid ones are reported, not sent).
    Publish(PublishArgs),
    /// Shipments.
    #[command(subcommand)]
    Shipment(ShipmentCommand),
    /// Lists of shipments.
    #[command(subcommand)]
    Shipments(ShipmentsCommand),
    /// Parked messages (`Q.dead`).
    #[command(subcommand)]
    Dead(DeadCommand),
    /// Carriers.
    #[command(subcommand)]
    Carriers(CarriersCommand),
    /// Stored carrier events.
    #[command(subcommand)]
    Events(EventsCommand),
    /// A customer's personal data: what is stored (access) and erasing it (LGPD; docs/privacy.md).
    #[command(subcommand)]
    Customer(CustomerCommand),
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Migrate => migrate::run().await,
        Command::Publish(args) => publish::run(args).await,
        Command::Shipment(cmd) => shipment::run(cmd).await,
        Command::Shipments(cmd) => shipments::run(cmd).await,
        Command::Dead(cmd) => dead::run(cmd).await,
        Command::Carriers(cmd) => carriers::run(cmd).await,
        Command::Events(cmd) => events::run(cmd).await,
        Command::Customer(cmd) => customer::run(cmd).await,
    }
}

/// `--store`, parsed.
fn store_arg(store: Option<&str>) -> anyhow::Result<Option<tracking_domain::StoreName>> {
    store
        .map(|s| tracking_domain::StoreName::parse(s).map_err(|e| anyhow::anyhow!("--store: {e}")))
        .transpose()
}
