//! The VTEX and Mercado Livre adapters against the marketplace receiver (a real HTTP server on 127.0.0.1) playing
//! their request schemas: VTEX's required, nullable `deliveredDate`, and Mercado Livre's seller notifications in
//! both documented versions.

#![allow(clippy::unwrap_used)]

use serde_json::{Value, json};
use std::time::Duration;
use tracking_domain::{Status, StatusChange};
use tracking_marketplaces::adapters::{Call, Plan};
use tracking_marketplaces::{Kind, Marketplaces, Relay, RelayError};
use tracking_sim::marketplace::Receiver;

fn change(status: Status, previous: Status) -> StatusChange {
    serde_json::from_value(json!({
        "change_id": "0b4a6f3e-8d2c-5b1a-9e7f-1c2d3e4f5a6b", "order_id": "1001", "tracking_code": "DL746686536BR",
        "carrier": "correios", "status": status.as_str(), "previous_status": previous.as_str(),
        "occurred_at": "2026-03-27T14:40:30-03:00", "source": "carrier",
        "event": {"code": "RO", "type": "01", "description": "Objeto em trânsito - por favor aguarde",
                  "location": {"city": "CAMPINAS", "state": "SP"}},
        "customer": {"email": "ana@example.com", "locale": "pt-BR"},
        "marketplace": {"name": "m", "order_id": "4455"},
        "invoice_number": "NF-1"
    }))
    .unwrap()
}

fn calls(plan: Plan) -> Vec<Call> {
    match plan {
        Plan::Calls(c) => c,
        Plan::Skip(why) => panic!("skipped: {why}"),
    }
}

fn relay() -> Relay {
    Relay::new(Duration::from_secs(10), 64 * 1024).unwrap()
}

/// The adapter of a one-marketplace file, read as the publisher reads it.
fn adapter(toml: &str) -> Kind {
    let all = Marketplaces::parse(toml).unwrap();
    all.iter().next().unwrap().kind.clone()
}

#[tokio::test]
async fn vtex_accepts_every_update_because_delivered_date_is_sent_as_null_until_delivered()
-> anyhow::Result<()> {
    let receiver = Receiver::start("0123456789abcdef".into(), "127.0.0.1:0".parse()?).await?;
    let vtex = adapter(&format!(
        "[[marketplace]]\nname='m'\nkind='vtex'\nurl='{}/vtex'\napp_key='k'\napp_token='t'\n",
        receiver.base_url()
    ));
    for (status, previous) in [
        (Status::Posted, Status::Registered),
        (Status::InTransit, Status::Posted),
        (Status::Delivered, Status::OutForDelivery),
    ] {
        for call in calls(
            vtex.adapter()
                .plan(&change(status, previous), b"{}")
                .unwrap(),
        ) {
            let sent = relay().send(&call).await;
            assert!(sent.is_ok(), "{status}: {sent:?}");
        }
    }
    let got: Vec<Value> = receiver
        .calls()
        .into_iter()
        .map(|c| c.json.unwrap())
        .collect();
    assert_eq!(got[0]["deliveredDate"], Value::Null);
    assert!(got[0].as_object().unwrap().contains_key("deliveredDate"));
    assert_eq!(got[1]["deliveredDate"], Value::Null);
    assert_eq!(got[2]["deliveredDate"], "2026-03-27 14:40");
    assert_eq!(got[2]["isDelivered"], true);
    Ok(())
}

#[tokio::test]
async fn mercado_livre_sends_tracking_number_and_url_in_notifications_when_set_to_with_tracking()
-> anyhow::Result<()> {
    let receiver = Receiver::start("0123456789abcdef".into(), "127.0.0.1:0".parse()?).await?;
    receiver.meli_wants_tracking(true);
    let base = receiver.base_url();
    let tracking_url = "https://rastreamento.correios.com.br/app/index.php?objetos={tracking_code}";

    // The earlier shape (status and substatus alone) is refused by this version.
    let classic = adapter(&format!(
        "[[marketplace]]\nname='m'\nkind='mercadolivre'\nurl='{base}/meli'\naccess_token='APP_USR-1'\nservice_id=11\n"
    ));
    let planned = calls(
        classic
            .adapter()
            .plan(&change(Status::InTransit, Status::Posted), b"{}")
            .unwrap(),
    );
    assert!(
        relay().send(&planned[0]).await.is_ok(),
        "the tracking number"
    );
    match relay().send(&planned[1]).await {
        Err(RelayError::Refused { reason }) => assert!(reason.contains("tracking_url"), "{reason}"),
        other => panic!("{other:?}"),
    }

    let with_tracking = adapter(&format!(
        "[[marketplace]]\nname='m'\nkind='mercadolivre'\nurl='{base}/meli'\naccess_token='APP_USR-1'\nservice_id=11\n\
         notifications='with_tracking'\ntracking_url='{tracking_url}'\n"
    ));
    let planned = calls(
        with_tracking
            .adapter()
            .plan(&change(Status::OutForDelivery, Status::InTransit), b"{}")
            .unwrap(),
    );
    for call in &planned {
        let sent = relay().send(call).await;
        assert!(sent.is_ok(), "{}: {sent:?}", call.step);
    }
    let last = receiver.calls().pop().unwrap();
    assert_eq!(last.path, "/meli/shipments/4455/seller_notifications");
    assert_eq!(
        last.json.unwrap(),
        json!({
            "status": "shipped", "substatus": "out_for_delivery",
            "tracking_number": "DL746686536BR",
            "tracking_url": "https://rastreamento.correios.com.br/app/index.php?objetos=DL746686536BR",
            "payload": {"service_id": 11, "comment": "Objeto em trânsito - por favor aguarde",
                        "date": "2026-03-27T14:40:30.000-03:00"}
        })
    );

    // with_tracking without a tracking_url is refused when the file is read, not at the first call.
    let err = Marketplaces::parse(&format!(
        "[[marketplace]]\nname='m'\nkind='mercadolivre'\nurl='{base}/meli'\naccess_token='x'\nnotifications='with_tracking'\n"
    ))
    .unwrap_err();
    assert!(err.contains("tracking_url"), "{err}");
    Ok(())
}
