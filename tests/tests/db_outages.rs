//! Database errors by kind, against the real normalizer and a real PostgreSQL: each way a database can be
//! unusable for a while without anything being wrong with the data (read-only after a failover, a login refused,
//! a statement or lock timeout, a table missing while a deploy runs ahead of its migration) holds the message,
//! spends no attempt (`MAX_ATTEMPTS=1`: one spent attempt would park it), shows on `/health` as 503, and once the
//! database is usable again the change is recorded, with nothing parked.

#![allow(clippy::unwrap_used)]

use std::time::Duration;
use tracking_tests::{TestEnv, Worker, carrier_update, correios_event, eventually, request, s10};

const QUEUE: &str = "normalizer.carrier-events";

/// Runs `statements` on the test's database, in order.
async fn execute(env: &TestEnv, statements: &[String]) -> anyhow::Result<()> {
    for sql in statements {
        sqlx::query(sql).execute(&env.pool).await?;
    }
    Ok(())
}

/// Ends every other session on the test's database, as a failover or a restart does.
const CUT_SESSIONS: &str = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
     WHERE datname = current_database() AND pid <> pg_backend_pid()";

/// A normalizer on `worker_db_url` records a change; the database is broken (`breaks`), a second update comes
/// and must be held; the database is mended (`mends`) and the second change must be recorded.
async fn run(
    env: &TestEnv,
    worker_db_url: &str,
    breaks: impl Future<Output = anyhow::Result<()>>,
    mends: impl Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let amqp = env.amqp().await?;
    let normalizer = Worker::started(
        env,
        "normalizer",
        &[
            ("DATABASE_URL", worker_db_url.to_owned()),
            ("MAX_ATTEMPTS", "1".into()),
            ("UNAVAILABLE_RETRY_MAX_MS", "500".into()),
        ],
    )
    .await?;
    let changes = || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM status_changes")
            .fetch_one(&env.pool)
            .await?;
        anyhow::Ok(n)
    };
    // The pipeline works before the fault.
    let first = s10("DB", 1);
    let req = request("DB-1", &first, "ana@example.com", "pt-BR", None);
    let update = carrier_update(
        &first,
        Some(&req),
        &[correios_event("PO", "01", "2026-11-20T10:00:00-03:00")],
    );
    amqp.publish(QUEUE, &serde_json::to_vec(&update)?).await?;
    eventually(Duration::from_secs(30), "the first change", || async {
        Ok((changes().await? == 1).then_some(()))
    })
    .await?;

    breaks.await?;
    let second = s10("DB", 2);
    let req = request("DB-2", &second, "bia@example.com", "pt-BR", None);
    let update = carrier_update(
        &second,
        Some(&req),
        &[correios_event("PO", "01", "2026-11-20T10:00:00-03:00")],
    );
    amqp.publish(QUEUE, &serde_json::to_vec(&update)?).await?;
    eventually(Duration::from_secs(30), "/health 503", || async {
        Ok((normalizer.health().await?.0 == 503).then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(amqp.count(&format!("{QUEUE}.dead")).await?, 0, "parked");
    let log = normalizer.log_text();
    assert!(
        log.contains("A dependency is unavailable"),
        "the message is held as unavailable: {log}"
    );

    mends.await?;
    eventually(
        Duration::from_secs(30),
        "the held change recorded",
        || async { Ok((changes().await? == 2).then_some(())) },
    )
    .await?;
    eventually(Duration::from_secs(20), "/health 200", || async {
        Ok((normalizer.health().await?.0 == 200).then_some(()))
    })
    .await?;
    assert_eq!(amqp.count(&format!("{QUEUE}.dead")).await?, 0, "parked");
    assert_eq!(amqp.count(QUEUE).await?, 0);
    Ok(())
}

fn database_name(env: &TestEnv) -> String {
    let (name, _) = tracking_store::split_database(&env.database_url).unwrap();
    name
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_database_holds_messages_until_it_takes_writes() -> anyhow::Result<()> {
    let env = TestEnv::ready().await?;
    let db = database_name(&env);
    let breaks = [
        format!("ALTER DATABASE {db} SET default_transaction_read_only = on"),
        CUT_SESSIONS.into(),
    ];
    // Mended from the maintenance database: the test's own sessions on `db` are read-only by then.
    let mends = async {
        let (_, admin) = tracking_store::split_database(&env.database_url).unwrap();
        let admin = tracking_store::pool(&tracking_store::DbSettings::new(&admin))?;
        for sql in [
            format!("ALTER DATABASE {db} RESET default_transaction_read_only"),
            format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}'"
            ),
        ] {
            sqlx::query(&sql).execute(&admin).await?;
        }
        Ok(())
    };
    run(&env, &env.database_url, execute(&env, &breaks), mends).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_login_holds_messages_until_it_is_allowed_again() -> anyhow::Result<()> {
    let env = TestEnv::ready().await?;
    // A role of the worker's own, as in production: the test's own connections stay the administrator's.
    let role = format!("w_{}", env.name);
    for sql in [
        format!("CREATE ROLE {role} LOGIN"),
        format!("GRANT ALL ON SCHEMA public TO {role}"),
        format!("GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}"),
        format!("GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role}"),
    ] {
        sqlx::query(&sql).execute(&env.pool).await?;
    }
    // The same server and database, as the role (trust authentication on 127.0.0.1).
    let (scheme, rest) = env.database_url.split_once("://").unwrap();
    let server = rest.rsplit_once('@').map_or(rest, |(_, s)| s);
    let worker_url = format!("{scheme}://{role}@{server}");
    // The credentials stop working (a rotated password, a locked role) and the open sessions end.
    let breaks = [
        format!("ALTER ROLE {role} NOLOGIN"),
        format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'"),
    ];
    let mends = [format!("ALTER ROLE {role} LOGIN")];
    let result = run(
        &env,
        &worker_url,
        execute(&env, &breaks),
        execute(&env, &mends),
    )
    .await;
    for sql in [
        format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'"),
        format!("DROP OWNED BY {role}"),
        format!("DROP ROLE IF EXISTS {role}"),
    ] {
        let _ = sqlx::query(&sql).execute(&env.pool).await;
    }
    result
}

/// A table held by an operator's long statement (a migration, a manual `LOCK`): the normalizer's statements run
/// into `setting` (`lock_timeout` or `statement_timeout`), set for the database as an operator would.
async fn held_lock(setting: &str) -> anyhow::Result<()> {
    let env = TestEnv::ready().await?;
    let db = database_name(&env);
    execute(
        &env,
        &[
            format!("ALTER DATABASE {db} SET {setting} = '300ms'"),
            CUT_SESSIONS.into(),
        ],
    )
    .await?;
    let blocker = tracking_store::pool(&tracking_store::DbSettings::new(&env.database_url))?;
    let (start, started) = tokio::sync::oneshot::channel::<()>();
    let (locked, is_locked) = tokio::sync::oneshot::channel::<()>();
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let holder = tokio::spawn(async move {
        if started.await.is_err() {
            return anyhow::Ok(());
        }
        let mut held = blocker.begin().await?;
        sqlx::query("LOCK TABLE shipments IN ACCESS EXCLUSIVE MODE")
            .execute(&mut *held)
            .await?;
        let _ = locked.send(());
        let _ = released.await;
        held.rollback().await?;
        Ok(())
    });
    let breaks = async move {
        let _ = start.send(());
        is_locked.await?;
        Ok(())
    };
    let mends = async move {
        let _ = release.send(());
        holder.await??;
        Ok(())
    };
    run(&env, &env.database_url, breaks, mends).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_timeout_holds_messages_until_the_lock_is_released() -> anyhow::Result<()> {
    held_lock("lock_timeout").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_timeout_holds_messages_until_the_statement_can_finish() -> anyhow::Result<()> {
    held_lock("statement_timeout").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_table_holds_messages_until_the_migration_restores_it() -> anyhow::Result<()> {
    let env = TestEnv::ready().await?;
    run(
        &env,
        &env.database_url,
        execute(
            &env,
            &["ALTER TABLE tracking_events RENAME TO tracking_events_moved".into()],
        ),
        execute(
            &env,
            &["ALTER TABLE tracking_events_moved RENAME TO tracking_events".into()],
        ),
    )
    .await
}
