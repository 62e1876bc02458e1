//! `trackctl dead`: parked messages (`Q.dead`): listed, shown, replayed to their work queue or purged.

use anyhow::{Context, bail};
use clap::Subcommand;
use lapin::Confirmation;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use tracking_app::topology::{self, WORK_QUEUES};
use tracking_runtime::amqp::{AmqpSettings, Outgoing, Publisher};

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

pub(super) async fn run(cmd: DeadCommand) -> anyhow::Result<()> {
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
