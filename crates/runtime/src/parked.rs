//! Erasing a customer from parked messages (`Q.dead`): parked tracking requests, status changes and carrier updates
//! carry the customer's name and email. [`erase`] reads each parking queue once, as `trackctl dead list` does
//! (`basic.get`, without handing anything back, which would count a delivery against the quorum queue's limit):
//! a message that carries the address (in its body or a header, any case) is acked and so dropped; any other is
//! republished unchanged to the end of its queue with confirms, and only then acked. Only the messages there at the
//! start are read, so the sweep is bounded by what was parked.

use crate::amqp::topology;
use crate::amqp::{AmqpSettings, ConnectError};
use lapin::Confirmation;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use std::time::Duration;

/// What a sweep did to one parking queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParkedErased {
    pub queue: String,
    /// Messages read (those parked when the sweep began).
    pub read: u64,
    /// Messages that carried the address, dropped.
    pub dropped: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ParkedError {
    #[error("cannot connect to RabbitMQ: {0}")]
    Connect(#[from] ConnectError),
    #[error("RabbitMQ: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("{0}")]
    Topology(topology::TopologyError),
    #[error(
        "RabbitMQ did not take a parked message's copy back into {0}; that message stays parked"
    )]
    NotConfirmed(String),
}

/// The headers a parked message keeps when it is moved to the end of its queue: all but the broker's
/// `x-delivery-count` (a stale count on the copy would only mislead).
pub fn kept_headers(headers: &FieldTable) -> FieldTable {
    let mut kept = FieldTable::default();
    for (k, v) in headers.inner() {
        if k.as_str() != "x-delivery-count" {
            kept.insert(k.clone(), v.clone());
        }
    }
    kept
}

/// Whether a parked message carries `needle` (already lower-cased): in its body, or in a text header (a park
/// reason quoting an SMTP server's answer, say).
pub fn carries(body: &[u8], headers: &FieldTable, needle: &str) -> bool {
    if needle.is_empty() {
        return false;
    }
    let holds = |bytes: &[u8]| {
        String::from_utf8_lossy(bytes)
            .to_lowercase()
            .contains(needle)
    };
    holds(body)
        || headers.inner().values().any(|v| match v {
            AMQPValue::LongString(s) => holds(s.as_bytes()),
            AMQPValue::ShortString(s) => holds(s.as_str().as_bytes()),
            _ => false,
        })
}

/// Drops the messages parked in every work queue's parking queue that carry `address` (compared lower-cased),
/// keeping the others in their order. Returns what it did per queue.
pub async fn erase(
    settings: &AmqpSettings,
    name: &str,
    address: &str,
) -> Result<Vec<ParkedErased>, ParkedError> {
    let needle = address.trim().to_lowercase();
    let work_queues = topology::installed().map_or(&[][..], |t| t.work_queues);
    if work_queues.is_empty() {
        return Err(ParkedError::Topology(topology::TopologyError::NotInstalled));
    }
    let conn = crate::amqp::connect(settings, name).await?;
    let mut done = Vec::new();
    for &work in work_queues {
        let result = erase_in(&conn, work, &needle, settings.publish_timeout).await;
        match result {
            Ok(r) => done.push(r),
            Err(e) => {
                let _ = conn.close(200, "erase failed".into()).await;
                return Err(e);
            }
        }
    }
    let _ = conn.close(200, "erased".into()).await;
    Ok(done)
}

async fn erase_in(
    conn: &lapin::Connection,
    work: &str,
    needle: &str,
    publish_timeout: Duration,
) -> Result<ParkedErased, ParkedError> {
    let dead = topology::dead_queue(work);
    let get = conn.create_channel().await?;
    let publish = conn.create_channel().await?;
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let total = u64::from(topology::message_count(&get, &dead).await?);
    let mut report = ParkedErased {
        queue: dead.clone(),
        read: 0,
        dropped: 0,
    };
    while report.read < total {
        let Some(msg) = get
            .basic_get(dead.as_str().into(), BasicGetOptions::default())
            .await?
        else {
            break;
        };
        let delivery = msg.delivery;
        report.read += 1;
        let headers = delivery.properties.headers().clone().unwrap_or_default();
        if carries(&delivery.data, &headers, needle) {
            delivery.ack(BasicAckOptions::default()).await?;
            report.dropped += 1;
            continue;
        }
        let kept = kept_headers(&headers);
        let confirm = publish
            .basic_publish(
                topology::exchange_of(work).into(),
                dead.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &delivery.data,
                delivery.properties.clone().with_headers(kept),
            )
            .await?;
        match tokio::time::timeout(publish_timeout, confirm).await {
            Ok(Ok(Confirmation::Ack(None))) => {}
            Ok(Err(e)) => return Err(e.into()),
            Ok(Ok(_)) | Err(_) => return Err(ParkedError::NotConfirmed(dead)),
        }
        delivery.ack(BasicAckOptions::default()).await?;
    }
    let _ = publish.close(200, "swept".into()).await;
    let _ = get.close(200, "swept".into()).await;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::LongString;

    #[test]
    fn the_address_is_found_in_the_body_in_any_case() {
        let body = br#"{"customer":{"email":"Ana.Souza@Example.com"}}"#;
        assert!(carries(
            body,
            &FieldTable::default(),
            "ana.souza@example.com"
        ));
        assert!(!carries(body, &FieldTable::default(), "bia@example.com"));
    }

    #[test]
    fn the_address_is_found_in_a_text_header() {
        let mut headers = FieldTable::default();
        headers.insert(
            "x-park-reason".into(),
            AMQPValue::LongString(LongString::from("550 <ana@example.com>: unknown user")),
        );
        assert!(carries(b"{}", &headers, "ana@example.com"));
        assert!(!carries(b"{}", &FieldTable::default(), "ana@example.com"));
    }

    #[test]
    fn an_empty_address_matches_nothing() {
        assert!(!carries(b"anything", &FieldTable::default(), ""));
    }
}
