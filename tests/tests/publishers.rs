//! The publishers against real far ends on 127.0.0.1: an SMTP server that comes late or refuses a mailbox, and a
//! marketplace receiver that answers 500, 429 or 400 on demand, or plays VTEX and Mercado Livre.

#![allow(clippy::unwrap_used)]

use serde_json::{Value, json};
use std::collections::HashSet;
use std::time::Duration;
use tracking_sim::marketplace::Receiver;
use tracking_sim::smtp::{Options, SmtpServer};
use tracking_tests::{
    TestEnv, Worker, carrier_update, correios_event, eventually, marketplaces_file, request,
    reserved_socket, s10, status_change, wait_finished,
};

const SECRET: &str = "webhook-secret-for-tests-0123";
const EMAIL_QUEUE: &str = "email.order-status";
const MARKET_QUEUE: &str = "marketplace.order-status";

async fn env() -> anyhow::Result<TestEnv> {
    TestEnv::ready().await
}

async fn start(env: &TestEnv, name: &str, extra: &[(&str, String)]) -> anyhow::Result<Worker> {
    Worker::started(env, name, extra).await
}

fn email_settings(smtp_url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("SMTP_URL", smtp_url.to_owned()),
        ("EMAIL_FROM", "Loja <noreply@loja.example>".into()),
        ("SMTP_TIMEOUT_MS", "2000".into()),
        ("EMAIL_RETRY_BASE_MS", "200".into()),
        ("RETRY_IN_PROCESS_BASE_MS", "50".into()),
        ("MAX_ATTEMPTS", "30".into()),
    ]
}

async fn deliveries(env: &TestEnv) -> anyhow::Result<Vec<(String, String)>> {
    Ok(
        sqlx::query_as("SELECT destination, state FROM deliveries ORDER BY created_at")
            .fetch_all(&env.pool)
            .await?,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_smtp_server_down_for_a_while_every_email_arrives_once_it_is_up()
-> anyhow::Result<()> {
    let env = env().await?;
    // The server's port, held from the start (bound, not listening: connections are refused until it starts).
    let (socket, addr) = reserved_socket()?;
    let publisher = start(
        &env,
        "email-publisher",
        &email_settings(&format!("smtp://{addr}")),
    )
    .await?;
    let amqp = env.amqp().await?;
    let mut ids = HashSet::new();
    for n in 0..5 {
        let c = status_change(
            &format!("D-{n}"),
            &s10("DL", n),
            "delivered",
            "out_for_delivery",
            "ana@example.com",
            None,
        );
        ids.insert(c["change_id"].as_str().unwrap().to_owned());
        env.record_change(&c).await?;
        amqp.publish(EMAIL_QUEUE, &serde_json::to_vec(&c)?).await?;
    }
    // Nobody listens: every change fails and waits for a retry.
    eventually(
        Duration::from_secs(20),
        "every change tried and failed",
        || async {
            let d = deliveries(&env).await?;
            Ok((d.len() == 5 && d.iter().all(|(_, s)| s == "failed")).then_some(()))
        },
    )
    .await?;
    // /health says why nothing goes out (set before the failure is recorded), and stays 200: the far end is
    // down, not the worker.
    let (code, health) = publisher.health().await?;
    assert_eq!(code, 200, "{health}");
    let email = &health["far_ends"]["email"];
    assert_eq!(email["state"], "failing", "{health}");
    assert!(
        email["error"]
            .as_str()
            .is_some_and(|e| e.contains("cannot connect to the SMTP server")),
        "{health}"
    );
    // Down for a while: each change went back to its queue to be tried again at least once more.
    eventually(Duration::from_secs(30), "ten retries", || async {
        let settled = publisher.settled(EMAIL_QUEUE).await?;
        Ok((settled.get("retried").copied().unwrap_or(0) >= 10).then_some(()))
    })
    .await?;

    let smtp = SmtpServer::start_on(socket.listen(64)?, Options::default()).await?;
    wait_finished(&amqp, &publisher, EMAIL_QUEUE, 5, Duration::from_secs(30)).await?;
    let received = smtp.received();
    assert_eq!(received.len(), 5, "each email once");
    let message_ids: HashSet<String> = received
        .iter()
        .map(|r| r.header("Message-ID").unwrap())
        .collect();
    let expected: HashSet<String> = ids
        .iter()
        .map(|id| format!("<{id}@loja.example>"))
        .collect();
    assert_eq!(message_ids, expected);
    // Each send is recorded done after the server's answer, which comes after the server kept the email.
    eventually(
        Duration::from_secs(10),
        "five sends recorded done",
        || async {
            let d = deliveries(&env).await?;
            Ok((d.len() == 5 && d.iter().all(|(_, s)| s == "done")).then_some(()))
        },
    )
    .await?;
    let (_, health) = publisher.health().await?;
    assert_eq!(
        health["far_ends"]["email"],
        json!({"state": "ok"}),
        "{health}"
    );
    assert_eq!(amqp.count("email.order-status.dead").await?, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recipient_refused_with_550_is_parked_with_the_answer_and_others_still_get_theirs()
-> anyhow::Result<()> {
    let env = env().await?;
    let smtp = SmtpServer::start("127.0.0.1:0".parse()?, &["nobody@example.com"]).await?;
    let _publisher = start(&env, "email-publisher", &email_settings(&smtp.url())).await?;
    let amqp = env.amqp().await?;
    let refused = status_change(
        "R-1",
        &s10("DL", 1),
        "delivered",
        "out_for_delivery",
        "nobody@example.com",
        None,
    );
    let fine = status_change(
        "R-2",
        &s10("DL", 2),
        "delivered",
        "out_for_delivery",
        "ana@example.com",
        None,
    );
    env.record_change(&refused).await?;
    amqp.publish(EMAIL_QUEUE, &serde_json::to_vec(&refused)?)
        .await?;
    env.record_change(&fine).await?;
    amqp.publish(EMAIL_QUEUE, &serde_json::to_vec(&fine)?)
        .await?;
    eventually(Duration::from_secs(20), "one parked, one sent", || async {
        Ok(
            (amqp.count("email.order-status.dead").await? == 1 && smtp.received().len() == 1)
                .then_some(()),
        )
    })
    .await?;
    let parked = amqp.drain("email.order-status.dead").await?;
    let reason = parked[0].header("x-park-reason").unwrap();
    assert!(
        reason.contains("550") && reason.contains("unknown"),
        "{reason}"
    );
    assert_eq!(
        parked[0].header("x-attempts").as_deref(),
        Some("1"),
        "not retried"
    );
    let body: Value = serde_json::from_slice(&parked[0].body)?;
    assert_eq!(body["change_id"], refused["change_id"]);
    assert_eq!(smtp.received()[0].to, vec!["ana@example.com".to_owned()]);
    // The sent one is recorded done after the server's answer, which comes after the server kept it.
    let expected = HashSet::from(["parked".to_owned(), "done".to_owned()]);
    eventually(Duration::from_secs(10), "one parked, one done", || async {
        let states: HashSet<String> = deliveries(&env).await?.into_iter().map(|d| d.1).collect();
        Ok((states == expected).then_some(()))
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_change_delivered_twice_gives_one_email_and_one_call() -> anyhow::Result<()> {
    let env = env().await?;
    let smtp = SmtpServer::start("127.0.0.1:0".parse()?, &[]).await?;
    let receiver = Receiver::start(SECRET.into(), "127.0.0.1:0".parse()?).await?;
    let file = marketplaces_file(&env, "acme", &receiver.url(), SECRET)?;
    let email = start(&env, "email-publisher", &email_settings(&smtp.url())).await?;
    let market = start(
        &env,
        "marketplace-publisher",
        &[("MARKETPLACES_FILE", file.display().to_string())],
    )
    .await?;
    let amqp = env.amqp().await?;
    let change = status_change(
        "T-1",
        &s10("DL", 3),
        "delivered",
        "out_for_delivery",
        "ana@example.com",
        Some(("acme", "A-1")),
    );
    env.record_change(&change).await?;
    let body = serde_json::to_vec(&change)?;
    for _ in 0..2 {
        amqp.publish(EMAIL_QUEUE, &body).await?;
        amqp.publish(MARKET_QUEUE, &body).await?;
    }
    // Both copies handled by each publisher: nothing is left to send twice.
    wait_finished(&amqp, &email, EMAIL_QUEUE, 2, Duration::from_secs(20)).await?;
    wait_finished(&amqp, &market, MARKET_QUEUE, 2, Duration::from_secs(20)).await?;
    assert_eq!(smtp.received().len(), 1);
    let calls = receiver.calls();
    assert_eq!(calls.len(), 1);
    assert!(calls[0].signature_valid);
    assert_eq!(
        calls[0].idempotency_key.as_deref(),
        change["change_id"].as_str()
    );
    Ok(())
}

async fn marketplace(
    env: &TestEnv,
    receiver: &Receiver,
    extra: &[(&str, String)],
) -> anyhow::Result<Worker> {
    let file = marketplaces_file(env, "acme", &receiver.url(), SECRET)?;
    let mut settings = vec![
        ("MARKETPLACES_FILE", file.display().to_string()),
        ("MARKETPLACE_RETRY_BASE_MS", "200".to_owned()),
        ("RETRY_IN_PROCESS_BASE_MS", "50".to_owned()),
    ];
    settings.extend(extra.iter().map(|(k, v)| (*k, v.clone())));
    start(env, "marketplace-publisher", &settings).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_marketplace_answering_500_three_times_then_200_gets_one_accepted_call()
-> anyhow::Result<()> {
    let env = env().await?;
    let receiver = Receiver::start(SECRET.into(), "127.0.0.1:0".parse()?).await?;
    receiver.answer_next(vec![(500, None), (500, None), (500, None)]);
    let publisher = marketplace(&env, &receiver, &[]).await?;
    let amqp = env.amqp().await?;
    let change = status_change(
        "M-1",
        &s10("DL", 4),
        "delivered",
        "out_for_delivery",
        "ana@example.com",
        Some(("acme", "A-2")),
    );
    env.record_change(&change).await?;
    amqp.publish(MARKET_QUEUE, &serde_json::to_vec(&change)?)
        .await?;
    eventually(Duration::from_secs(20), "an accepted call", || async {
        Ok(receiver
            .calls()
            .iter()
            .any(|c| c.answered == 200)
            .then_some(()))
    })
    .await?;
    wait_finished(&amqp, &publisher, MARKET_QUEUE, 1, Duration::from_secs(20)).await?;
    let calls = receiver.calls();
    let answers: Vec<u16> = calls.iter().map(|c| c.answered).collect();
    assert_eq!(answers, vec![500, 500, 500, 200]);
    assert!(calls.iter().all(
        |c| c.idempotency_key.as_deref() == change["change_id"].as_str() && c.signature_valid
    ));
    assert_eq!(amqp.count("marketplace.order-status.dead").await?, 0);
    let expected = vec![("marketplace:acme".to_owned(), "done".to_owned())];
    eventually(
        Duration::from_secs(10),
        "the call recorded done",
        || async { Ok((deliveries(&env).await? == expected).then_some(())) },
    )
    .await?;
    let (_, health) = publisher.health().await?;
    assert_eq!(
        health["far_ends"]["marketplace:acme"],
        json!({"state": "ok"}),
        "answered at last: {health}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_with_retry_after_is_honoured_and_a_400_is_parked_with_the_answer()
-> anyhow::Result<()> {
    let env = env().await?;
    let receiver = Receiver::start(SECRET.into(), "127.0.0.1:0".parse()?).await?;
    receiver.answer_next(vec![(429, Some("2".into()))]);
    let _publisher = marketplace(&env, &receiver, &[]).await?;
    let amqp = env.amqp().await?;
    let first = status_change(
        "L-1",
        &s10("DL", 5),
        "delivered",
        "out_for_delivery",
        "ana@example.com",
        Some(("acme", "A-3")),
    );
    env.record_change(&first).await?;
    amqp.publish(MARKET_QUEUE, &serde_json::to_vec(&first)?)
        .await?;
    eventually(
        Duration::from_secs(20),
        "the call after the 429",
        || async { Ok((receiver.calls().len() == 2).then_some(())) },
    )
    .await?;
    let calls = receiver.calls();
    assert_eq!((calls[0].answered, calls[1].answered), (429, 200));
    let waited = calls[1].received_at - calls[0].received_at;
    assert!(waited >= Duration::from_secs(2), "waited only {waited:?}");

    receiver.answer_next(vec![(400, None)]);
    let second = status_change(
        "L-2",
        &s10("DL", 6),
        "delivered",
        "out_for_delivery",
        "ana@example.com",
        Some(("acme", "A-4")),
    );
    env.record_change(&second).await?;
    amqp.publish(MARKET_QUEUE, &serde_json::to_vec(&second)?)
        .await?;
    eventually(Duration::from_secs(20), "the 400 parked", || async {
        Ok((amqp.count("marketplace.order-status.dead").await? == 1).then_some(()))
    })
    .await?;
    assert_eq!(receiver.calls().len(), 3, "a 400 is not retried");
    let parked = amqp.drain("marketplace.order-status.dead").await?;
    let reason = parked[0].header("x-park-reason").unwrap();
    assert!(
        reason.contains("acme refused")
            && reason.contains("answered 400")
            && reason.contains("simulated 400"),
        "{reason}"
    );
    Ok(())
}

fn header<'a>(call: &'a tracking_sim::marketplace::ReceivedCall, name: &str) -> Option<&'a str> {
    call.headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vtex_and_mercado_livre_get_their_own_request_shapes() -> anyhow::Result<()> {
    let env = env().await?;
    let receiver = Receiver::start(SECRET.into(), "127.0.0.1:0".parse()?).await?;
    let base = receiver.base_url();
    let file = env.log_dir().join("marketplaces-vtex-meli.toml");
    std::fs::write(
        &file,
        format!(
            "[[marketplace]]\nname = \"loja\"\nkind = \"vtex\"\nurl = \"{base}/vtex\"\napp_key = \"vtexappkey-loja\"\napp_token = \"vtex-token-123\"\nemail_customers = false\n\n\
             [[marketplace]]\nname = \"meli\"\nkind = \"mercadolivre\"\nurl = \"{base}/meli\"\naccess_token = \"APP_USR-123\"\nservice_id = 7\n"
        ),
    )?;
    let publisher = start(
        &env,
        "marketplace-publisher",
        &[("MARKETPLACES_FILE", file.display().to_string())],
    )
    .await?;
    let amqp = env.amqp().await?;
    // One order (and parcel) per marketplace: an order comes from one marketplace.
    let code = s10("DL", 7);
    let vtex_code = s10("DL", 17);
    let send = |status: &str, previous: &str, mp: (&str, &str)| {
        let (order, parcel) = if mp.0 == "meli" {
            ("V-2", &code)
        } else {
            ("V-1", &vtex_code)
        };
        status_change(order, parcel, status, previous, "ana@example.com", Some(mp))
    };
    let steps = [
        (send("in_transit", "posted", ("loja", "v-100")), 1),
        (send("delivered", "out_for_delivery", ("loja", "v-100")), 2),
        (send("posted", "registered", ("meli", "4455")), 4),
        (send("out_for_delivery", "in_transit", ("meli", "4455")), 5),
        (
            send("awaiting_pickup", "out_for_delivery", ("meli", "4455")),
            5,
        ),
        (send("delivered", "out_for_delivery", ("meli", "4455")), 6),
    ];
    for (change, calls_after) in &steps {
        env.record_change(change).await?;
        amqp.publish(MARKET_QUEUE, &serde_json::to_vec(change)?)
            .await?;
        eventually(Duration::from_secs(20), "the call", || async {
            Ok(
                (receiver.calls().len() == *calls_after && amqp.count(MARKET_QUEUE).await? == 0)
                    .then_some(()),
            )
        })
        .await?;
    }
    wait_finished(
        &amqp,
        &publisher,
        MARKET_QUEUE,
        steps.len() as u64,
        Duration::from_secs(20),
    )
    .await?;
    let calls = receiver.calls();
    assert_eq!(calls.len(), 6);

    // VTEX: the invoice's tracking, one event per change, delivery with its minute.
    for c in &calls[..2] {
        assert_eq!(c.method, "PUT");
        assert_eq!(
            c.path,
            "/vtex/api/oms/pvt/orders/v-100/invoice/NF-1/tracking"
        );
        assert_eq!(header(c, "x-vtex-api-appkey"), Some("vtexappkey-loja"));
        assert_eq!(header(c, "x-vtex-api-apptoken"), Some("vtex-token-123"));
        assert_eq!(header(c, "content-type"), Some("application/json"));
    }
    let event = json!({"city": "CAMPINAS", "state": "SP", "description": "Objeto entregue ao destinatário", "date": "2026-11-23"});
    assert_eq!(
        calls[0].json,
        Some(json!({"isDelivered": false, "deliveredDate": null, "events": [event]}))
    );
    assert_eq!(
        calls[1].json,
        Some(json!({"isDelivered": true, "deliveredDate": "2026-11-23 15:00", "events": [event]}))
    );

    // Mercado Livre: the tracking number once, then one notification per change it has a status for.
    assert_eq!(
        (calls[2].method.as_str(), calls[2].path.as_str()),
        ("PUT", "/meli/shipments/4455")
    );
    assert_eq!(
        calls[2].json,
        Some(json!({"tracking_number": code, "service_id": 7}))
    );
    let notifications: Vec<(&str, &str, Option<Value>)> = calls[3..]
        .iter()
        .map(|c| (c.method.as_str(), c.path.as_str(), c.json.clone()))
        .collect();
    let path = "/meli/shipments/4455/seller_notifications";
    assert_eq!(
        notifications,
        vec![
            (
                "POST",
                path,
                Some(json!({"status": "shipped", "substatus": null}))
            ),
            (
                "POST",
                path,
                Some(json!({"status": "shipped", "substatus": "out_for_delivery"}))
            ),
            (
                "POST",
                path,
                Some(json!({"status": "delivered", "substatus": null}))
            ),
        ]
    );
    for c in &calls[2..] {
        assert_eq!(header(c, "authorization"), Some("Bearer APP_USR-123"));
    }
    // awaiting_pickup has no Mercado Livre status: recorded as skipped, not sent.
    let skipped: i64 =
        sqlx::query_scalar("SELECT count(*) FROM deliveries WHERE detail LIKE 'skipped:%'")
            .fetch_one(&env.pool)
            .await?;
    assert_eq!(skipped, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_marketplace_never_gets_an_orders_later_change_before_its_earlier_one()
-> anyhow::Result<()> {
    let env = env().await?;
    let receiver = Receiver::start(SECRET.into(), "127.0.0.1:0".parse()?).await?;
    let amqp = env.amqp().await?;
    // Four real changes of one order, recorded by the normalizer: posted, in transit, out for delivery, delivered.
    let normalizer = start(&env, "normalizer", &[]).await?;
    let code = s10("DL", 8);
    let req = request("O-1", &code, "ana@example.com", "pt-BR", Some("acme"));
    let history = [
        correios_event("PO", "01", "2026-11-20T10:00:00-03:00"),
        correios_event("RO", "01", "2026-11-21T09:00:00-03:00"),
        correios_event("OEC", "01", "2026-11-23T08:00:00-03:00"),
        correios_event("BDE", "01", "2026-11-23T15:00:00-03:00"),
    ];
    for k in 1..=history.len() {
        let update = carrier_update(&code, Some(&req), &history[..k]);
        amqp.publish("normalizer.carrier-events", &serde_json::to_vec(&update)?)
            .await?;
        eventually(Duration::from_secs(20), "the change recorded", || async {
            Ok((amqp.count(MARKET_QUEUE).await? == k as u32).then_some(()))
        })
        .await?;
    }
    drop(normalizer);
    // The first call fails and, with no in-process retry, goes to the delay queue: the later changes are there first.
    receiver.answer_next(vec![(503, None)]);
    let publisher = marketplace(
        &env,
        &receiver,
        &[
            ("RETRY_IN_PROCESS", "0".into()),
            ("MARKETPLACE_ORDER_WAIT_MS", "200".into()),
        ],
    )
    .await?;
    eventually(Duration::from_secs(30), "four accepted calls", || async {
        Ok((receiver
            .calls()
            .iter()
            .filter(|c| c.answered == 200)
            .count()
            == 4)
            .then_some(()))
    })
    .await?;
    let accepted: Vec<String> = receiver
        .calls()
        .iter()
        .filter(|c| c.answered == 200)
        .map(|c| {
            c.json.as_ref().unwrap()["status"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        accepted,
        ["posted", "in_transit", "out_for_delivery", "delivered"]
    );
    let metrics = publisher.metrics().await?;
    assert!(
        metrics.contains("marketplace_calls_total{marketplace=\"acme\",result=\"waiting\"}"),
        "later changes waited: {metrics}"
    );
    Ok(())
}

/// The publishers' delivery records are batched: claims made together share one statement and each gets its own
/// answer (a change asked twice in one statement is claimed once; a done one is done; a leased one says for how
/// long), and a record the database refuses refuses only itself, not the others of its statement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_made_together_each_get_their_own_answer_and_a_refused_one_refuses_only_itself()
-> anyhow::Result<()> {
    use tracking_runtime::amqp::Outcome;
    use tracking_store::deliveries::{Claim, ClaimRequest, Completed, claim_many, complete_many};
    use tracking_workers::deliver::{self, Attempt, Ledger, RetryPolicy};
    use tracking_workers::far_ends::FarEnds;
    use uuid::Uuid;

    let env = env().await?;
    let lease = Duration::from_secs(60);
    let ask = |destination: &str, change_id: Uuid| ClaimRequest {
        destination: destination.to_owned(),
        change_id,
        owner: Uuid::new_v4(),
    };
    let (a, b, done) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    claim_many(&env.pool, &[ask("email", done)], lease).await?;
    complete_many(
        &env.pool,
        &[Completed {
            destination: "email".into(),
            change_id: done,
            detail: "<id@loja>".into(),
        }],
    )
    .await?;
    let answers = claim_many(
        &env.pool,
        &[
            ask("email", a),
            ask("email", a),
            ask("email", b),
            ask("email", done),
            ask("marketplace:acme", a),
        ],
        lease,
    )
    .await?;
    let fresh = Claim::Claimed {
        failures: 0,
        first_failed_at: None,
    };
    assert_eq!(answers[0], fresh);
    assert_eq!(answers[1], Claim::Leased { remaining: lease });
    assert_eq!(answers[2], fresh);
    assert_eq!(answers[3], Claim::Done);
    assert_eq!(answers[4], fresh);
    match claim_many(&env.pool, &[ask("email", b)], lease).await?[..] {
        [Claim::Leased { remaining }] => assert!(
            remaining > Duration::from_secs(50) && remaining <= lease,
            "{remaining:?}"
        ),
        ref other => panic!("b is leased by its first claim: {other:?}"),
    }

    // Twenty deliveries at once through one ledger; one names a destination PostgreSQL cannot store (a NUL
    // byte), so the statement holding it is refused as data and made again one by one.
    let policy = RetryPolicy {
        in_process: 0,
        in_process_base: Duration::from_millis(10),
        in_process_max_wait: Duration::from_millis(10),
        queue_base: Duration::from_secs(1),
        queue_max: Duration::from_secs(10),
        retry_for: Duration::from_secs(3600),
        lease,
        lease_wait_in_process: Duration::from_secs(10),
        tiers: vec![Duration::from_secs(1), Duration::from_secs(10)],
        record_retry_for: Duration::from_secs(5),
    };
    let ledger = Ledger::start(
        env.pool.clone().into(),
        lease,
        FarEnds::new(tracking_runtime::ops::Health::new(&[])),
    );
    let ids: Vec<Uuid> = (0..20).map(|_| Uuid::new_v4()).collect();
    let results = futures_util::future::join_all(ids.iter().enumerate().map(|(i, id)| {
        let (ledger, policy) = (&ledger, &policy);
        async move {
            let destination = if i == 7 { "email\0bad" } else { "email" };
            let to = deliver::To {
                what: "test",
                bulkhead: None,
            };
            deliver::once(ledger, destination, *id, policy, to, None, || async {
                tokio::time::sleep(Duration::from_millis(5)).await;
                Attempt::Done(format!("sent {i}"))
            })
            .await
        }
    }))
    .await;
    for (i, d) in results.iter().enumerate() {
        if i == 7 {
            assert_eq!(d.result, "database");
            assert!(
                matches!(&d.outcome, Outcome::Park { reason } if reason.contains("database refused")),
                "{:?}",
                d.outcome
            );
        } else {
            assert_eq!(
                (d.result, &d.outcome),
                ("delivered", &Outcome::Ack),
                "delivery {i}"
            );
        }
    }
    let recorded: Vec<(Uuid, String, String)> = sqlx::query_as(
        "SELECT change_id, state, detail FROM deliveries WHERE change_id = ANY($1) ORDER BY detail",
    )
    .bind(&ids)
    .fetch_all(&env.pool)
    .await?;
    assert_eq!(recorded.len(), 19);
    for (i, id) in ids.iter().enumerate().filter(|(i, _)| *i != 7) {
        assert!(
            recorded.iter().any(|(c, state, detail)| c == id
                && state == "done"
                && *detail == format!("sent {i}")),
            "delivery {i} is recorded done with its own detail: {recorded:?}"
        );
    }
    Ok(())
}
