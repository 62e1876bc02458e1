//! `trackctl publish`: publishes tracking requests (one from flags, JSON lines or CSV) to `tracking.requests`,
//! validated here first.

use anyhow::{Context, bail};
use std::io::{BufRead, Read};
use tracking_app::topology::TRACKING_REQUESTS;
use tracking_domain::TrackingRequest;
use tracking_runtime::amqp::{AmqpSettings, Outgoing, Publisher};

use super::store_arg;

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

pub(super) async fn run(args: PublishArgs) -> anyhow::Result<()> {
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
