//! Least privilege on the real broker: the deploy's RabbitMQ definitions (`deploy/rabbitmq/definitions.json`: the
//! topology and its policy) and users (`deploy/rabbitmq/users.json`: permissions and topic permissions) are loaded
//! into a vhost of the test's own, with each user renamed `{vhost}-{user}` and given a random password, and removed
//! afterwards.
//!
//! - `each_user_is_refused_everything_but_its_own_work`: every user tries every action of the matrix (delete or
//!   declare each queue and exchange, publish to each exchange with each routing key, the default exchange included,
//!   consume, get and purge each queue, bind) and is refused (ACCESS_REFUSED) exactly what its role does not do.
//!   Only the fetcher and tracking-api may publish carrier updates; no user may delete or create anything; nobody
//!   may write to the default exchange (which reaches every queue).
//! - `the_workers_run_the_pipeline_as_their_own_users`: the real binaries, each as its own user, carry a parcel from
//!   posted to delivered (retries' and parks' paths included: an invalid request is parked by the fetcher), and
//!   tracking-api and trackctl do their work as theirs.

#![allow(clippy::unwrap_used)]

use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;
use tracking_app::topology::{
    self, CARRIER_EVENTS, EMAIL_QUEUE, MARKETPLACE_QUEUE, NORMALIZER_QUEUE, ORDER_STATUS,
    TRACKING_REQUESTS, WORK_QUEUES,
};
use tracking_runtime::amqp::DEFAULT_RETRY_DELAYS_MS;
use tracking_tests::{TestEnv, Worker, amqp_base_url, eventually, rabbitmqctl};

// ---------------------------------------------------------------------------------------------------------------
// What each user does, from the code: the specification `users.json` is checked against.

struct Role {
    user: &'static str,
    /// Queues it reads (consume, get, purge).
    reads: &'static [&'static str],
    /// (exchange, routing key) pairs it publishes.
    publishes: &'static [(&'static str, &'static str)],
}

const TR_DEAD: &str = "tracking.requests.dead";
const TR_RETRY: &str = "tracking.requests.retry.1000ms";
const NQ_DEAD: &str = "normalizer.carrier-events.dead";
const NQ_RETRY: &str = "normalizer.carrier-events.retry.1000ms";
const EQ_DEAD: &str = "email.order-status.dead";
const EQ_RETRY: &str = "email.order-status.retry.1000ms";
const MQ_DEAD: &str = "marketplace.order-status.dead";
const MQ_RETRY: &str = "marketplace.order-status.retry.1000ms";

const ROLES: [Role; 8] = [
    // Consumes requests; publishes carrier updates; retries and parks its own.
    Role {
        user: "fetcher",
        reads: &[TRACKING_REQUESTS],
        publishes: &[
            (CARRIER_EVENTS, "correios.DL746686536BR"),
            (TRACKING_REQUESTS, TR_DEAD),
            (TRACKING_REQUESTS, TR_RETRY),
            (TRACKING_REQUESTS, TRACKING_REQUESTS),
        ],
    },
    // Consumes carrier updates; publishes status changes; retries and parks its own.
    Role {
        user: "normalizer",
        reads: &[NORMALIZER_QUEUE],
        publishes: &[
            (ORDER_STATUS, "delivered"),
            (NORMALIZER_QUEUE, NQ_DEAD),
            (NORMALIZER_QUEUE, NQ_RETRY),
            (NORMALIZER_QUEUE, NORMALIZER_QUEUE),
        ],
    },
    // Sends requests for due shipments, and late notices straight to the email publisher's queue.
    Role {
        user: "scheduler",
        reads: &[],
        publishes: &[
            (TRACKING_REQUESTS, TRACKING_REQUESTS),
            (EMAIL_QUEUE, EMAIL_QUEUE),
        ],
    },
    Role {
        user: "email-publisher",
        reads: &[EMAIL_QUEUE],
        publishes: &[
            (EMAIL_QUEUE, EQ_DEAD),
            (EMAIL_QUEUE, EQ_RETRY),
            (EMAIL_QUEUE, EMAIL_QUEUE),
        ],
    },
    Role {
        user: "marketplace-publisher",
        reads: &[MARKETPLACE_QUEUE],
        publishes: &[
            (MARKETPLACE_QUEUE, MQ_DEAD),
            (MARKETPLACE_QUEUE, MQ_RETRY),
            (MARKETPLACE_QUEUE, MARKETPLACE_QUEUE),
        ],
    },
    // Queues requests, and support's manual events as carrier updates.
    Role {
        user: "tracking-api",
        reads: &[],
        publishes: &[
            (TRACKING_REQUESTS, TRACKING_REQUESTS),
            (CARRIER_EVENTS, "correios.DL746686536BR"),
        ],
    },
    // The operator: reads the parking queues (list, show, purge), puts a read message back at their end, replays
    // parked messages into their work queue, and publishes recomputed changes (`shipment recompute`, as the
    // normalizer's relay does). `carriers replay` publishes carrier updates: it runs with the fetcher's user.
    Role {
        user: "trackctl",
        reads: &[TR_DEAD, NQ_DEAD, EQ_DEAD, MQ_DEAD],
        publishes: &[
            (ORDER_STATUS, "delivered"),
            (TRACKING_REQUESTS, TRACKING_REQUESTS),
            (TRACKING_REQUESTS, TR_DEAD),
            (NORMALIZER_QUEUE, NORMALIZER_QUEUE),
            (NORMALIZER_QUEUE, NQ_DEAD),
            (EMAIL_QUEUE, EMAIL_QUEUE),
            (EMAIL_QUEUE, EQ_DEAD),
            (MARKETPLACE_QUEUE, MARKETPLACE_QUEUE),
            (MARKETPLACE_QUEUE, MQ_DEAD),
        ],
    },
    // KEDA reads queue lengths with a passive declare, which needs no permission.
    Role {
        user: "keda",
        reads: &[],
        publishes: &[],
    },
];

fn default_delays() -> Vec<Duration> {
    DEFAULT_RETRY_DELAYS_MS
        .iter()
        .map(|ms| Duration::from_millis(*ms))
        .collect()
}

// ---------------------------------------------------------------------------------------------------------------
// Provisioning from the deploy files.

fn deploy_file(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/rabbitmq")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// The deploy's definitions and users in `vhost`, users renamed `{vhost}-{user}`; the users (and the vhost, when
/// this made it) are deleted on drop. The management UI's `admin` is not created: nothing of it is tested here
/// and an administrator is not left on a shared broker even briefly.
struct Provisioned {
    vhost: String,
    users: Vec<String>,
    password: String,
    host: String,
    owns_vhost: bool,
}

impl Drop for Provisioned {
    fn drop(&mut self) {
        for u in &self.users {
            let _ = rabbitmqctl(&["delete_user", u]);
        }
        if self.owns_vhost {
            let _ = rabbitmqctl(&["delete_vhost", &self.vhost]);
        }
    }
}

impl Provisioned {
    fn url(&self, user: &str) -> String {
        format!(
            "amqp://{}-{user}:{}@{}/{}",
            self.vhost, self.password, self.host, self.vhost
        )
    }
}

fn import(vhost: &str, what: &str, defs: &Value) -> anyhow::Result<()> {
    let file = std::env::temp_dir().join(format!("{vhost}-{what}.json"));
    std::fs::write(&file, serde_json::to_vec(defs)?)?;
    let imported = rabbitmqctl(&["import_definitions", file.to_str().unwrap()]);
    let _ = std::fs::remove_file(&file);
    imported
}

/// Loads `definitions.json` then `users.json` into `vhost` (made here unless `existing`).
fn provision(vhost: &str, existing: bool) -> anyhow::Result<Provisioned> {
    let host = amqp_base_url()
        .rsplit_once('@')
        .map(|(_, h)| h.trim_end_matches('/').to_owned())
        .unwrap();
    let mut out = Provisioned {
        vhost: vhost.to_owned(),
        users: Vec::new(),
        password: format!("pw-{}", uuid::Uuid::new_v4().simple()),
        host,
        owns_vhost: !existing,
    };
    if !existing {
        rabbitmqctl(&["add_vhost", vhost])?;
    }
    // The test's own administrator view of the vhost (counts, checks after the refusals).
    rabbitmqctl(&["set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"])?;

    let mut defs = deploy_file("definitions.json");
    assert!(
        defs.get("users").is_none() && defs.get("permissions").is_none(),
        "definitions.json is loaded at every boot: it must hold no users (their passwords would be reset)"
    );
    defs["vhosts"][0]["name"] = Value::String(vhost.to_owned());
    for list in ["queues", "exchanges", "bindings", "policies"] {
        for item in defs[list].as_array_mut().unwrap() {
            item["vhost"] = Value::String(vhost.to_owned());
        }
    }
    import(vhost, "definitions", &defs)?;

    let mut users = deploy_file("users.json");
    assert!(
        users.get("users").is_none(),
        "users.json sets permissions only: importing users would reset their passwords"
    );
    users["permissions"]
        .as_array_mut()
        .unwrap()
        .retain(|p| p["user"] != "admin");
    let secrets = std::env::temp_dir().join(format!("{vhost}-secrets"));
    std::fs::create_dir_all(&secrets)?;
    for list in ["permissions", "topic_permissions"] {
        for item in users[list].as_array_mut().unwrap() {
            let name = format!("{vhost}-{}", item["user"].as_str().unwrap());
            if list == "permissions" {
                std::fs::write(
                    secrets.join(format!("rabbitmq-password-{name}")),
                    format!("{}\n", out.password),
                )?;
                out.users.push(name.clone());
            }
            item["user"] = Value::String(name);
            item["vhost"] = Value::String(vhost.to_owned());
        }
    }
    let file = std::env::temp_dir().join(format!("{vhost}-users.json"));
    std::fs::write(&file, serde_json::to_vec_pretty(&users)?)?;
    // The deploy's own script creates the users and imports their permissions; the second run (after a change of
    // users.json, say) must keep the passwords.
    for _ in 0..2 {
        let run = std::process::Command::new("sh")
            .arg(
                PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("../deploy/rabbitmq/provision-users.sh"),
            )
            .env("USERS_JSON", &file)
            .env("SECRETS_DIR", &secrets)
            .output()?;
        anyhow::ensure!(
            run.status.success(),
            "provision-users.sh: {}{}",
            String::from_utf8_lossy(&run.stdout),
            String::from_utf8_lossy(&run.stderr)
        );
    }
    let _ = std::fs::remove_file(&file);
    let _ = std::fs::remove_dir_all(&secrets);
    Ok(out)
}

/// Connects as `user`, waiting for the (asynchronous) import to give it its permissions.
async fn connect_as(p: &Provisioned, user: &str) -> Connection {
    let url = p.url(user);
    eventually(
        Duration::from_secs(20),
        &format!("{user} to connect"),
        || async {
            Ok(Connection::connect(&url, ConnectionProperties::default())
                .await
                .ok())
        },
    )
    .await
    .unwrap()
}

// ---------------------------------------------------------------------------------------------------------------
// The matrix.

#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Done,
    Refused,
    Other(String),
}

fn answer(result: Result<(), lapin::Error>) -> Answer {
    match result {
        Ok(()) => Answer::Done,
        Err(e) => {
            let text = e.to_string();
            if topology::reply(&e).is_some_and(|(code, _)| code == 403)
                || text.contains("ACCESS_REFUSED")
                || text.contains("ACCESS-REFUSED")
            {
                Answer::Refused
            } else {
                Answer::Other(text)
            }
        }
    }
}

async fn on_new_channel<F, Fut>(conn: &Connection, f: F) -> Answer
where
    F: FnOnce(Channel) -> Fut,
    Fut: std::future::Future<Output = Result<(), lapin::Error>>,
{
    let ch = conn.create_channel().await.unwrap();
    let a = answer(f(ch.clone()).await);
    if ch.status().connected() {
        let _ = ch.close(200, "done".into()).await;
    }
    a
}

/// A confirmed, mandatory publish: `Done` only when the broker took it into a queue.
async fn publish(conn: &Connection, exchange: &str, key: &str) -> Answer {
    let (exchange, key) = (exchange.to_owned(), key.to_owned());
    on_new_channel(conn, |ch| async move {
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        let confirm = ch
            .basic_publish(
                exchange.as_str().into(),
                key.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                b"{}",
                BasicProperties::default().with_delivery_mode(2),
            )
            .await?;
        let confirmed = tokio::time::timeout(Duration::from_secs(5), confirm).await;
        match confirmed {
            Ok(Ok(Confirmation::Ack(None))) => Ok(()),
            Ok(Err(e)) => Err(e),
            other => {
                // Refused publishes close the channel: its next call says why.
                ch.basic_qos(1, Default::default()).await?;
                Err(lapin::Error::from(std::io::Error::other(format!(
                    "published to {exchange:?} with {key:?} but not routed: {other:?}"
                ))))
            }
        }
    })
    .await
}

async fn queues_and_exchanges_intact(admin: &Connection) {
    let ch = admin.create_channel().await.unwrap();
    for q in topology::queues(&default_delays()) {
        ch.queue_declare(
            q.name.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("queue {} is gone: {e}", q.name));
    }
    for e in topology::exchanges() {
        ch.exchange_declare(
            e.into(),
            lapin::ExchangeKind::Topic,
            ExchangeDeclareOptions {
                passive: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_or_else(|err| panic!("exchange {e} is gone: {err}"));
    }
}

/// Every (exchange, routing key) the matrix publishes with: each exchange with the keys that route somewhere
/// through it, and the default exchange (`""`) and two of RabbitMQ's own with each queue's name.
fn publish_targets() -> Vec<(String, String)> {
    let mut out = vec![
        (
            CARRIER_EVENTS.to_owned(),
            "correios.DL746686536BR".to_owned(),
        ),
        (ORDER_STATUS.to_owned(), "delivered".to_owned()),
    ];
    for b in topology::bindings(&[Duration::from_secs(1)]) {
        if WORK_QUEUES.contains(&b.exchange.as_str()) {
            out.push((b.exchange, b.routing_key));
        }
    }
    for q in topology::queues(&[Duration::from_secs(1)]) {
        for exchange in ["", "amq.direct", "amq.topic"] {
            out.push((exchange.to_owned(), q.name.clone()));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn each_user_is_refused_everything_but_its_own_work() {
    let vhost = format!("priv-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let p = tokio::task::block_in_place(|| provision(&vhost, false)).unwrap();
    let admin = Connection::connect(
        &format!("{}/{vhost}", amqp_base_url()),
        ConnectionProperties::default(),
    )
    .await
    .unwrap();
    let delays = default_delays();
    let queues: Vec<String> = topology::queues(&delays)
        .into_iter()
        .map(|q| q.name)
        .collect();
    let targets = publish_targets();
    let mut wrong = Vec::new();
    let mut check = |what: String, expected: bool, got: Answer| {
        let ok = matches!(
            (expected, &got),
            (true, Answer::Done) | (false, Answer::Refused)
        );
        if !ok {
            wrong.push(format!(
                "{what}: expected {}, got {got:?}",
                if expected { "allowed" } else { "refused" }
            ));
        }
    };

    for role in &ROLES {
        let who = role.user;
        let conn = connect_as(&p, who).await;

        // What every worker does at start: everything it may not declare exists, nothing is kept from before.
        let declared = topology::declare_permitted(&conn, &delays).await;
        match declared {
            Ok(d) => {
                assert_eq!(
                    d.checked,
                    queues.len() + topology::exchanges().len(),
                    "{who}: every queue and exchange checked, none declared"
                );
                assert!(d.kept_as_is.is_empty(), "{who}: {:?}", d.kept_as_is);
            }
            Err(e) => panic!("{who}: declaring the topology: {e}"),
        }

        for q in &queues {
            let name = q.clone();
            check(
                format!("{who}: delete queue {q}"),
                false,
                on_new_channel(&conn, |ch| async move {
                    ch.queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                        .await
                        .map(|_| ())
                })
                .await,
            );
            let reads = role.reads.contains(&q.as_str());
            let name = q.clone();
            check(
                format!("{who}: get from {q}"),
                reads,
                on_new_channel(&conn, |ch| async move {
                    ch.basic_get(name.as_str().into(), BasicGetOptions { no_ack: false })
                        .await
                        .map(|_| ())
                })
                .await,
            );
            let name = q.clone();
            check(
                format!("{who}: consume {q}"),
                reads,
                on_new_channel(&conn, |ch| async move {
                    ch.basic_consume(
                        name.as_str().into(),
                        "".into(),
                        BasicConsumeOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                    .map(|_| ())
                })
                .await,
            );
            let name = q.clone();
            check(
                format!("{who}: purge {q}"),
                reads,
                on_new_channel(&conn, |ch| async move {
                    ch.queue_purge(name.as_str().into(), QueuePurgeOptions::default())
                        .await
                        .map(|_| ())
                })
                .await,
            );
            // Binding a queue to RabbitMQ's own topic exchange would copy anything published there into it.
            let name = q.clone();
            check(
                format!("{who}: bind {q} to amq.topic"),
                false,
                on_new_channel(&conn, |ch| async move {
                    ch.queue_bind(
                        name.as_str().into(),
                        "amq.topic".into(),
                        "#".into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                })
                .await,
            );
        }
        for e in topology::exchanges() {
            check(
                format!("{who}: delete exchange {e}"),
                false,
                on_new_channel(&conn, |ch| async move {
                    ch.exchange_delete(e.into(), ExchangeDeleteOptions::default())
                        .await
                })
                .await,
            );
        }
        // Creating anything: a queue of its own, another retry tier, an exchange.
        for q in [
            format!("{who}.own"),
            format!("{TRACKING_REQUESTS}.retry.1234ms"),
        ] {
            check(
                format!("{who}: declare queue {q}"),
                false,
                on_new_channel(&conn, |ch| async move {
                    ch.queue_declare(
                        q.as_str().into(),
                        QueueDeclareOptions {
                            durable: true,
                            ..QueueDeclareOptions::default()
                        },
                        FieldTable::default(),
                    )
                    .await
                    .map(|_| ())
                })
                .await,
            );
        }
        check(
            format!("{who}: declare exchange"),
            false,
            on_new_channel(&conn, |ch| async move {
                ch.exchange_declare(
                    "rogue".into(),
                    lapin::ExchangeKind::Fanout,
                    ExchangeDeclareOptions::default(),
                    FieldTable::default(),
                )
                .await
            })
            .await,
        );
        for (exchange, key) in &targets {
            let allowed = role
                .publishes
                .iter()
                .any(|(e, k)| e == exchange && k == key);
            check(
                format!("{who}: publish to {exchange:?} with {key:?}"),
                allowed,
                publish(&conn, exchange, key).await,
            );
        }
        let _ = conn.close(200, "bye".into()).await;
    }
    queues_and_exchanges_intact(&admin).await;
    let _ = admin.close(200, "bye".into()).await;
    assert!(
        wrong.is_empty(),
        "{} wrong answers:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

#[test]
fn only_the_fetcher_and_tracking_api_publish_carrier_updates_and_nobody_the_default_exchange() {
    // The roles above are what the matrix holds users.json to; this pins the issue's own words on them.
    for role in &ROLES {
        let carrier = role.publishes.iter().any(|(e, _)| *e == CARRIER_EVENTS);
        assert_eq!(
            carrier,
            ["fetcher", "tracking-api"].contains(&role.user),
            "{}",
            role.user
        );
        let into_normalizer = role
            .publishes
            .iter()
            .any(|(e, k)| *e == NORMALIZER_QUEUE && *k == NORMALIZER_QUEUE);
        // Its own input (retries come back there), and the operator's replays.
        assert_eq!(
            into_normalizer,
            ["normalizer", "trackctl"].contains(&role.user),
            "{}",
            role.user
        );
        assert!(role.publishes.iter().all(|(e, _)| !e.is_empty()));
    }
    let users = deploy_file("users.json");
    let named: std::collections::BTreeSet<&str> = users["permissions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["user"].as_str().unwrap())
        .collect();
    let expected: std::collections::BTreeSet<&str> =
        ROLES.iter().map(|r| r.user).chain(["admin"]).collect();
    assert_eq!(
        named, expected,
        "users.json names each role once, and admin"
    );
}

// ---------------------------------------------------------------------------------------------------------------
// The real binaries.

const API_TOKEN: &str = "privileges-test-api-token-0123456789abcdef";

#[tokio::test(flavor = "multi_thread")]
async fn the_workers_run_the_pipeline_as_their_own_users() -> anyhow::Result<()> {
    let mut env = TestEnv::new().await?;
    let vhost = env.amqp_url.rsplit('/').next().unwrap().to_owned();
    let p = tokio::task::block_in_place(|| provision(&vhost, true))?;
    for user in [
        "fetcher",
        "normalizer",
        "scheduler",
        "email-publisher",
        "marketplace-publisher",
        "tracking-api",
        "trackctl",
    ] {
        drop(connect_as(&p, user).await);
        env.set_worker_amqp_url(user, &p.url(user));
    }
    // The retry tiers the definitions provision (the workers may not create others).
    env.set_worker_env(
        "RETRY_DELAYS_MS",
        &DEFAULT_RETRY_DELAYS_MS.map(|d| d.to_string()).join(","),
    );

    let mut workers = tracking_tests::journey::posted_to_delivered(&env).await?;

    // A request that cannot be read: the fetcher parks it through its queue's own exchange.
    let amqp = env.amqp().await?;
    amqp.publish(TRACKING_REQUESTS, b"not json").await?;
    eventually(
        Duration::from_secs(30),
        "the fetcher to park it",
        || async { Ok((amqp.count(TR_DEAD).await? == 1).then_some(())) },
    )
    .await?;

    // trackctl as its own user: lists, shows, replays (the fetcher parks it again).
    let trackctl = |args: &[&str]| -> anyhow::Result<(bool, String)> {
        let out = std::process::Command::new(tracking_tests::bin_dir().join("trackctl"))
            .args(args)
            .envs(env.worker_env())
            .env("AMQP_URL", env.worker_amqp_url("trackctl"))
            .output()?;
        Ok((
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ))
    };
    let (ok, out) = tokio::task::block_in_place(|| trackctl(&["dead", "list", TRACKING_REQUESTS]))?;
    assert!(
        ok && out.contains("1 parked message(s)") && out.contains("#1"),
        "{out}"
    );
    let (ok, out) =
        tokio::task::block_in_place(|| trackctl(&["dead", "show", TRACKING_REQUESTS, "1"]))?;
    assert!(ok && out.contains("not json"), "{out}");
    let (ok, out) =
        tokio::task::block_in_place(|| trackctl(&["dead", "replay", TRACKING_REQUESTS]))?;
    assert!(ok && out.contains("Replayed 1"), "{out}");
    eventually(
        Duration::from_secs(30),
        "the replayed request to be parked again",
        || async { Ok((amqp.count(TR_DEAD).await? == 1).then_some(())) },
    )
    .await?;
    env.expect_parked(TR_DEAD, 1);

    // tracking-api as its own user queues a request (to the fetcher) and a manual event (to the normalizer).
    let api_addr = tracking_tests::free_addr();
    let mut api = Worker::started(
        &env,
        "tracking-api",
        &[
            ("API_TOKEN", API_TOKEN.to_owned()),
            ("HTTP_ADDR", api_addr.to_string()),
        ],
    )
    .await?;
    // The address it listens on: another than `api_addr` when that port was taken before it could bind it.
    let api_addr = api.http_addr()?;
    let http = reqwest::Client::new();
    let queued = http
        .post(format!("http://{api_addr}/v1/tracking-requests"))
        .bearer_auth(API_TOKEN)
        .json(&serde_json::json!({
            "order_id": "PRIV-1", "tracking_code": "DL746686536BR",
            "customer": {"email": "ana@example.com"}
        }))
        .send()
        .await?;
    assert_eq!(queued.status(), 202, "{}", queued.text().await?);
    let event = http
        .post(format!(
            "http://{api_addr}/v1/shipments/DL746686536BR/events"
        ))
        .bearer_auth(API_TOKEN)
        .json(&serde_json::json!({
            "status": "delivered",
            "occurred_at": chrono::Utc::now().to_rfc3339(),
        }))
        .send()
        .await?;
    assert_eq!(event.status(), 202, "{}", event.text().await?);

    // Nobody was refused anything along the way but the start-up's probe (declaring the first exchange, which tells
    // a user without configure permission to check the topology rather than declare it).
    tokio::time::sleep(Duration::from_secs(2)).await;
    workers.push(api);
    for w in &workers {
        let log = w.log_text();
        let refused: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("ACCESS_REFUSED") || l.contains("ACCESS-REFUSED"))
            .collect();
        assert!(!refused.is_empty(), "{}: the probe is refused", w.name);
        for line in refused {
            assert!(
                line.contains("class_id: 40, method_id: 10")
                    && line.contains("exchange 'carrier.events'"),
                "{} was refused something:\n{line}",
                w.name
            );
        }
    }
    api = workers.pop().unwrap();
    api.terminate()?;
    tracking_tests::journey::stop_cleanly(workers)?;
    drop(p);
    Ok(())
}
