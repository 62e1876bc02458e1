//! The Correios simulator over real HTTP.
#![allow(clippy::unwrap_used)]

use chrono::NaiveDateTime;
use serde_json::Value;
use tracking_sim::correios::{CorreiosSim, Journey, Script, SimConfig};

async fn start(config: SimConfig) -> CorreiosSim {
    CorreiosSim::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

async fn token(client: &reqwest::Client, sim: &CorreiosSim) -> String {
    let res = client
        .post(format!("{}/token/v1/autentica", sim.base_url()))
        .basic_auth("sim-user", Some("sim-code"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 201);
    let body: Value = res.json().await.unwrap();
    body["token"].as_str().unwrap().to_string()
}

async fn track(
    client: &reqwest::Client,
    sim: &CorreiosSim,
    token: &str,
    path_and_query: &str,
    lang: Option<&str>,
) -> (u16, Value) {
    let mut req = client
        .get(format!("{}{path_and_query}", sim.base_url()))
        .bearer_auth(token);
    if let Some(lang) = lang {
        req = req.header("Accept-Language", lang);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap())
}

fn codes_of(body: &Value) -> Vec<&str> {
    body["objetos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["codObjeto"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn token_issue_and_wrong_credentials() {
    let sim = start(SimConfig::default()).await;
    let client = reqwest::Client::new();
    let res = client
        .post(format!("{}/token/v1/autentica", sim.base_url()))
        .basic_auth("sim-user", Some("sim-code"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 201);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["ambiente"], "HOMOLOGACAO");
    assert_eq!(body["id"], "sim-user");
    assert_eq!(body["zoneOffset"], "-03:00");
    assert!(!body["token"].as_str().unwrap().is_empty());
    let emissao =
        NaiveDateTime::parse_from_str(body["emissao"].as_str().unwrap(), "%Y-%m-%dT%H:%M:%S")
            .unwrap();
    let expira =
        NaiveDateTime::parse_from_str(body["expiraEm"].as_str().unwrap(), "%Y-%m-%dT%H:%M:%S")
            .unwrap();
    assert_eq!((expira - emissao).num_hours(), 24);
    assert!(body.get("cartaoPostagem").is_none());

    let res = client
        .post(format!("{}/token/v1/autentica", sim.base_url()))
        .basic_auth("sim-user", Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 401);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["causa"], "Unauthorized");
    assert_eq!(body["path"], "/token/v1/autentica");
    assert_eq!(body["method"], "POST");
    assert!(body["msgs"][0].is_string());

    let res = client
        .post(format!("{}/token/v1/autentica", sim.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 401);
    assert_eq!(sim.token_requests(), 3);
}

#[tokio::test]
async fn token_for_postage_card() {
    let sim = start(SimConfig {
        postage_card: Some("0067599079".into()),
        ..Default::default()
    })
    .await;
    let client = reqwest::Client::new();
    let url = format!("{}/token/v1/autentica/cartaopostagem", sim.base_url());
    let res = client
        .post(&url)
        .basic_auth("sim-user", Some("sim-code"))
        .json(&serde_json::json!({ "numero": "0067599079" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 201);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["cartaoPostagem"]["numero"], "0067599079");
    assert_eq!(body["cartaoPostagem"]["api"][0], 87);

    let res = client
        .post(&url)
        .basic_auth("sim-user", Some("sim-code"))
        .json(&serde_json::json!({ "numero": "1111111111" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 400);
    let body: Value = res.json().await.unwrap();
    assert!(body["msgs"][0].is_string());
}

#[tokio::test]
async fn journey_reveals_one_event_per_poll_newest_first() {
    let sim = start(SimConfig::default()).await;
    let client = reqwest::Client::new();
    let token = token(&client, &sim).await;
    let code = "DL746686536BR";
    sim.script(code, Script::Journey(Journey::delivered()));
    let path = format!("/srorastro/v1/objetos/{code}?resultado=T");

    let (status, body) = track(&client, &sim, &token, &path, Some("pt-BR")).await;
    assert_eq!(status, 200);
    assert_eq!(body["quantidade"], 1);
    let obj = &body["objetos"][0];
    assert_eq!(obj["codObjeto"], code);
    assert_eq!(obj["tipoPostal"]["sigla"], "DL");
    assert_eq!(obj["dtPrevista"], "2026-03-30T23:59:59");
    let eventos = obj["eventos"].as_array().unwrap();
    assert_eq!(eventos.len(), 1);
    assert_eq!(eventos[0]["codigo"], "PO");
    assert_eq!(eventos[0]["dtHrCriado"], "2026-03-25T16:55:42");
    assert_eq!(eventos[0]["unidade"]["endereco"]["cidade"], "SAO PAULO");

    let (_, body) = track(&client, &sim, &token, &path, Some("en")).await;
    let eventos = body["objetos"][0]["eventos"].as_array().unwrap();
    assert_eq!(eventos.len(), 2);
    assert_eq!(eventos[0]["codigo"], "RO");
    assert_eq!(
        eventos[0]["unidadeDestino"]["endereco"]["cidade"],
        "CAMPINAS"
    );
    assert_eq!(eventos[1]["codigo"], "PO");
    for ev in eventos {
        let at = ev["dtHrCriado"].as_str().unwrap();
        assert!(
            NaiveDateTime::parse_from_str(at, "%Y-%m-%dT%H:%M:%S").is_ok(),
            "{at} has an offset or bad format"
        );
    }

    for _ in 0..3 {
        track(&client, &sim, &token, &path, Some("es-ES")).await;
    }
    let (_, body) = track(&client, &sim, &token, &path, Some("pt-BR")).await;
    let eventos = body["objetos"][0]["eventos"].as_array().unwrap();
    let codes: Vec<&str> = eventos
        .iter()
        .map(|e| e["codigo"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["BDE", "OEC", "RO", "PO"]);

    let (_, body) = track(
        &client,
        &sim,
        &token,
        &format!("/srorastro/v1/objetos/{code}?resultado=U"),
        Some("pt-BR"),
    )
    .await;
    assert_eq!(body["objetos"][0]["eventos"].as_array().unwrap().len(), 1);
    assert_eq!(body["objetos"][0]["eventos"][0]["codigo"], "BDE");
    let (_, body) = track(
        &client,
        &sim,
        &token,
        &format!("/srorastro/v1/objetos/{code}?resultado=P"),
        Some("pt-BR"),
    )
    .await;
    assert_eq!(body["objetos"][0]["eventos"][0]["codigo"], "PO");

    assert_eq!(sim.polls(code), 8);
    assert_eq!(sim.tracking_calls(), 8);
}

#[tokio::test]
async fn all_at_once_reveals_everything() {
    let sim = start(SimConfig::default()).await;
    let client = reqwest::Client::new();
    let token = token(&client, &sim).await;
    sim.script(
        "PG747937788BR",
        Script::Journey(Journey::delivered().all_at_once()),
    );
    let (_, body) = track(
        &client,
        &sim,
        &token,
        "/srorastro/v1/objetos/PG747937788BR",
        Some("pt-BR"),
    )
    .await;
    assert_eq!(body["objetos"][0]["eventos"].as_array().unwrap().len(), 4);
}

#[tokio::test]
async fn unknown_and_invalid_codes() {
    let sim = start(SimConfig::default()).await;
    let client = reqwest::Client::new();
    let token = token(&client, &sim).await;
    sim.script("SW091892778BR", Script::Invalid);
    sim.script("JT124720455BR", Script::NotFound);
    let (status, body) = track(
        &client,
        &sim,
        &token,
        "/srorastro/v1/objetos?codigosObjetos=PG747937788BR&codigosObjetos=SW091892778BR&codigosObjetos=JT124720455BR&resultado=T",
        Some("pt-BR"),
    )
    .await;
    assert_eq!(status, 200);
    let by_code = |c: &str| {
        body["objetos"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["codObjeto"] == c)
            .unwrap()
            .clone()
    };
    assert!(
        by_code("PG747937788BR")["mensagem"]
            .as_str()
            .unwrap()
            .starts_with("SRO-020")
    );
    assert!(
        by_code("JT124720455BR")["mensagem"]
            .as_str()
            .unwrap()
            .starts_with("SRO-020")
    );
    assert!(
        by_code("SW091892778BR")["mensagem"]
            .as_str()
            .unwrap()
            .starts_with("SRO-019")
    );
    assert!(by_code("PG747937788BR").get("eventos").is_none());
    assert_eq!(sim.polls("PG747937788BR"), 1);
}

#[tokio::test]
async fn accept_language_must_be_exact() {
    let sim = start(SimConfig::default()).await;
    let client = reqwest::Client::new();
    let token = token(&client, &sim).await;
    for lang in [Some("*"), None, Some("pt-br")] {
        let (status, body) = track(
            &client,
            &sim,
            &token,
            "/srorastro/v1/objetos/DL746686536BR",
            lang,
        )
        .await;
        assert_eq!(status, 400, "{lang:?}");
        assert!(
            body["msgs"][0].as_str().unwrap().contains("SRO-018"),
            "{body}"
        );
        assert_eq!(body["method"], "GET");
    }
    assert_eq!(sim.tracking_calls(), 0);
    assert_eq!(sim.polls("DL746686536BR"), 0);
}

#[tokio::test]
async fn objects_come_back_in_reverse_order() {
    let sim = start(SimConfig::default()).await;
    let client = reqwest::Client::new();
    let token = token(&client, &sim).await;
    let codes = ["DL746686536BR", "PG747937788BR", "SW091892778BR"];
    for c in codes {
        sim.script(c, Script::Journey(Journey::delivered()));
    }
    let repeated = "/srorastro/v1/objetos?codigosObjetos=DL746686536BR&codigosObjetos=PG747937788BR&codigosObjetos=SW091892778BR&resultado=T";
    let (status, body) = track(&client, &sim, &token, repeated, Some("pt-BR")).await;
    assert_eq!(status, 200);
    assert_eq!(body["quantidade"], 3);
    assert_eq!(
        codes_of(&body),
        ["SW091892778BR", "PG747937788BR", "DL746686536BR"]
    );

    let joined = "/srorastro/v1/objetos?codigosObjetos=DL746686536BR,PG747937788BR%2CSW091892778BR&resultado=T";
    let (status, body) = track(&client, &sim, &token, joined, Some("pt-BR")).await;
    assert_eq!(status, 200);
    assert_eq!(
        codes_of(&body),
        ["SW091892778BR", "PG747937788BR", "DL746686536BR"]
    );
    for c in codes {
        assert_eq!(sim.polls(c), 2);
    }
}

#[tokio::test]
async fn more_than_fifty_codes_is_a_gateway_error() {
    let sim = start(SimConfig::default()).await;
    let client = reqwest::Client::new();
    let token = token(&client, &sim).await;
    let query: Vec<String> = (0..51)
        .map(|i| format!("codigosObjetos=DL{i:08}0BR"))
        .collect();
    let (status, body) = track(
        &client,
        &sim,
        &token,
        &format!("/srorastro/v1/objetos?{}", query.join("&")),
        Some("pt-BR"),
    )
    .await;
    assert_eq!(status, 400);
    assert!(body["msgs"][0].is_string());
}

#[tokio::test]
async fn expired_tokens_get_gtw_008() {
    let sim = start(SimConfig::default()).await;
    let client = reqwest::Client::new();
    let old = token(&client, &sim).await;
    let path = "/srorastro/v1/objetos/DL746686536BR";
    assert_eq!(track(&client, &sim, &old, path, Some("pt-BR")).await.0, 200);

    sim.expire_tokens();
    let (status, body) = track(&client, &sim, &old, path, Some("pt-BR")).await;
    assert_eq!(status, 401);
    assert_eq!(
        body["msgs"][0],
        "GTW-008: Token não válido para este ambiente."
    );
    assert_eq!(body["path"], path);

    let fresh = token(&client, &sim).await;
    assert_eq!(
        track(&client, &sim, &fresh, path, Some("pt-BR")).await.0,
        200
    );
    assert_eq!(
        track(&client, &sim, "made-up", path, Some("pt-BR")).await.0,
        401
    );
    assert_eq!(sim.tracking_calls(), 2);
    assert_eq!(sim.token_requests(), 2);

    // A TTL of zero: every token is already expired when used.
    let short = start(SimConfig {
        token_ttl: chrono::Duration::zero(),
        ..Default::default()
    })
    .await;
    let t = token(&client, &short).await;
    assert_eq!(track(&client, &short, &t, path, Some("pt-BR")).await.0, 401);
}

#[tokio::test]
async fn auto_journey_and_control_api() {
    let sim = start(SimConfig {
        auto_journey: true,
        ..Default::default()
    })
    .await;
    let client = reqwest::Client::new();
    let token = token(&client, &sim).await;
    let (_, body) = track(
        &client,
        &sim,
        &token,
        "/srorastro/v1/objetos/DU713842539BR",
        Some("pt-BR"),
    )
    .await;
    assert_eq!(body["objetos"][0]["eventos"][0]["codigo"], "PO");
    let (_, body) = track(
        &client,
        &sim,
        &token,
        "/srorastro/v1/objetos/AA123456789BR",
        Some("pt-BR"),
    )
    .await;
    assert!(
        body["objetos"][0]["mensagem"]
            .as_str()
            .unwrap()
            .starts_with("SRO-019")
    );

    let control = format!("{}/_sim/objects/JT124720455BR", sim.base_url());
    let res = client
        .put(&control)
        .json(&serde_json::json!({ "not_found": true }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 204);
    let (_, body) = track(
        &client,
        &sim,
        &token,
        "/srorastro/v1/objetos/JT124720455BR",
        Some("pt-BR"),
    )
    .await;
    assert!(
        body["objetos"][0]["mensagem"]
            .as_str()
            .unwrap()
            .starts_with("SRO-020")
    );

    let res = client
        .put(&control)
        .json(&serde_json::json!({ "journey": "delivered" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 204);
    let (_, body) = track(
        &client,
        &sim,
        &token,
        "/srorastro/v1/objetos/JT124720455BR",
        Some("pt-BR"),
    )
    .await;
    assert_eq!(body["objetos"][0]["eventos"].as_array().unwrap().len(), 1);

    let res = client
        .put(&control)
        .json(&serde_json::json!({ "journey": "lost" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 400);

    let polls: Value = client
        .get(&control)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(polls["polls"], 2);
}

#[tokio::test]
async fn shutdown_stops_the_server() {
    let sim = start(SimConfig::default()).await;
    let url = format!("{}/token/v1/autentica", sim.base_url());
    sim.shutdown();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(reqwest::Client::new().post(&url).send().await.is_err());
}
