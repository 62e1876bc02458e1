//! The RabbitMQ topology the application describes ([`Topology`]: its work queues, shared exchanges and bindings),
//! declared idempotently by every process at start. The runtime knows no queue by name: the application installs
//! its description once at start ([`install`]), and every consumer and publisher declares that.
//!
//! | name | kind | notes |
//! | --- | --- | --- |
//! | each of [`Topology::exchanges`] | topic exchange | the application's shared exchanges, bound to queues with [`BINDING_KEY`] |
//! | `Q` (each work queue's name) | quorum queue, and a topic exchange | the way into `Q` without the default exchange: key `Q` reaches `Q`, `Q.dead` and `Q.retry.{ms}ms` their queues |
//! | `Q.dead` | quorum queue | parked messages with `x-park-reason`, `x-attempts`, `x-original-queue` headers |
//! | `Q.retry.{ms}ms` | quorum queue | message TTL, then dead-lettered back to `Q` through the default exchange |
//!
//! Work queues dead-letter at-least-once to `Q.dead` once a message was delivered `x-delivery-limit` times
//! (a message that crashes its worker every time ends up parked, not lost and not looping). Every queue states its
//! delivery limit (RabbitMQ 4 gives quorum queues a default of 20): parking queues [`PARKED_DELIVERY_LIMIT`].
//!
//! Why each work queue has an exchange of its own name: publishing to the default exchange is one permission
//! (`write` on `amq.default`) that reaches every queue of the vhost, so a user allowed it could put a forged carrier
//! update on another worker's queue. Through `Q`'s own exchange a worker's user is given write on the exchanges it
//! needs and nothing else (`deploy/rabbitmq/users.json`); topic permissions restrict the routing keys of the users
//! that feed another worker's queue (they may send `Q`, not `Q.dead`).
//!
//! Least-privilege users have no `configure` permission at all (which would also let them delete): the topology is
//! provisioned by an administrator (`deploy/rabbitmq/definitions.json`), and [`declare_permitted`] creates or
//! re-declares what the user may and only checks that the rest exists.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Connection, ExchangeKind};
use std::time::Duration;

/// The application's topology: what [`declare`] declares, given as data.
#[derive(Debug, Clone, Copy)]
pub struct Topology {
    /// Every work queue, each with its `.dead` and `.retry.*` queues, and an exchange of its own name.
    pub work_queues: &'static [&'static str],
    /// The shared topic exchanges (work queues' own exchanges come on top).
    pub exchanges: &'static [&'static str],
    /// The shared exchanges' bindings, as (queue, exchange); each with the routing key [`BINDING_KEY`].
    pub bindings: &'static [(&'static str, &'static str)],
}

static INSTALLED: std::sync::OnceLock<&'static Topology> = std::sync::OnceLock::new();

/// Gives the process its application's topology, once (later calls keep the first): every consumer and publisher
/// declares it when it connects ([`declare_permitted`]). Binaries do it before anything else.
pub fn install(topology: &'static Topology) {
    let _ = INSTALLED.set(topology);
}

/// The installed topology, if any.
pub fn installed() -> Option<&'static Topology> {
    INSTALLED.get().copied()
}

/// Deliveries of one message before the broker parks it on its own (a worker crashing on it each time). Also the
/// retry tiers' limit (nothing consumes them; past it a message would go back to its work queue early, not be lost).
pub const DELIVERY_LIMIT: i64 = 50;

/// The parking queues' delivery limit: unlimited in practice. Only `trackctl` reads them, and reading never
/// returns a message (it is republished, then acked), so only a `trackctl` killed while holding messages counts
/// one. Not `-1`: RabbitMQ 4 reads `-1` as "no limit", but 3.x drops a message at its first return under it
/// (measured on 3.10), and policies refuse `-1`; a number means the same on both (docs/operations.md).
pub const PARKED_DELIVERY_LIMIT: i64 = 1_000_000;

pub fn dead_queue(queue: &str) -> String {
    format!("{queue}.dead")
}

pub fn retry_queue(queue: &str, delay: Duration) -> String {
    format!("{queue}.retry.{}ms", delay.as_millis())
}

/// The exchange through which messages reach `queue` (its work queue, `.dead` or `.retry.*` by routing key):
/// the work queue's own exchange, which has the work queue's name.
pub fn exchange_of(work_queue: &str) -> &str {
    work_queue
}

/// The routing key of every binding in [`Topology::bindings`].
pub const BINDING_KEY: &str = "#";

/// One binding as `declare` declares it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Binding {
    pub queue: String,
    pub exchange: String,
    pub routing_key: String,
}

impl Topology {
    /// Every exchange [`Topology::declare`] declares, all durable topic exchanges: the shared ones, then each work
    /// queue's own.
    pub fn exchanges(&self) -> Vec<&'static str> {
        self.exchanges
            .iter()
            .chain(self.work_queues)
            .copied()
            .collect()
    }

    /// Every binding `declare` declares for these retry delays: the shared exchanges' [`Topology::bindings`], then each
    /// work queue's exchange to the work queue, its `.dead` queue and its retry tiers, each under the queue's own name.
    pub fn bindings(&self, retry_delays: &[Duration]) -> Vec<Binding> {
        let mut out: Vec<Binding> = self
            .bindings
            .iter()
            .map(|(queue, exchange)| Binding {
                queue: (*queue).to_owned(),
                exchange: (*exchange).to_owned(),
                routing_key: BINDING_KEY.to_owned(),
            })
            .collect();
        for &queue in self.work_queues {
            let targets = [queue.to_owned(), dead_queue(queue)]
                .into_iter()
                .chain(retry_delays.iter().map(|d| retry_queue(queue, *d)));
            for target in targets {
                out.push(Binding {
                    exchange: exchange_of(queue).to_owned(),
                    routing_key: target.clone(),
                    queue: target,
                });
            }
        }
        out
    }
}

/// A queue argument's value, as `declare` sends it (text as a long string, numbers as a signed 64-bit integer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueArg {
    Text(String),
    Long(i64),
}

impl QueueArg {
    fn to_amqp(&self) -> AMQPValue {
        match self {
            QueueArg::Text(s) => AMQPValue::LongString(LongString::from(s.as_str())),
            QueueArg::Long(n) => AMQPValue::LongLongInt(*n),
        }
    }
}

/// One queue as `declare` declares it: durable, not exclusive, not auto-delete, with these arguments in this order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSpec {
    pub name: String,
    pub arguments: Vec<(&'static str, QueueArg)>,
}

fn text(s: &str) -> QueueArg {
    QueueArg::Text(s.to_owned())
}

/// Every queue `declare` declares for these retry delays, in declaration order: per work queue, its `.dead` queue,
/// the work queue, then its retry tiers. Pure: deployment files (a broker definitions file) and their tests use it.
impl Topology {
    pub fn queues(&self, retry_delays: &[Duration]) -> Vec<QueueSpec> {
        let mut out = Vec::new();
        for &queue in self.work_queues {
            let dead = dead_queue(queue);
            out.push(QueueSpec {
                name: dead.clone(),
                arguments: vec![
                    ("x-queue-type", text("quorum")),
                    ("x-delivery-limit", QueueArg::Long(PARKED_DELIVERY_LIMIT)),
                ],
            });
            out.push(QueueSpec {
                name: queue.to_owned(),
                arguments: vec![
                    ("x-queue-type", text("quorum")),
                    ("x-dead-letter-exchange", text("")),
                    ("x-dead-letter-routing-key", text(&dead)),
                    ("x-dead-letter-strategy", text("at-least-once")),
                    ("x-overflow", text("reject-publish")),
                    ("x-delivery-limit", QueueArg::Long(DELIVERY_LIMIT)),
                ],
            });
            for delay in retry_delays {
                out.push(QueueSpec {
                    name: retry_queue(queue, *delay),
                    arguments: vec![
                        ("x-queue-type", text("quorum")),
                        (
                            "x-message-ttl",
                            QueueArg::Long(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX)),
                        ),
                        ("x-dead-letter-exchange", text("")),
                        ("x-dead-letter-routing-key", text(queue)),
                        ("x-dead-letter-strategy", text("at-least-once")),
                        ("x-overflow", text("reject-publish")),
                        ("x-delivery-limit", QueueArg::Long(DELIVERY_LIMIT)),
                    ],
                });
            }
        }
        out
    }
}

fn table(entries: &[(&'static str, QueueArg)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert(ShortString::from(*k), v.to_amqp());
    }
    t
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

fn passive() -> QueueDeclareOptions {
    QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    }
}

fn exchange_options(passive: bool) -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        durable: true,
        passive,
        ..ExchangeDeclareOptions::default()
    }
}

async fn declare_exchange(channel: &Channel, name: &str, passive: bool) -> lapin::Result<()> {
    channel
        .exchange_declare(
            name.into(),
            ExchangeKind::Topic,
            exchange_options(passive),
            FieldTable::default(),
        )
        .await
}

async fn declare_queue(channel: &Channel, queue: &QueueSpec) -> lapin::Result<()> {
    channel
        .queue_declare(
            queue.name.as_str().into(),
            durable(),
            table(&queue.arguments),
        )
        .await
        .map(|_| ())
}

async fn bind(channel: &Channel, binding: &Binding) -> lapin::Result<()> {
    channel
        .queue_bind(
            binding.queue.as_str().into(),
            binding.exchange.as_str().into(),
            binding.routing_key.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
}

/// Declares the whole topology on one channel, failing at the first refusal: for a user allowed everything (an
/// administrator, tests). Retry tiers are named by their delay, so workers with different `RETRY_DELAYS_MS`
/// never clash on queue arguments.
impl Topology {
    pub async fn declare(&self, channel: &Channel, retry_delays: &[Duration]) -> lapin::Result<()> {
        for exchange in self.exchanges() {
            declare_exchange(channel, exchange, false).await?;
        }
        for queue in self.queues(retry_delays) {
            declare_queue(channel, &queue).await?;
        }
        for binding in self.bindings(retry_delays) {
            bind(channel, &binding).await?;
        }
        Ok(())
    }
}

/// Why [`declare_permitted`] failed.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// Objects this user may not create are missing: an administrator provisions them.
    #[error(
        "RabbitMQ lacks {} that this user may not create: {}; an administrator declares them (rabbitmqctl import_definitions deploy/rabbitmq/definitions.json, docs/operations.md)",
        if .0.len() == 1 { "an object" } else { "objects" },
        .0.join(", ")
    )]
    Missing(Vec<String>),
    /// The binary never called [`install`]: a programming error, reported rather than declaring nothing.
    #[error(
        "no topology was installed: the binary must call tracking_runtime::amqp::topology::install at start"
    )]
    NotInstalled,
    #[error("declaring the topology: {0}")]
    Amqp(#[from] lapin::Error),
}

/// The AMQP reply code of a channel or connection error, e.g. 403 (ACCESS_REFUSED), 404 (NOT_FOUND), 406
/// (PRECONDITION_FAILED), with the broker's text.
pub fn reply(e: &lapin::Error) -> Option<(u16, String)> {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => {
            Some((amqp.get_id(), amqp.get_message().as_str().to_owned()))
        }
        _ => None,
    }
}

/// Whether a PRECONDITION_FAILED answer to a queue's declaration is only about the arguments this version added
/// to queues that earlier versions declared without them (the explicit `x-delivery-limit` of parking queues and
/// retry tiers): such a queue is kept as it is (a policy gives it the limit, docs/operations.md), while any other
/// difference (a queue type, a dead-letter target) still stops the worker.
pub fn added_argument_only(reply_text: &str) -> bool {
    reply_text.contains("inequivalent arg 'x-delivery-limit'")
}

/// What [`declare_permitted`] did besides declaring.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Declared {
    /// Exchanges and queues this user may not declare, found to exist (a passive declare).
    pub checked: usize,
    /// Bindings this user may not declare (they cannot be checked without permissions; the definitions hold them).
    pub bindings_not_declared: usize,
    /// Queues kept with the arguments an earlier version gave them ([`added_argument_only`]).
    pub kept_as_is: Vec<String>,
}

/// A fresh channel after a refusal closed the last one.
async fn reopen(conn: &Connection, channel: &mut Channel) -> lapin::Result<()> {
    if !channel.status().connected() {
        *channel = conn.create_channel().await?;
    }
    Ok(())
}

/// Declares what this connection's user may declare, and checks the rest: the start-up of every worker.
///
/// The first exchange is declared as a probe. A user refused it (ACCESS_REFUSED: no `configure` permission, as the
/// deploy's least-privilege users) only checks the topology: each exchange and queue with a passive declare, which
/// needs no permission, and the declaration fails naming every one that is missing ([`TopologyError::Missing`]);
/// bindings are left to the definitions (nothing can check them without permissions). The probe is the only
/// refusal such a user meets (one channel closed), so its log stays quiet.
///
/// Any other user declares everything as [`declare`] does, except that an object it turns out not to be allowed
/// is checked like above, and a queue that exists with the arguments of an earlier version
/// ([`added_argument_only`]) is kept, with a warning. Each refusal closes its channel; a new one is opened.
pub async fn declare_permitted(
    conn: &Connection,
    retry_delays: &[Duration],
) -> Result<Declared, TopologyError> {
    let topology = installed().ok_or(TopologyError::NotInstalled)?;
    topology.declare_permitted(conn, retry_delays).await
}

impl Topology {
    /// [`declare_permitted`] for this topology.
    pub async fn declare_permitted(
        &self,
        conn: &Connection,
        retry_delays: &[Duration],
    ) -> Result<Declared, TopologyError> {
        let mut channel = conn.create_channel().await?;
        let mut done = Declared::default();
        let mut missing = Vec::new();
        let all_exchanges = self.exchanges();
        let may_configure = match declare_exchange(&channel, all_exchanges[0], false).await {
            Ok(()) => true,
            Err(e) if reply(&e).map(|r| r.0) == Some(403) => {
                reopen(conn, &mut channel).await?;
                false
            }
            Err(e) => return Err(e.into()),
        };
        for exchange in all_exchanges {
            if may_configure {
                let Err(e) = declare_exchange(&channel, exchange, false).await else {
                    continue;
                };
                if reply(&e).map(|r| r.0) != Some(403) {
                    return Err(e.into());
                }
                reopen(conn, &mut channel).await?;
            }
            match declare_exchange(&channel, exchange, true).await {
                Ok(()) => done.checked += 1,
                Err(e) if reply(&e).map(|r| r.0) == Some(404) => {
                    missing.push(format!("exchange {exchange}"));
                    reopen(conn, &mut channel).await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        for queue in self.queues(retry_delays) {
            if may_configure {
                let Err(e) = declare_queue(&channel, &queue).await else {
                    continue;
                };
                let refused = match reply(&e) {
                    Some((403, _)) => true,
                    Some((406, text)) if added_argument_only(&text) => {
                        tracing::warn!(queue = %queue.name, reason = %text,
                        "This queue was declared by an earlier version without the delivery limit this one sets; it is kept as it is (docs/operations.md, \"Upgrading the topology\").");
                        done.kept_as_is.push(queue.name.clone());
                        false
                    }
                    _ => return Err(e.into()),
                };
                reopen(conn, &mut channel).await?;
                if !refused {
                    continue;
                }
            }
            match channel
                .queue_declare(queue.name.as_str().into(), passive(), FieldTable::default())
                .await
            {
                Ok(_) => done.checked += 1,
                Err(e) if reply(&e).map(|r| r.0) == Some(404) => {
                    missing.push(format!("queue {}", queue.name));
                    reopen(conn, &mut channel).await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        if !missing.is_empty() {
            let _ = channel.close(200, "topology incomplete".into()).await;
            return Err(TopologyError::Missing(missing));
        }
        for binding in self.bindings(retry_delays) {
            if !may_configure {
                done.bindings_not_declared += 1;
                continue;
            }
            let Err(e) = bind(&channel, &binding).await else {
                continue;
            };
            if reply(&e).map(|r| r.0) != Some(403) {
                return Err(e.into());
            }
            done.bindings_not_declared += 1;
            reopen(conn, &mut channel).await?;
        }
        let _ = channel.close(200, "topology declared".into()).await;
        if done.checked > 0 {
            tracing::debug!(
                checked = done.checked,
                bindings_not_declared = done.bindings_not_declared,
                "This user may not declare the whole topology; what it may not declare exists."
            );
        }
        Ok(done)
    }
}

/// Messages ready in a queue right now (a passive declare: the management API's counts lag by seconds).
pub async fn message_count(channel: &Channel, queue: &str) -> lapin::Result<u32> {
    let q = channel
        .queue_declare(queue.into(), passive(), FieldTable::default())
        .await?;
    Ok(q.message_count())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A made-up application: the runtime's tests know no real queue either.
    const TEST: Topology = Topology {
        work_queues: &["a.in", "b.in"],
        exchanges: &["a.out"],
        bindings: &[("b.in", "a.out")],
    };

    #[test]
    fn every_queue_states_its_delivery_limit() {
        let delays = [Duration::from_secs(1), Duration::from_secs(10)];
        let all = TEST.queues(&delays);
        assert_eq!(all.len(), TEST.work_queues.len() * (2 + delays.len()));
        for q in &all {
            let limit = q
                .arguments
                .iter()
                .find(|(k, _)| *k == "x-delivery-limit")
                .map(|(_, v)| v.clone());
            let expected = if q.name.ends_with(".dead") {
                PARKED_DELIVERY_LIMIT
            } else {
                DELIVERY_LIMIT
            };
            assert_eq!(limit, Some(QueueArg::Long(expected)), "{}", q.name);
        }
    }

    #[test]
    fn each_work_queue_is_reached_through_its_own_exchange() {
        let delays = [Duration::from_secs(1)];
        let all = TEST.bindings(&delays);
        assert_eq!(all.len(), TEST.bindings.len() + TEST.work_queues.len() * 3);
        for &queue in TEST.work_queues {
            for target in [
                queue.to_owned(),
                dead_queue(queue),
                retry_queue(queue, delays[0]),
            ] {
                assert!(all.contains(&Binding {
                    queue: target.clone(),
                    exchange: queue.to_owned(),
                    routing_key: target,
                }));
            }
        }
        assert!(
            TEST.exchanges()
                .iter()
                .all(|e| !e.is_empty() && !e.starts_with("amq."))
        );
    }

    #[test]
    fn only_the_added_delivery_limit_is_tolerated_on_redeclaring() {
        assert!(added_argument_only(
            "PRECONDITION_FAILED - inequivalent arg 'x-delivery-limit' for queue 'q.dead' in vhost 't': received the value '1000000' of type 'signedint' but current is none"
        ));
        assert!(!added_argument_only(
            "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'q' in vhost 't'"
        ));
        assert!(!added_argument_only(
            "PRECONDITION_FAILED - inequivalent arg 'x-dead-letter-exchange' for queue 'q'"
        ));
    }
}
