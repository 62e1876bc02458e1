//! `trackctl`: the operator's command line. Publishes tracking requests (one, JSON lines or CSV), shows a
//! shipment and the carriers' health, lists and replays parked messages, and migrates the database.

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use lapin::Confirmation;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use std::io::{BufRead, Read};
use tracking_app::topology::{self, TRACKING_REQUESTS, WORK_QUEUES};
use tracking_domain::TrackingRequest;
use tracking_runtime::amqp::{AmqpSettings, Outgoing, Publisher};
use tracking_store::shipments;

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
    Customer(crate::customer_ctl::CustomerCommand),
}

#[derive(Subcommand)]
pub enum EventsCommand {
    /// The (carrier, code, type) pairs of stored events that no event table maps, with their description, counts
    /// and when they were seen: what the UnmappedCarrierEventCode alert is about. Map them in
    /// crates/domain/data/CARRIER.toml (or the copy in EVENT_TABLES_DIR), then run `shipment recompute --all`.
    Unmapped,
}

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

#[derive(clap::Args)]
pub struct PublishArgs {
    /// A file of JSON tracking requests, one per line (`-` for standard input).
    #[arg(long, conflicts_with_all = ["order_id", "code", "email", "csv"])]
    pub file: Option<String>,
    /// A CSV file with a header row naming its columns among order_id, tracking_code, email (required),
    /// name, locale, carrier, marketplace, marketplace_order_id, invoice_number (`-` for standard input).
    #[arg(long, conflicts_with_all = ["order_id", "code", "email"])]
    pub csv: Option<String>,
    #[arg(long)]
    pub order_id: Option<String>,
    /// The tracking code.
    #[arg(long)]
    pub code: Option<String>,
    /// The customer's email.
    #[arg(long)]
    pub email: Option<String>,
    #[arg(long)]
    pub name: Option<String>,
    /// pt-BR, es or en.
    #[arg(long)]
    pub locale: Option<String>,
    /// correios or jadlog (detected from the code when absent).
    #[arg(long)]
    pub carrier: Option<String>,
    /// `name:order_id` of the marketplace the order came from.
    #[arg(long)]
    pub marketplace: Option<String>,
    #[arg(long)]
    pub invoice: Option<String>,
    /// The store (of STORES_FILE) of every request published; a request naming another store is refused.
    #[arg(long)]
    pub store: Option<String>,
}

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

#[derive(Subcommand)]
pub enum DeadCommand {
    /// List parked messages with their reason (they stay parked); a message the broker parked at the queue's
    /// delivery limit says so.
    List {
        /// A work queue (`tracking.requests`) or its parking queue (`tracking.requests.dead`).
        queue: String,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Show one parked message in full: every header and the whole body (it stays parked).
    Show {
        queue: String,
        /// Its number in `dead list` (1 is the oldest).
        number: usize,
    },
    /// Move parked messages back to their work queue, oldest first, keeping their bodies and ids.
    Replay {
        queue: String,
        #[arg(long, default_value_t = usize::MAX)]
        limit: usize,
    },
    /// Delete every parked message of a queue.
    Purge {
        queue: String,
        /// Required: purging cannot be undone.
        #[arg(long)]
        yes: bool,
    },
}

fn work_queue(name: &str) -> anyhow::Result<&'static str> {
    let base = name.strip_suffix(".dead").unwrap_or(name);
    WORK_QUEUES
        .into_iter()
        .find(|q| *q == base)
        .with_context(|| {
            format!(
                "{name:?} is not a work queue; known: {}",
                WORK_QUEUES.join(", ")
            )
        })
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Migrate => {
            let db = crate::boot::db_settings(2)?;
            tracking_store::create_database_for(&db).await?;
            let pool = tracking_store::pool(&db)?;
            tracking_store::migrate(&pool).await?;
            println!("The database is migrated.");
            Ok(())
        }
        Command::Publish(args) => publish(args).await,
        Command::Shipment(ShipmentCommand::Show {
            tracking_code,
            store,
        }) => show(&tracking_code, store_arg(store.as_deref())?.as_ref()).await,
        Command::Shipment(ShipmentCommand::Recompute { tracking_code, .. }) => {
            recompute(tracking_code.as_deref()).await
        }
        Command::Shipments(ShipmentsCommand::Late(args)) => late_list(args).await,
        Command::Dead(cmd) => dead(cmd).await,
        Command::Carriers(CarriersCommand::Health { store }) => {
            carriers_health(store_arg(store.as_deref())?.as_ref()).await
        }
        Command::Carriers(CarriersCommand::Replay) => carriers_replay().await,
        Command::Events(EventsCommand::Unmapped) => events_unmapped().await,
        Command::Customer(cmd) => crate::customer_ctl::run(cmd).await,
    }
}

/// `--store`, parsed.
fn store_arg(store: Option<&str>) -> anyhow::Result<Option<tracking_domain::StoreName>> {
    store
        .map(|s| tracking_domain::StoreName::parse(s).map_err(|e| anyhow::anyhow!("--store: {e}")))
        .transpose()
}

/// A request's store under `publish --store`: the store given (a request naming another is refused).
fn with_store(
    request: Result<TrackingRequest, String>,
    store: Option<&tracking_domain::StoreName>,
) -> Result<TrackingRequest, String> {
    let mut r = request?;
    if let Some(store) = store {
        if !r.store.is_default() && &r.store != store {
            return Err(format!(
                "store: {:?} is not --store {store}",
                r.store.as_str()
            ));
        }
        r.store = store.clone();
    }
    Ok(r)
}

/// The CSV columns `publish --csv` knows, and where each goes in a tracking request.
const CSV_COLUMNS: [(&str, &str); 9] = [
    ("order_id", "order_id"),
    ("tracking_code", "tracking_code"),
    ("email", "customer.email"),
    ("name", "customer.name"),
    ("locale", "customer.locale"),
    ("carrier", "carrier"),
    ("marketplace", "marketplace.name"),
    ("marketplace_order_id", "marketplace.order_id"),
    ("invoice_number", "invoice_number"),
];
const CSV_REQUIRED: [&str; 3] = ["order_id", "tracking_code", "email"];

/// Publishing more requests than this prints a progress line on standard error every this many.
const PROGRESS_EVERY: usize = 500;

fn read_input(file: &str) -> anyhow::Result<Box<dyn BufRead>> {
    Ok(if file == "-" {
        Box::new(std::io::BufReader::new(std::io::stdin()))
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(file).with_context(|| format!("opening {file}"))?,
        ))
    })
}

/// The tracking requests of a CSV text, each with the line it starts on; an unusable header is an error.
fn csv_requests(text: &str) -> anyhow::Result<Vec<(String, Result<TrackingRequest, String>)>> {
    let mut records = crate::csv::records(text).into_iter();
    let Some((header_line, header)) = records.next() else {
        bail!("the CSV input is empty: it needs a header row naming its columns");
    };
    let header = header.map_err(|e| anyhow::anyhow!("line {header_line}: {e}"))?;
    let known = || {
        CSV_COLUMNS
            .iter()
            .map(|(c, _)| *c)
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut columns: Vec<&'static str> = Vec::new();
    for name in &header {
        let name = name.trim().to_ascii_lowercase();
        let Some((column, _)) = CSV_COLUMNS.iter().find(|(c, _)| *c == name) else {
            bail!(
                "line {header_line}: unknown column {name:?} in the header (known: {})",
                known()
            );
        };
        if columns.contains(column) {
            bail!("line {header_line}: column {name:?} appears twice in the header");
        }
        columns.push(column);
    }
    let missing: Vec<&str> = CSV_REQUIRED
        .into_iter()
        .filter(|c| !columns.contains(c))
        .collect();
    if !missing.is_empty() {
        bail!(
            "line {header_line}: the header lacks required column(s) {} (known: {})",
            missing.join(", "),
            known()
        );
    }
    let column_of = |field: &str| {
        CSV_COLUMNS
            .iter()
            .find(|(_, f)| *f == field)
            .map_or(field, |(c, _)| *c)
            .to_owned()
    };
    let mut out = Vec::new();
    for (line, record) in records {
        let what = format!("line {line}");
        let fields = match record {
            Ok(f) if f.len() == columns.len() => f,
            Ok(f) => {
                out.push((
                    what,
                    Err(format!(
                        "expected {} fields as in the header, found {}",
                        columns.len(),
                        f.len()
                    )),
                ));
                continue;
            }
            Err(e) => {
                out.push((what, Err(e)));
                continue;
            }
        };
        let mut v = serde_json::json!({ "customer": {} });
        for (column, value) in columns.iter().zip(fields) {
            let value = value.trim();
            if value.is_empty() {
                continue;
            }
            let path = CSV_COLUMNS
                .iter()
                .find(|(c, _)| c == column)
                .map_or(*column, |(_, f)| *f);
            match path.split_once('.') {
                Some((outer, inner)) => {
                    if !v[outer].is_object() {
                        v[outer] = serde_json::json!({});
                    }
                    v[outer][inner] = value.into();
                }
                None => v[path] = value.into(),
            }
        }
        let request = TrackingRequest::from_value(&v).map_err(|e| {
            e.details()
                .into_iter()
                .map(|d| format!("{}: {}", column_of(&d.field), d.message))
                .collect::<Vec<_>>()
                .join("; ")
        });
        out.push((what, request));
    }
    Ok(out)
}

async fn publish(args: PublishArgs) -> anyhow::Result<()> {
    let mut requests: Vec<(String, Result<TrackingRequest, String>)> = Vec::new();
    if let Some(file) = &args.csv {
        let mut text = String::new();
        read_input(file)?
            .read_to_string(&mut text)
            .with_context(|| format!("reading {file} (it must be UTF-8 text)"))?;
        requests = csv_requests(&text)?;
    } else if let Some(file) = &args.file {
        let reader = read_input(file)?;
        for (n, line) in reader.lines().enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            requests.push((
                format!("line {}", n + 1),
                TrackingRequest::parse(line.as_bytes()).map_err(|e| e.to_string()),
            ));
        }
    } else {
        let (Some(order_id), Some(code), Some(email)) = (&args.order_id, &args.code, &args.email)
        else {
            bail!("give --order-id, --code and --email, or --file, or --csv");
        };
        let mut v = serde_json::json!({ "order_id": order_id, "tracking_code": code, "customer": { "email": email } });
        if let Some(n) = &args.name {
            v["customer"]["name"] = n.clone().into();
        }
        if let Some(l) = &args.locale {
            v["customer"]["locale"] = l.clone().into();
        }
        if let Some(c) = &args.carrier {
            v["carrier"] = c.clone().into();
        }
        if let Some(i) = &args.invoice {
            v["invoice_number"] = i.clone().into();
        }
        if let Some(m) = &args.marketplace {
            let (name, order) = m
                .split_once(':')
                .context("--marketplace takes name:order_id")?;
            v["marketplace"] = serde_json::json!({ "name": name, "order_id": order });
        }
        requests.push((
            "request".into(),
            TrackingRequest::from_value(&v).map_err(|e| e.to_string()),
        ));
    }
    let store = store_arg(args.store.as_deref())?;
    let requests: Vec<(String, Result<TrackingRequest, String>)> = requests
        .into_iter()
        .map(|(what, r)| (what, with_store(r, store.as_ref())))
        .collect();
    let publisher = Publisher::new(AmqpSettings::from_env()?, "trackctl");
    let valid = requests.iter().filter(|(_, r)| r.is_ok()).count();
    let progress = valid > PROGRESS_EVERY;
    let (mut sent, mut refused) = (0usize, 0usize);
    for (what, req) in requests {
        match req {
            Ok(r) => {
                let body = serde_json::to_vec(&r)?;
                publisher
                    .publish(Outgoing::json(TRACKING_REQUESTS, TRACKING_REQUESTS, &body))
                    .await
                    .with_context(|| {
                        format!("{what}: publishing (published {sent}/{valid} before it)")
                    })?;
                sent += 1;
                if progress && (sent % PROGRESS_EVERY == 0 || sent == valid) {
                    eprintln!("published {sent}/{valid}");
                }
            }
            Err(e) => {
                eprintln!("{what}: not sent: {e}");
                refused += 1;
            }
        }
    }
    publisher.close().await;
    println!("Published {sent} tracking request(s); refused {refused}.");
    if refused > 0 {
        bail!("{refused} request(s) were invalid")
    } else {
        Ok(())
    }
}

async fn carriers_replay() -> anyhow::Result<()> {
    let pool = tracking_store::pool(&crate::boot::db_settings(2)?)?;
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

async fn events_unmapped() -> anyhow::Result<()> {
    let pool = tracking_store::pool(&crate::boot::db_settings(2)?)?;
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

async fn carriers_health(store: Option<&tracking_domain::StoreName>) -> anyhow::Result<()> {
    let pool = tracking_store::pool(&crate::boot::db_settings(2)?)?;
    let carriers = tracking_store::views::carrier_health(&pool).await?;
    for c in carriers.iter().filter(|_| store.is_none()) {
        let mut line = format!("{:<10} {:<9}", c.carrier, c.state);
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

async fn recompute(code: Option<&str>) -> anyhow::Result<()> {
    let tables = crate::normalizer::event_tables_from_env()?;
    let pool = tracking_store::pool(&crate::boot::db_settings(2)?)?;
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
    let pool = tracking_store::pool(&crate::boot::db_settings(2)?)?;
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
                e.kind.unwrap_or_default(),
                e.description,
                e.city.unwrap_or_default(),
                e.state.unwrap_or_default(),
                e.status.unwrap_or_else(|| if e.reverses {
                    "(reverses previous)".into()
                } else {
                    "(unmapped)".into()
                })
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
    let pool = tracking_store::pool(&crate::boot::db_settings(2)?)?;
    let mark = if args.stalled {
        tracking_store::late::Mark::Stalled
    } else {
        tracking_store::late::Mark::Late
    };
    let rows =
        tracking_store::late::list(&pool, mark, carrier.map(|c| c.as_str()), since, args.limit)
            .await?;
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

fn header(headers: &FieldTable, key: &str) -> String {
    headers.inner().get(key).map(render).unwrap_or_default()
}

/// A header value as text: strings and numbers as they are, tables as `{key=value, ...}` and arrays as `[...]`
/// (RabbitMQ's `x-death`), timestamps in UTC.
fn render(value: &AMQPValue) -> String {
    match value {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_owned(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::LongUInt(n) => n.to_string(),
        AMQPValue::Timestamp(t) => i64::try_from(*t)
            .ok()
            .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
            .map_or_else(
                || t.to_string(),
                |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
            ),
        AMQPValue::FieldArray(items) => format!(
            "[{}]",
            items
                .as_slice()
                .iter()
                .map(render)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        AMQPValue::FieldTable(t) => {
            let mut entries: Vec<String> = t
                .inner()
                .iter()
                .map(|(k, v)| format!("{}={}", k.as_str(), render(v)))
                .collect();
            entries.sort();
            format!("{{{}}}", entries.join(", "))
        }
        other => format!("{other:?}"),
    }
}

/// The `x-death` entries of a message (RabbitMQ's record of each dead-lettering): (reason, queue, count).
fn deaths(headers: &FieldTable) -> Vec<(String, String, i64)> {
    let Some(AMQPValue::FieldArray(entries)) = headers.inner().get("x-death") else {
        return Vec::new();
    };
    entries
        .as_slice()
        .iter()
        .filter_map(|e| match e {
            AMQPValue::FieldTable(t) => Some((
                header(t, "reason"),
                header(t, "queue"),
                match t.inner().get("count") {
                    Some(AMQPValue::LongLongInt(n)) => *n,
                    Some(AMQPValue::LongInt(n)) => i64::from(*n),
                    _ => 1,
                },
            )),
            _ => None,
        })
        .collect()
}

/// Why a message is parked: the worker's `x-park-reason`, or, for a message the broker dead-lettered itself (no
/// worker settled it), RabbitMQ's reason from `x-death`: `delivery_limit` when it was delivered
/// [`topology::DELIVERY_LIMIT`] times without being settled (each crash, restart or consumer timeout while a worker
/// held it returns it and counts one).
pub fn park_reason(headers: &FieldTable) -> String {
    let parked = header(headers, "x-park-reason");
    if !parked.is_empty() {
        return parked;
    }
    let deaths = deaths(headers);
    if let Some((_, queue, _)) = deaths.iter().find(|(r, _, _)| r == "delivery_limit") {
        return format!(
            "returned to {queue} unsettled more than {} times (its delivery limit): parked by the broker, not a \
             worker; each worker crash, restart or consumer timeout while a worker held it counts one",
            topology::DELIVERY_LIMIT
        );
    }
    if let Some((reason, queue, _)) = deaths.iter().find(|(r, _, _)| r != "expired") {
        return format!("dead-lettered by the broker from {queue} ({reason})");
    }
    "(none given)".into()
}

/// Parked messages moved per round while a parking queue is read: each round's copies are confirmed before its
/// originals are acked.
const READ_WINDOW: usize = 128;

/// Reads the messages parked in `work`'s parking queue once each, oldest first, without counting a delivery, and
/// returns how many it read: each is taken (`basic.get`), shown to `visit` with its number from 1, republished
/// unchanged to the end of the same queue (through the work queue's exchange, with confirms) and only then acked,
/// so the queue ends in the order it had. Handing a message back instead (nack or reject with requeue, or a channel
/// closed while holding it) counts one delivery, and RabbitMQ 4 drops or dead-letters a quorum queue's message
/// past its delivery limit (20 by default). Only the messages there at the start are read. A failure midway
/// returns the messages of the round in progress unacked (one delivery counted), and their copies may already be
/// queued: a message can then be listed twice, never lost.
async fn read_parked(
    conn: &lapin::Connection,
    work: &str,
    publish_timeout: std::time::Duration,
    mut visit: impl FnMut(usize, &lapin::message::Delivery),
) -> anyhow::Result<usize> {
    let dead = topology::dead_queue(work);
    let get = conn.create_channel().await?;
    let publish = conn.create_channel().await?;
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let total = topology::message_count(&get, &dead).await? as usize;
    let mut read = 0usize;
    while read < total {
        let mut round = Vec::new();
        while round.len() < READ_WINDOW && read + round.len() < total {
            match get
                .basic_get(dead.as_str().into(), BasicGetOptions::default())
                .await?
            {
                Some(msg) => round.push(msg.delivery),
                None => break,
            }
        }
        let Some(last) = round.last() else { break };
        let mut confirms = Vec::with_capacity(round.len());
        for delivery in &round {
            read += 1;
            visit(read, delivery);
            let headers = tracking_runtime::parked::kept_headers(
                &delivery.properties.headers().clone().unwrap_or_default(),
            );
            let properties = delivery.properties.clone().with_headers(headers);
            let confirm = publish
                .basic_publish(
                    topology::exchange_of(work).into(),
                    dead.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &delivery.data,
                    properties,
                )
                .await?;
            confirms.push(confirm);
        }
        for confirm in confirms {
            match tokio::time::timeout(publish_timeout, confirm).await {
                Ok(Ok(Confirmation::Ack(None))) => {}
                Ok(Ok(other)) => bail!(
                    "RabbitMQ did not take a parked message's copy back into {dead} ({other:?}); nothing was removed"
                ),
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => bail!(
                    "RabbitMQ did not confirm a parked message's copy within {publish_timeout:?}; nothing was removed"
                ),
            }
        }
        last.ack(BasicAckOptions { multiple: true }).await?;
    }
    let _ = publish.close(200, "read".into()).await;
    let _ = get.close(200, "read".into()).await;
    Ok(read)
}

async fn dead(cmd: DeadCommand) -> anyhow::Result<()> {
    let settings = AmqpSettings::from_env()?;
    let conn = tracking_runtime::amqp::connect(&settings, "trackctl").await?;
    topology::declare_permitted(&conn, &settings.retry_delays).await?;
    let channel = conn.create_channel().await?;
    match cmd {
        DeadCommand::List { queue, limit } => {
            let work = work_queue(&queue)?;
            let dead = topology::dead_queue(work);
            let total = topology::message_count(&channel, &dead).await?;
            println!("{dead}: {total} parked message(s)");
            // Read without handing anything back (which would count a delivery): see `read_parked`.
            let mut shown = Vec::new();
            read_parked(&conn, work, settings.publish_timeout, |n, delivery| {
                if n > limit {
                    return;
                }
                let headers = delivery.properties.headers().clone().unwrap_or_default();
                let body: String = String::from_utf8_lossy(&delivery.data)
                    .chars()
                    .take(300)
                    .collect();
                let id = delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|s| s.as_str().to_owned())
                    .unwrap_or_default();
                shown.push(format!(
                    "#{n}  id {id}  attempts {}  reason: {}\n    {}",
                    header(&headers, "x-attempts"),
                    park_reason(&headers),
                    body
                ));
            })
            .await?;
            for line in shown {
                println!("{line}");
            }
        }
        DeadCommand::Show { queue, number } => {
            let work = work_queue(&queue)?;
            let dead = topology::dead_queue(work);
            if number == 0 {
                bail!("messages are numbered from 1, as in `trackctl dead list`");
            }
            let mut shown = None;
            let count = read_parked(&conn, work, settings.publish_timeout, |n, d| {
                if n != number {
                    return;
                }
                let mut text = format!("{dead} #{number}\n");
                if let Some(id) = d.properties.message_id() {
                    text.push_str(&format!("message id: {id}\n"));
                }
                let headers = d.properties.headers().clone().unwrap_or_default();
                text.push_str(&format!("reason: {}\n", park_reason(&headers)));
                let mut names: Vec<_> = headers
                    .inner()
                    .keys()
                    .map(|k| k.as_str().to_owned())
                    .collect();
                names.sort();
                for name in names {
                    text.push_str(&format!("{name}: {}\n", header(&headers, &name)));
                }
                let body = serde_json::from_slice::<serde_json::Value>(&d.data)
                    .ok()
                    .and_then(|v| serde_json::to_string_pretty(&v).ok())
                    .unwrap_or_else(|| String::from_utf8_lossy(&d.data).into_owned());
                text.push_str(&body);
                shown = Some(text);
            })
            .await?;
            match shown {
                Some(text) => println!("{text}"),
                None => bail!("{dead} holds {count} message(s); there is no #{number}"),
            }
        }
        DeadCommand::Replay { queue, limit } => {
            let work = work_queue(&queue)?;
            let dead = topology::dead_queue(work);
            let publisher = Publisher::new(settings, "trackctl");
            let mut replayed = 0usize;
            while replayed < limit {
                let Some(msg) = channel
                    .basic_get(dead.as_str().into(), BasicGetOptions::default())
                    .await?
                else {
                    break;
                };
                let d = msg.delivery;
                let mut headers = FieldTable::default();
                for (k, v) in d.properties.headers().clone().unwrap_or_default().inner() {
                    if !matches!(
                        k.as_str(),
                        "x-park-reason"
                            | "x-attempts"
                            | "x-last-error"
                            | "x-death"
                            | "x-original-queue"
                            | "x-delivery-count"
                    ) && !k.as_str().starts_with("x-first-death")
                        && !k.as_str().starts_with("x-last-death")
                    {
                        headers.insert(k.clone(), v.clone());
                    }
                }
                let message_id = d
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|s| s.as_str().to_owned());
                publisher
                    .publish(Outgoing {
                        exchange: topology::exchange_of(work),
                        routing_key: work,
                        body: &d.data,
                        headers,
                        message_id,
                    })
                    .await?;
                d.ack(BasicAckOptions::default()).await?;
                replayed += 1;
            }
            publisher.close().await;
            println!("Replayed {replayed} message(s) from {dead} to {work}.");
        }
        DeadCommand::Purge { queue, yes } => {
            let dead = topology::dead_queue(work_queue(&queue)?);
            if !yes {
                bail!("purging {dead} cannot be undone: add --yes");
            }
            let n = channel
                .queue_purge(dead.as_str().into(), QueuePurgeOptions::default())
                .await?;
            println!("Purged {n} message(s) from {dead}.");
        }
    }
    let _ = conn.close(200, "bye".into()).await;
    Ok(())
}
