//! Orders and parcels as they really are, with the real normalizer on the real RabbitMQ and PostgreSQL: one
//! parcel carrying two orders gives each order every change; an order of three parcels is delivered once, with
//! its last parcel; a code that comes back for a new order long after its parcel finished is a new parcel.

#![allow(clippy::unwrap_used)]

use serde_json::Value;
use std::time::Duration;
use tracking_tests::{TestEnv, Worker, carrier_update, correios_event, eventually, request, s10};

const QUEUE: &str = "normalizer.carrier-events";

async fn start(env: &TestEnv, extra: &[(&str, String)]) -> anyhow::Result<Worker> {
    let mut w = Worker::spawn(env, "normalizer", extra)?;
    w.wait_healthy(Duration::from_secs(60)).await?;
    Ok(w)
}

/// The messages of the normalizer's queue that `w` finished (committed, then acked).
async fn handled(w: &Worker) -> anyhow::Result<f64> {
    let text = w.metrics().await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("messages_total{") && l.contains(QUEUE))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// Publishes `update` and waits until the normalizer `w` handled it, nothing parked.
async fn send(env: &TestEnv, w: &Worker, update: &Value) -> anyhow::Result<()> {
    let amqp = env.amqp().await?;
    let before = handled(w).await?;
    amqp.publish(QUEUE, &serde_json::to_vec(update)?).await?;
    eventually(Duration::from_secs(30), "the update handled", || async {
        Ok((handled(w).await? > before && amqp.count(QUEUE).await? == 0).then_some(()))
    })
    .await?;
    assert_eq!(
        amqp.count(&format!("{QUEUE}.dead")).await?,
        0,
        "nothing parked"
    );
    Ok(())
}

/// The recorded changes' payloads, in the order recorded.
async fn payloads(env: &TestEnv) -> anyhow::Result<Vec<Value>> {
    Ok(
        sqlx::query_scalar("SELECT payload FROM status_changes ORDER BY seq")
            .fetch_all(&env.pool)
            .await?,
    )
}

/// `(order_id, status, customer email)` of each payload.
fn summary(p: &[Value]) -> Vec<(String, String, String)> {
    p.iter()
        .map(|c| {
            (
                c["order_id"].as_str().unwrap().to_owned(),
                c["status"].as_str().unwrap().to_owned(),
                c["customer"]["email"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_parcel_of_two_orders_gives_each_order_every_change() -> anyhow::Result<()> {
    let env = TestEnv::ready().await?;
    let normalizer = start(&env, &[]).await?;
    let amqp = env.amqp().await?;
    let code = s10("SP", 1);
    let ana = request("SPLIT-1", &code, "ana@example.com", "pt-BR", Some("acme"));
    let bia = request("SPLIT-2", &code, "bia@example.com", "en", Some("meli"));
    // The first order's box is posted; then the second order names the same code (one box for both): it
    // joins the parcel and starts from where it stands (posted); the scheduler's polls name the first order.
    send(&env, &normalizer, &carrier_update(&code, Some(&ana), &[])).await?;
    send(
        &env,
        &normalizer,
        &carrier_update(
            &code,
            Some(&ana),
            &[correios_event("PO", "01", "2026-11-20T10:00:00-03:00")],
        ),
    )
    .await?;
    send(&env, &normalizer, &carrier_update(&code, Some(&bia), &[])).await?;
    send(
        &env,
        &normalizer,
        &carrier_update(
            &code,
            Some(&ana),
            &[correios_event("BDE", "01", "2026-11-23T15:00:00-03:00")],
        ),
    )
    .await?;

    let shipments: i64 = sqlx::query_scalar("SELECT count(*) FROM shipments")
        .fetch_one(&env.pool)
        .await?;
    assert_eq!(shipments, 1, "one parcel, polled once per poll");
    let recorded = payloads(&env).await?;
    let mut got = summary(&recorded);
    got.sort();
    assert_eq!(
        got,
        vec![
            (
                "SPLIT-1".into(),
                "delivered".into(),
                "ana@example.com".into()
            ),
            ("SPLIT-1".into(), "posted".into(), "ana@example.com".into()),
            (
                "SPLIT-2".into(),
                "delivered".into(),
                "bia@example.com".into()
            ),
            ("SPLIT-2".into(), "posted".into(), "bia@example.com".into()),
        ],
        "the second order never replaced the first: {recorded:#?}"
    );
    // Each order's copy carries its own marketplace, locale and id; the first order keeps the parcel's ids.
    for c in &recorded {
        let mine = c["order_id"] == "SPLIT-1";
        assert_eq!(c["marketplace"]["name"], if mine { "acme" } else { "meli" });
        assert_eq!(c["customer"]["locale"], if mine { "pt-BR" } else { "en" });
        assert_eq!(c["store"], "default");
        assert_eq!(c["order"]["parcels"], 1);
    }
    let ids: std::collections::HashSet<&str> = recorded
        .iter()
        .map(|c| c["change_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 4, "each order's copy has an id of its own");
    // Every copy was published for both publishers.
    eventually(
        Duration::from_secs(30),
        "four changes on each publisher's queue",
        || async {
            let (e, m) = (
                amqp.count("email.order-status").await?,
                amqp.count("marketplace.order-status").await?,
            );
            Ok((e == 4 && m == 4).then_some(()))
        },
    )
    .await?;
    // The same order sent again with new data updates that order only.
    let mut ana_again = ana.clone();
    ana_again["customer"]["email"] = "ana.souza@example.com".into();
    send(
        &env,
        &normalizer,
        &carrier_update(&code, Some(&ana_again), &[]),
    )
    .await?;
    let emails: Vec<(String, String)> =
        sqlx::query_as("SELECT order_id, customer_email FROM orders ORDER BY order_id")
            .fetch_all(&env.pool)
            .await?;
    assert_eq!(
        emails,
        vec![
            ("SPLIT-1".into(), "ana.souza@example.com".into()),
            ("SPLIT-2".into(), "bia@example.com".into())
        ]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_of_three_parcels_is_delivered_once_with_its_last_parcel() -> anyhow::Result<()> {
    let env = TestEnv::ready().await?;
    let normalizer = start(&env, &[]).await?;
    let codes: Vec<String> = (1..=3).map(|n| s10("TP", n)).collect();
    for code in &codes {
        let req = request("THREE-1", code, "ana@example.com", "pt-BR", Some("meli"));
        send(
            &env,
            &normalizer,
            &carrier_update(
                code,
                Some(&req),
                &[correios_event("PO", "01", "2026-11-20T10:00:00-03:00")],
            ),
        )
        .await?;
    }
    for (i, code) in codes.iter().enumerate() {
        let req = request("THREE-1", code, "ana@example.com", "pt-BR", Some("meli"));
        send(
            &env,
            &normalizer,
            &carrier_update(
                code,
                Some(&req),
                &[correios_event(
                    "BDE",
                    "01",
                    &format!("2026-11-2{}T15:00:00-03:00", i + 1),
                )],
            ),
        )
        .await?;
    }
    let recorded = payloads(&env).await?;
    let delivered: Vec<&Value> = recorded
        .iter()
        .filter(|c| c["status"] == "delivered")
        .collect();
    let progress: Vec<(u64, u64, &str)> = delivered
        .iter()
        .map(|c| {
            (
                c["order"]["parcels"].as_u64().unwrap(),
                c["order"]["delivered"].as_u64().unwrap(),
                c["order"]["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        progress,
        vec![
            (3, 1, "partially_delivered"),
            (3, 2, "partially_delivered"),
            (3, 3, "delivered"),
        ],
        "{recorded:#?}"
    );
    // Before any delivery, the order is where its least advanced parcel is; it counts the parcels known so far.
    let posted: Vec<(u64, &str)> = recorded
        .iter()
        .filter(|c| c["status"] == "posted")
        .map(|c| {
            (
                c["order"]["parcels"].as_u64().unwrap(),
                c["order"]["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(posted, vec![(1, "posted"), (2, "posted"), (3, "posted")]);
    Ok(())
}

/// Marks the shipment of `code` finished `days` ago (the scheduler's final poll does so after delivery).
async fn finished_days_ago(env: &TestEnv, code: &str, days: i32) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE shipments SET finished_at = now() - make_interval(days => $2) \
         WHERE tracking_code = $1 AND retired_at IS NULL",
    )
    .bind(code)
    .bind(days)
    .execute(&env.pool)
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_back_for_a_new_order_after_recycle_after_days_is_a_new_parcel() -> anyhow::Result<()>
{
    let env = TestEnv::ready().await?;
    let normalizer = start(&env, &[("RECYCLE_AFTER_DAYS", "30".into())]).await?;
    let code = s10("RC", 1);
    let old = request("OLD-1", &code, "old@example.com", "pt-BR", None);
    send(
        &env,
        &normalizer,
        &carrier_update(
            &code,
            Some(&old),
            &[
                correios_event("PO", "01", "2026-01-10T10:00:00-03:00"),
                correios_event("BDE", "01", "2026-01-13T15:00:00-03:00"),
            ],
        ),
    )
    .await?;
    finished_days_ago(&env, &code, 31).await?;

    // Months later the carrier hands the same code to another store's box... of ours: a new order.
    let new = request("NEW-1", &code, "new@example.com", "pt-BR", None);
    send(
        &env,
        &normalizer,
        &carrier_update(
            &code,
            Some(&new),
            &[correios_event("PO", "01", "2026-11-20T10:00:00-03:00")],
        ),
    )
    .await?;
    let shipments: Vec<(i64, String, bool)> =
        sqlx::query_as("SELECT id, status, retired_at IS NOT NULL FROM shipments ORDER BY id")
            .fetch_all(&env.pool)
            .await?;
    assert_eq!(
        shipments
            .iter()
            .map(|s| (s.1.as_str(), s.2))
            .collect::<Vec<_>>(),
        vec![("delivered", true), ("posted", false)],
        "the old parcel is retired with its history, a new one holds the code"
    );
    let old_events: i64 =
        sqlx::query_scalar("SELECT count(*) FROM tracking_events WHERE shipment_id = $1")
            .bind(shipments[0].0)
            .fetch_one(&env.pool)
            .await?;
    assert_eq!(old_events, 2, "the old history is untouched");
    let got = summary(&payloads(&env).await?);
    assert_eq!(
        got,
        vec![
            ("OLD-1".into(), "delivered".into(), "old@example.com".into()),
            ("NEW-1".into(), "posted".into(), "new@example.com".into()),
        ],
        "the old customer gets nothing of the new parcel"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_back_for_a_new_order_within_recycle_after_days_joins_the_parcel()
-> anyhow::Result<()> {
    let env = TestEnv::ready().await?;
    let normalizer = start(&env, &[("RECYCLE_AFTER_DAYS", "30".into())]).await?;
    let code = s10("RC", 2);
    let first = request("FIRST-1", &code, "first@example.com", "pt-BR", None);
    send(
        &env,
        &normalizer,
        &carrier_update(
            &code,
            Some(&first),
            &[correios_event("PO", "01", "2026-11-10T10:00:00-03:00")],
        ),
    )
    .await?;
    finished_days_ago(&env, &code, 29).await?;
    let second = request("SECOND-1", &code, "second@example.com", "pt-BR", None);
    send(
        &env,
        &normalizer,
        &carrier_update(
            &code,
            Some(&second),
            &[correios_event("RO", "01", "2026-11-11T10:00:00-03:00")],
        ),
    )
    .await?;
    let shipments: i64 = sqlx::query_scalar("SELECT count(*) FROM shipments")
        .fetch_one(&env.pool)
        .await?;
    assert_eq!(shipments, 1, "one parcel, now carrying both orders");
    let mut got = summary(&payloads(&env).await?);
    got.sort();
    assert_eq!(
        got,
        vec![
            (
                "FIRST-1".into(),
                "in_transit".into(),
                "first@example.com".into()
            ),
            (
                "FIRST-1".into(),
                "posted".into(),
                "first@example.com".into()
            ),
            (
                "SECOND-1".into(),
                "in_transit".into(),
                "second@example.com".into()
            ),
            // Joining, it starts from where the parcel stood.
            (
                "SECOND-1".into(),
                "posted".into(),
                "second@example.com".into()
            ),
        ]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_migration_moves_each_order_apart_from_its_parcels_and_keeps_every_change()
-> anyhow::Result<()> {
    use sqlx::migrate::Migrator;
    use std::borrow::Cow;
    const ORDERS_MIGRATION: i64 = 20261207100001;
    let env = TestEnv::new().await?;
    // A database of the version before: shipments holding their order context.
    let before = Migrator {
        migrations: Cow::Owned(
            tracking_store::MIGRATOR
                .iter()
                .filter(|m| m.version < ORDERS_MIGRATION)
                .cloned()
                .collect(),
        ),
        ignore_missing: false,
        locking: true,
        no_tx: false,
    };
    before.run(&env.pool).await?;
    // Order A in two boxes (its second request changed the email), order B in one; a change for each box.
    for (code, order, email, mp, age) in [
        (s10("MG", 1), "A-1", "old.ana@example.com", Some("acme"), 2),
        (s10("MG", 2), "A-1", "ana@example.com", Some("acme"), 1),
        (s10("MG", 3), "B-1", "bia@example.com", None, 1),
    ] {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO shipments (carrier, tracking_code, order_id, customer_email, customer_name, marketplace_name, \
                 marketplace_order_id, status, updated_at) \
             VALUES ('correios', $1, $2, $3, 'Ana', $4, $5, 'posted', now() - make_interval(hours => $6)) RETURNING id",
        )
        .bind(&code)
        .bind(order)
        .bind(email)
        .bind(mp)
        .bind(mp.map(|_| format!("MP-{order}")))
        .bind(age)
        .fetch_one(&env.pool)
        .await?;
        sqlx::query(
            "INSERT INTO tracking_events (shipment_id, fingerprint, source, code, description, occurred_at, status) \
             VALUES ($1, 'fp-' || $1, 'carrier', 'PO', 'x', '2026-11-20T10:00:00-03:00', 'posted')",
        )
        .bind(id)
        .execute(&env.pool)
        .await?;
        sqlx::query(
            "INSERT INTO status_changes (change_id, shipment_id, status, previous_status, occurred_at, payload) \
             VALUES ($1, $2, 'posted', 'registered', now(), '{}')",
        )
        .bind(uuid::Uuid::new_v4())
        .bind(id)
        .execute(&env.pool)
        .await?;
    }

    tracking_store::MIGRATOR.run(&env.pool).await?;

    let orders: Vec<(String, String, Option<String>, i64)> = sqlx::query_as(
        "SELECT o.order_id, o.customer_email, o.marketplace_name, count(op.shipment_id) \
         FROM orders o JOIN order_parcels op ON op.order_ref = o.id GROUP BY o.id ORDER BY o.order_id",
    )
    .fetch_all(&env.pool)
    .await?;
    assert_eq!(
        orders,
        vec![
            (
                "A-1".into(),
                "ana@example.com".into(),
                Some("acme".into()),
                2
            ),
            ("B-1".into(), "bia@example.com".into(), None, 1),
        ],
        "one order per order id, its newest context, linked to each of its boxes"
    );
    let unowned: i64 =
        sqlx::query_scalar("SELECT count(*) FROM status_changes WHERE order_ref IS NULL")
            .fetch_one(&env.pool)
            .await?;
    assert_eq!(unowned, 0, "every change belongs to its box's order");
    let personal: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.columns WHERE table_name = 'shipments' \
         AND column_name IN ('order_id', 'customer_email', 'customer_name')",
    )
    .fetch_one(&env.pool)
    .await?;
    assert_eq!(personal, 0, "the customer lives in orders only");
    // And the migrated rows work: the normalizer takes the next event of a migrated box.
    let normalizer = start(&env, &[]).await?;
    let code = s10("MG", 3);
    let req = request("B-1", &code, "bia@example.com", "pt-BR", None);
    send(
        &env,
        &normalizer,
        &carrier_update(
            &code,
            Some(&req),
            &[correios_event("BDE", "01", "2026-11-23T15:00:00-03:00")],
        ),
    )
    .await?;
    let status: String =
        sqlx::query_scalar("SELECT status FROM shipments WHERE tracking_code = $1")
            .bind(&code)
            .fetch_one(&env.pool)
            .await?;
    assert_eq!(status, "delivered");
    Ok(())
}
