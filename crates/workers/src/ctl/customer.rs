//! `trackctl customer`: the customer's rights from the command line (docs/privacy.md), for support staff who
//! answer a customer without the HTTP API. `customer data EMAIL` prints what is stored about the address (the
//! same JSON as `GET /v1/customers/{email}/data`); `customer erase EMAIL` erases it from the database and drops
//! the parked messages that carry it (as `DELETE /v1/customers/{email}`) and prints the counts. Each leaves an
//! audit row (`customer_requests`) naming `trackctl:{USER}` as who asked, with the address only as its keyed hash
//! under `UNSUBSCRIBE_SECRET` (none when it is not set).

use anyhow::Context;
use tracking_domain::EmailAddress;
use tracking_runtime::amqp::AmqpSettings;
use tracking_store::customers::{self, RequestKind};

#[derive(clap::Subcommand)]
pub enum CustomerCommand {
    /// Print, as JSON, everything stored about an address: its orders, parcels, status changes, emails, late
    /// notices and opt-outs.
    Data { email: String },
    /// Erase an address everywhere: its orders' customer name and email and every copy of them in the database,
    /// and the parked messages that carry it. Prints what was erased.
    Erase { email: String },
}

/// Who the audit records as asking: `trackctl:` and the operator's login name (`USER`), cut to fit.
pub fn requested_by(user: Option<&str>) -> String {
    let user: String = user
        .filter(|u| !u.trim().is_empty())
        .unwrap_or("unknown")
        .chars()
        .filter(|c| !c.is_control())
        .take(100)
        .collect();
    format!("trackctl:{user}")
}

pub async fn run(cmd: CustomerCommand) -> anyhow::Result<()> {
    let pool = tracking_store::Db::connect_lazy(&crate::boot::db_settings(2)?)?;
    let key = tracking_email::env::unsubscribe_key()?;
    let by = requested_by(std::env::var("USER").ok().as_deref());
    match cmd {
        CustomerCommand::Data { email } => {
            let address = EmailAddress::parse(&email)
                .map_err(|_| anyhow::anyhow!("EMAIL is not an email address"))?;
            let hash = key.as_ref().map(|k| k.address_hash(&address));
            let data =
                customers::data(&pool, address.as_str(), hash.as_ref(), i64::MAX - 1).await?;
            let counts = serde_json::json!({
                "orders": data["orders"].as_array().map_or(0, Vec::len),
                "opt_outs": data["opt_outs"].as_array().map_or(0, Vec::len),
            });
            customers::audit(&pool, RequestKind::Access, hash.as_ref(), &by, &counts).await?;
            println!("{}", serde_json::to_string_pretty(&data)?);
        }
        CustomerCommand::Erase { email } => {
            let address = EmailAddress::parse(&email)
                .map_err(|_| anyhow::anyhow!("EMAIL is not an email address"))?;
            let hash = key.as_ref().map(|k| k.address_hash(&address));
            let erased = customers::erase_address(&pool, address.as_str(), hash.as_ref()).await?;
            crate::retention::count_erased("request", &erased);
            let settings = AmqpSettings::from_env()?;
            let parked =
                tracking_runtime::parked::erase(&settings, "trackctl", address.as_str()).await;
            let mut counts = erased.to_json();
            counts["parked_messages"] = match &parked {
                Ok(queues) => serde_json::json!(queues.iter().map(|q| q.dropped).sum::<u64>()),
                Err(_) => serde_json::json!("not swept: RabbitMQ failed"),
            };
            let id =
                customers::audit(&pool, RequestKind::Erasure, hash.as_ref(), &by, &counts).await?;
            println!(
                "Erased from the database: {} order(s), {} status change(s), {} kept carrier answer(s), {} delivery text(s), {} opt-out(s).",
                erased.orders,
                erased.status_changes,
                erased.carrier_responses,
                erased.deliveries,
                erased.opt_outs
            );
            let queues = parked.context(
                "the database is erased, but the parked messages could not be swept: run it again",
            )?;
            for q in &queues {
                println!(
                    "{}: {} parked message(s) read, {} dropped.",
                    q.queue, q.read, q.dropped
                );
            }
            println!("Audit record {id}.");
        }
    }
    pool.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_operator_is_named_and_cut_to_fit() {
        assert_eq!(requested_by(Some("maria")), "trackctl:maria");
        assert_eq!(requested_by(None), "trackctl:unknown");
        assert_eq!(requested_by(Some(" ")), "trackctl:unknown");
        assert!(requested_by(Some(&"x".repeat(500))).len() <= 128);
    }
}
