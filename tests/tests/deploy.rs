//! The deployment files in `deploy/` checked against the code, so that they fail here when either drifts:
//!
//! - every YAML file parses (Kubernetes files as several documents), and every JSON file;
//! - compose runs every binary, from files that exist, each worker with its own RabbitMQ user whose URL is a secret
//!   file (made at random by `scripts/compose-secrets.sh`, never written in a deploy file), the users provisioned by
//!   `provision-users.sh` from `users.json`, `/health` healthchecks and Prometheus scrape jobs on `METRICS_ADDR`;
//! - `definitions.json` (loaded at every boot: no users) declares exactly the queues (with their arguments),
//!   exchanges and bindings that `tracking_app::topology` declares, and the parking queues' policy;
//! - `users.json` gives no user but `admin` configure or the default exchange, and each user read and write on what
//!   that worker does only (`tests/tests/privileges.rs` holds every user to it on the real broker);
//! - the Kubernetes Deployments have a readiness probe on `/health`, a liveness probe on `/health/live`, and resources, and every KEDA `ScaledObject` scales an
//!   existing Deployment on the queue that Deployment consumes;
//! - the metric catalog (`tracking_app::catalog`) lists exactly the metrics the crates' sources emit, and the
//!   Grafana dashboard is well formed and queries only those (histograms by their buckets), RabbitMQ's, or
//!   Prometheus' `up` and `ALERTS`;
//! - the alert rules (`deploy/prometheus/alerts.yml`) query only such metrics, compose's Prometheus loads them, and
//!   the Kubernetes `PrometheusRule` holds exactly the same groups.

#![allow(clippy::unwrap_used)]

use regex::Regex;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tracking_app::topology::{
    self, CARRIER_EVENTS, EMAIL_QUEUE, MARKETPLACE_QUEUE, NORMALIZER_QUEUE, ORDER_STATUS, QueueArg,
    TRACKING_REQUESTS, WORK_QUEUES,
};
use tracking_runtime::amqp::DEFAULT_RETRY_DELAYS_MS;
use yaml_rust2::{Yaml, YamlLoader};

// ---------------------------------------------------------------------------------------------------------------
// What each process does with RabbitMQ, from the code (README "Binaries", the workers' modules, `trackctl`).

struct Role {
    /// The RabbitMQ user (and compose service, Kubernetes Deployment) name.
    user: &'static str,
    /// The work queue it consumes.
    consumes: Option<&'static str>,
    /// The exchanges it publishes to (never the default exchange: each work queue has an exchange of its name,
    /// for its own retries and parking, the scheduler's and the API's requests, and trackctl's replays).
    publishes_to: &'static [&'static str],
    /// Whether it reads the parking queues (`trackctl dead list|show|replay|purge`).
    reads_dead: bool,
}

const ROLES: [Role; 7] = [
    Role {
        user: "fetcher",
        consumes: Some(TRACKING_REQUESTS),
        publishes_to: &[CARRIER_EVENTS, TRACKING_REQUESTS],
        reads_dead: false,
    },
    Role {
        user: "normalizer",
        consumes: Some(NORMALIZER_QUEUE),
        publishes_to: &[ORDER_STATUS, NORMALIZER_QUEUE],
        reads_dead: false,
    },
    Role {
        user: "scheduler",
        consumes: None,
        publishes_to: &[TRACKING_REQUESTS, EMAIL_QUEUE],
        reads_dead: false,
    },
    Role {
        user: "email-publisher",
        consumes: Some(EMAIL_QUEUE),
        publishes_to: &[EMAIL_QUEUE],
        reads_dead: false,
    },
    Role {
        user: "marketplace-publisher",
        consumes: Some(MARKETPLACE_QUEUE),
        publishes_to: &[MARKETPLACE_QUEUE],
        reads_dead: false,
    },
    Role {
        user: "tracking-api",
        consumes: None,
        publishes_to: &[CARRIER_EVENTS, TRACKING_REQUESTS],
        reads_dead: false,
    },
    // `shipment recompute` publishes the new changes to order.status; `dead ...` reads the parking queues and
    // replays into the work queues.
    Role {
        user: "trackctl",
        consumes: None,
        publishes_to: &[
            ORDER_STATUS,
            TRACKING_REQUESTS,
            NORMALIZER_QUEUE,
            EMAIL_QUEUE,
            MARKETPLACE_QUEUE,
        ],
        reads_dead: true,
    },
];

/// The long-running processes of the contract (the project's interface contract, kept outside this repository;
/// README.md, "Binaries"): tracking-api included even before its source is in this tree.
const SERVICES: [&str; 6] = [
    "fetcher",
    "normalizer",
    "scheduler",
    "email-publisher",
    "marketplace-publisher",
    "tracking-api",
];

fn role(user: &str) -> &'static Role {
    ROLES.iter().find(|r| r.user == user).unwrap()
}

// ---------------------------------------------------------------------------------------------------------------
// Files.

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn deploy_dir() -> PathBuf {
    repo().join("deploy")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn files_under(dir: &Path, exts: &[&str]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| exts.contains(&e))
            {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn yaml_to_json(y: &Yaml) -> Value {
    match y {
        Yaml::Real(s) => s
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map_or_else(|| Value::String(s.clone()), Value::Number),
        Yaml::Integer(n) => Value::from(*n),
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Array(items) => Value::Array(items.iter().map(yaml_to_json).collect()),
        Yaml::Hash(h) => {
            let mut m = Map::new();
            for (k, v) in h {
                let key = match yaml_to_json(k) {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                assert!(
                    m.insert(key.clone(), yaml_to_json(v)).is_none(),
                    "duplicate key {key}"
                );
            }
            Value::Object(m)
        }
        Yaml::Null => Value::Null,
        other => panic!("unsupported YAML node {other:?}"),
    }
}

/// Every document of a YAML file, as JSON values.
fn load_yaml(path: &Path) -> Vec<Value> {
    let docs = YamlLoader::load_from_str(&read(path))
        .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()));
    docs.iter().map(yaml_to_json).collect()
}

fn load_json(path: &Path) -> Value {
    serde_json::from_str(&read(path))
        .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()))
}

fn compose() -> Value {
    let docs = load_yaml(&deploy_dir().join("compose.yaml"));
    assert_eq!(docs.len(), 1, "compose.yaml is one document");
    docs.into_iter().next().unwrap()
}

fn definitions() -> Value {
    load_json(&deploy_dir().join("rabbitmq/definitions.json"))
}

fn k8s_docs() -> Vec<(PathBuf, Value)> {
    let mut out = Vec::new();
    for path in files_under(&deploy_dir().join("k8s"), &["yaml", "yml"]) {
        for doc in load_yaml(&path) {
            if !doc.is_null() {
                out.push((path.clone(), doc));
            }
        }
    }
    out
}

fn str_list(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a.iter().map(|x| x.as_str().unwrap().to_owned()).collect(),
        Value::Null => vec![],
        other => panic!("expected a string or a list of strings, got {other}"),
    }
}

/// The binaries in the source tree (`crates/*/src/bin/*.rs`), the workers', trackctl's and the simulators'.
fn source_binaries() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for entry in std::fs::read_dir(repo().join("crates")).unwrap() {
        let bin = entry.unwrap().path().join("src/bin");
        if bin.is_dir() {
            for f in files_under(&bin, &["rs"]) {
                out.insert(f.file_stem().unwrap().to_str().unwrap().to_owned());
            }
        }
    }
    out
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit_once(':').unwrap().1.parse().unwrap()
}

// ---------------------------------------------------------------------------------------------------------------

#[test]
fn every_yaml_and_json_file_in_deploy_parses() {
    let yamls = files_under(&deploy_dir(), &["yaml", "yml"]);
    assert!(yamls.len() >= 10, "found only {yamls:?}");
    for path in &yamls {
        let docs = load_yaml(path);
        let docs: Vec<_> = docs.into_iter().filter(|d| !d.is_null()).collect();
        assert!(!docs.is_empty(), "{} has no document", path.display());
        for d in &docs {
            assert!(
                d.is_object(),
                "{}: a document is not a mapping",
                path.display()
            );
        }
    }
    for path in files_under(&deploy_dir(), &["json"]) {
        assert!(load_json(&path).is_object(), "{}", path.display());
    }
}

#[test]
fn compose_runs_every_binary_from_files_that_exist() {
    let compose = compose();
    let services = compose["services"].as_object().unwrap();
    let dir = deploy_dir();

    // Every binary in the tree, and every long-running process of the contract, is run by a service.
    let mut binaries = source_binaries();
    binaries.extend(SERVICES.iter().map(|s| (*s).to_owned()));
    let commands: BTreeMap<&str, Vec<String>> = services
        .iter()
        .map(|(name, s)| {
            let mut cmd = str_list(&s["entrypoint"]);
            cmd.extend(str_list(&s["command"]));
            (name.as_str(), cmd)
        })
        .collect();
    for bin in &binaries {
        assert!(
            commands.values().any(|c| c.first() == Some(bin)),
            "no compose service runs {bin}"
        );
    }
    assert_eq!(commands["migrate"], ["trackctl", "migrate"]);
    for infra in ["rabbitmq", "postgres", "maildev", "prometheus", "grafana"] {
        assert!(services.contains_key(infra), "no {infra} service");
    }
    assert!(
        services["rabbitmq"]["image"]
            .as_str()
            .unwrap()
            .starts_with("rabbitmq:3.10"),
        "RabbitMQ 3.10, as the code is tested against"
    );

    // The Dockerfile builds every binary a service runs.
    let dockerfile = read(&dir.join("Dockerfile"));
    let listed = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("ARG BINARIES=\""))
        .expect("Dockerfile: ARG BINARIES=\"...\"")
        .trim_end_matches('"');
    let listed: BTreeSet<&str> = listed.split_whitespace().collect();
    for (name, cmd) in &commands {
        if services[*name].get("build").is_some() {
            let bin = cmd.first().unwrap();
            assert!(
                listed.contains(bin.as_str()),
                "Dockerfile does not build {bin} (service {name})"
            );
        }
    }

    // Every file a service refers to exists.
    for (name, s) in services {
        if let Some(build) = s.get("build") {
            let context = dir.join(build["context"].as_str().unwrap());
            let dockerfile = context.join(build["dockerfile"].as_str().unwrap());
            assert!(dockerfile.is_file(), "{name}: {}", dockerfile.display());
            assert!(
                context.join("Cargo.toml").is_file(),
                "{name}: the build context is the workspace"
            );
        }
        for f in str_list(&s["env_file"]) {
            assert!(dir.join(&f).is_file(), "{name}: env_file {f}");
        }
        for v in str_list(&s["volumes"]) {
            let source = v.split(':').next().unwrap();
            if source.starts_with('.') {
                assert!(dir.join(source).exists(), "{name}: volume source {source}");
            } else {
                assert!(
                    compose["volumes"].get(source).is_some(),
                    "{name}: named volume {source} is not declared"
                );
            }
        }
    }

    // Each worker: listens on 0.0.0.0, is health-checked on /health there, scraped by Prometheus, and talks to
    // RabbitMQ as its own user, whose URL (with a random password) is a secret compose mounts.
    let prometheus = load_yaml(&dir.join("prometheus.yml")).remove(0);
    let permitted: BTreeSet<String> = permissions().into_keys().collect();
    let made_secrets = read(&repo().join("scripts/compose-secrets.sh"));
    let mut users = BTreeSet::new();
    for (name, s) in services {
        let env = &s["environment"];
        if let Some(addr) = env.get("METRICS_ADDR").and_then(Value::as_str) {
            assert!(addr.starts_with("0.0.0.0:"), "{name}: METRICS_ADDR {addr}");
            let port = port_of(addr);
            let test = str_list(&s["healthcheck"]["test"]).join(" ");
            assert!(
                test.contains(&format!("127.0.0.1:{port}/health")),
                "{name}: healthcheck {test:?} is not GET /health on {port}"
            );
            let job = prometheus["scrape_configs"]
                .as_array()
                .unwrap()
                .iter()
                .find(|j| j["job_name"] == name.as_str())
                .unwrap_or_else(|| panic!("prometheus.yml: no job {name}"));
            let sd = &job["dns_sd_configs"][0];
            assert_eq!(
                str_list(&sd["names"]),
                [name.as_str()],
                "{name}: scrape job"
            );
            assert_eq!(sd["port"], port, "{name}: scrape port");
        }
        assert!(
            env.get("AMQP_URL").is_none() && env.get("DATABASE_URL").is_none(),
            "{name}: a URL with a password in compose.yaml; use the _FILE setting and a secret"
        );
        if let Some(file) = env.get("AMQP_URL_FILE").and_then(Value::as_str) {
            let secret = format!("amqp-url-{name}");
            assert_eq!(
                file,
                format!("/run/secrets/{secret}"),
                "{name} connects as its own user"
            );
            assert!(str_list(&s["secrets"]).contains(&secret), "{name}: secrets");
            assert_eq!(
                compose["secrets"][&secret]["file"],
                format!("./secrets/{secret}"),
                "{name}: the secret {secret}"
            );
            assert!(
                made_secrets.contains("\"amqp-url-$user\"") && made_secrets.contains(name.as_str()),
                "scripts/compose-secrets.sh does not make {secret}"
            );
            assert!(
                permitted.contains(name.as_str()),
                "users.json: no user {name}"
            );
            assert!(users.insert(name.clone()));
        }
    }
    // The users' passwords: made at random, given to the provisioning only, never written in a deploy file.
    let provision = &services["rabbitmq-users"];
    assert_eq!(
        str_list(&provision["entrypoint"]),
        ["sh", "/etc/rabbitmq/provision-users.sh"]
    );
    let given = str_list(&provision["secrets"]);
    for user in &permitted {
        let secret = format!("rabbitmq-password-{user}");
        assert!(given.contains(&secret), "rabbitmq-users lacks {secret}");
        assert_eq!(
            compose["secrets"][&secret]["file"],
            format!("./secrets/{secret}")
        );
    }
    for (secret, def) in compose["secrets"].as_object().unwrap() {
        let file = def["file"].as_str().unwrap();
        assert!(file.starts_with("./secrets/"), "{secret}: {file}");
    }
    assert!(
        read(&repo().join(".gitignore"))
            .lines()
            .any(|l| l == "/deploy/secrets/"),
        ".gitignore keeps deploy/secrets/ out of git"
    );
    let text = read(&dir.join("compose.yaml"));
    for forbidden in ["dev-password", "dev-api-token", "REPLACE_ME"] {
        assert!(!text.contains(forbidden), "compose.yaml holds {forbidden}");
    }
    for s in SERVICES {
        assert!(users.contains(s), "{s} has no AMQP_URL of its own");
    }
    let rabbit_job = prometheus["scrape_configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["job_name"] == "rabbitmq")
        .unwrap();
    assert_eq!(
        str_list(&rabbit_job["static_configs"][0]["targets"]),
        ["rabbitmq:15692"]
    );
    let conf = read(&dir.join("rabbitmq/rabbitmq.conf"));
    assert!(conf.contains("prometheus.return_per_object_metrics = true"));
    assert!(conf.contains("load_definitions = /etc/rabbitmq/definitions.json"));
    let plugins = read(&dir.join("rabbitmq/enabled_plugins"));
    assert!(plugins.contains("rabbitmq_management") && plugins.contains("rabbitmq_prometheus"));
}

// ---------------------------------------------------------------------------------------------------------------
// definitions.json against topology.rs.

fn default_delays() -> Vec<Duration> {
    DEFAULT_RETRY_DELAYS_MS
        .iter()
        .map(|ms| Duration::from_millis(*ms))
        .collect()
}

fn arg_json(arg: &QueueArg) -> Value {
    match arg {
        QueueArg::Text(s) => Value::String(s.clone()),
        QueueArg::Long(n) => Value::from(*n),
    }
}

#[test]
fn definitions_declare_exactly_what_the_workers_declare() {
    let defs = definitions();
    // Loaded at every boot: users there would have their passwords reset each time (users.json holds the
    // permissions, and passwords come from the secret store: docs/operations.md).
    for key in ["users", "permissions", "topic_permissions"] {
        assert!(defs.get(key).is_none(), "definitions.json holds {key}");
    }
    let vhosts = defs["vhosts"].as_array().unwrap();
    assert_eq!(vhosts.len(), 1, "one vhost");
    let vhost = vhosts[0]["name"].as_str().unwrap();

    let expected: BTreeMap<String, Value> = topology::queues(&default_delays())
        .into_iter()
        .map(|q| {
            let args: Map<String, Value> = q
                .arguments
                .iter()
                .map(|(k, v)| ((*k).to_owned(), arg_json(v)))
                .collect();
            (q.name, Value::Object(args))
        })
        .collect();
    let mut actual = BTreeMap::new();
    for q in defs["queues"].as_array().unwrap() {
        let name = q["name"].as_str().unwrap();
        assert_eq!(q["vhost"], vhost, "{name}");
        assert_eq!(q["durable"], true, "{name}");
        assert_eq!(q["auto_delete"], false, "{name}");
        assert!(
            actual
                .insert(name.to_owned(), q["arguments"].clone())
                .is_none(),
            "{name} twice"
        );
    }
    assert_eq!(
        actual.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "the queues topology::declare declares with the default RETRY_DELAYS_MS"
    );
    for (name, args) in &expected {
        assert_eq!(&actual[name], args, "{name}: arguments");
    }

    let exchanges: BTreeSet<&str> = defs["exchanges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let name = e["name"].as_str().unwrap();
            assert_eq!(e["vhost"], vhost, "{name}");
            assert_eq!(e["type"], "topic", "{name}");
            assert_eq!(e["durable"], true, "{name}");
            assert_eq!(e["auto_delete"], false, "{name}");
            assert_eq!(e["internal"], false, "{name}");
            assert_eq!(e["arguments"], Value::Object(Map::new()), "{name}");
            name
        })
        .collect();
    assert_eq!(exchanges, topology::exchanges().into_iter().collect());

    let bindings: BTreeSet<topology::Binding> = defs["bindings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            assert_eq!(b["vhost"], vhost);
            assert_eq!(b["destination_type"], "queue");
            assert_eq!(b["arguments"], Value::Object(Map::new()));
            topology::Binding {
                queue: b["destination"].as_str().unwrap().to_owned(),
                exchange: b["source"].as_str().unwrap().to_owned(),
                routing_key: b["routing_key"].as_str().unwrap().to_owned(),
            }
        })
        .collect();
    assert_eq!(
        bindings,
        topology::bindings(&default_delays()).into_iter().collect()
    );

    // The upgrade policy: parking queues declared by earlier versions (without a delivery limit, which RabbitMQ 4
    // sets to 20) get the one the code declares.
    let policies = defs["policies"].as_array().unwrap();
    assert_eq!(policies.len(), 1);
    let policy = &policies[0];
    assert_eq!(policy["apply-to"], "queues");
    assert_eq!(
        policy["definition"],
        serde_json::json!({"delivery-limit": topology::PARKED_DELIVERY_LIMIT})
    );
    let pattern = Regex::new(policy["pattern"].as_str().unwrap()).unwrap();
    for q in expected.keys() {
        assert_eq!(
            pattern.is_match(q),
            q.ends_with(".dead"),
            "policy pattern on {q}"
        );
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Permissions (users.json). The real broker holds each user to them in tests/tests/privileges.rs.

fn users_file() -> Value {
    load_json(&deploy_dir().join("rabbitmq/users.json"))
}

struct Perms {
    configure: Regex,
    write: Regex,
    read: Regex,
}

/// Each user's patterns on the vhost. RabbitMQ matches a pattern anywhere in the name (an unanchored search), as
/// `Regex::is_match` does; the default exchange is checked as `amq.default`.
fn permissions() -> BTreeMap<String, Perms> {
    let defs = definitions();
    let vhost = defs["vhosts"][0]["name"].clone();
    let mut out = BTreeMap::new();
    for p in users_file()["permissions"].as_array().unwrap() {
        assert_eq!(p["vhost"], vhost);
        let re = |k: &str| Regex::new(p[k].as_str().unwrap()).unwrap();
        let user = p["user"].as_str().unwrap().to_owned();
        let perms = Perms {
            configure: re("configure"),
            write: re("write"),
            read: re("read"),
        };
        assert!(out.insert(user.clone(), perms).is_none(), "{user} twice");
    }
    out
}

#[test]
fn each_user_may_touch_its_own_queues_and_not_the_others() {
    let perms = permissions();
    let declared: Vec<String> = topology::queues(&default_delays())
        .into_iter()
        .map(|q| q.name)
        .collect();
    let users: BTreeSet<&String> = perms.keys().collect();
    let expected: BTreeSet<String> = ROLES
        .iter()
        .map(|r| r.user.to_owned())
        .chain(["admin".to_owned(), "keda".to_owned()])
        .collect();
    assert_eq!(users, expected.iter().collect(), "users with permissions");

    for role in &ROLES {
        let p = &perms[role.user];
        let who = role.user;
        // No user but the administrator changes the topology: configure would also let it delete.
        for name in declared
            .iter()
            .map(String::as_str)
            .chain(topology::exchanges())
        {
            assert!(!p.configure.is_match(name), "{who}: configure {name}");
        }
        // Nobody writes to the default exchange: it reaches every queue.
        assert!(!p.write.is_match("amq.default"), "{who}: write amq.default");
        for queue in WORK_QUEUES {
            assert_eq!(
                p.read.is_match(queue),
                role.consumes == Some(queue),
                "{who}: read {queue}"
            );
            assert_eq!(
                p.read.is_match(&topology::dead_queue(queue)),
                role.reads_dead,
                "{who}: read {queue}.dead"
            );
        }
        for exchange in topology::exchanges() {
            assert_eq!(
                p.write.is_match(exchange),
                role.publishes_to.contains(&exchange),
                "{who}: write {exchange}"
            );
        }
    }
    let keda = &perms["keda"];
    for name in declared
        .iter()
        .map(String::as_str)
        .chain(topology::exchanges())
        .chain(["amq.default"])
    {
        assert!(
            !keda.configure.is_match(name)
                && !keda.write.is_match(name)
                && !keda.read.is_match(name)
        );
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Kubernetes.

fn kind<'a>(docs: &'a [(PathBuf, Value)], kind: &str) -> Vec<&'a Value> {
    docs.iter()
        .filter(|(_, d)| d["kind"] == kind)
        .map(|(_, d)| d)
        .collect()
}

#[test]
fn kubernetes_manifests_are_complete() {
    let dir = deploy_dir().join("k8s");
    let kustomization = load_yaml(&dir.join("kustomization.yaml")).remove(0);
    let listed: BTreeSet<String> = str_list(&kustomization["resources"]).into_iter().collect();
    let present: BTreeSet<String> = files_under(&dir, &["yaml", "yml"])
        .iter()
        .map(|p| p.file_name().unwrap().to_str().unwrap().to_owned())
        .filter(|n| n != "kustomization.yaml")
        .collect();
    assert_eq!(listed, present, "kustomization.yaml lists every manifest");

    let docs = k8s_docs();
    for (path, d) in &docs {
        if path.ends_with("kustomization.yaml") {
            continue;
        }
        assert!(
            d["apiVersion"].is_string() && d["kind"].is_string(),
            "{}",
            path.display()
        );
        assert!(d["metadata"]["name"].is_string(), "{}", path.display());
    }
    let secrets = kind(&docs, "Secret");
    let secret_keys = |name: &str| -> BTreeSet<String> {
        let s = secrets
            .iter()
            .find(|s| s["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no Secret {name}"));
        s["stringData"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    };
    let config_maps: BTreeSet<&str> = kind(&docs, "ConfigMap")
        .iter()
        .map(|c| c["metadata"]["name"].as_str().unwrap())
        .collect();
    let binaries: BTreeSet<String> = source_binaries()
        .into_iter()
        .chain(SERVICES.iter().map(|s| (*s).to_owned()))
        .collect();

    let check_pod = |what: &str, pod: &Value, needs_probes: bool| {
        for c in pod["containers"].as_array().unwrap() {
            let command = str_list(&c["command"]);
            assert!(binaries.contains(&command[0]), "{what}: runs {command:?}");
            let res = &c["resources"];
            for k in ["requests", "limits"] {
                for r in ["cpu", "memory"] {
                    let q = &res[k][r];
                    assert!(q.is_string() || q.is_number(), "{what}: resources.{k}.{r}");
                }
            }
            for e in c["envFrom"].as_array().into_iter().flatten() {
                let name = e["configMapRef"]["name"].as_str().unwrap();
                assert!(config_maps.contains(name), "{what}: ConfigMap {name}");
            }
            let mut env = BTreeMap::new();
            for e in c["env"].as_array().into_iter().flatten() {
                let name = e["name"].as_str().unwrap().to_owned();
                if let Some(r) = e["valueFrom"].get("secretKeyRef") {
                    let key = r["key"].as_str().unwrap();
                    assert!(
                        secret_keys(r["name"].as_str().unwrap()).contains(key),
                        "{what}: secret key {key}"
                    );
                }
                env.insert(name, e.clone());
            }
            if needs_probes {
                let addr = env["METRICS_ADDR"]["value"].as_str().unwrap();
                assert!(addr.starts_with("0.0.0.0:"), "{what}: METRICS_ADDR {addr}");
                let port = port_of(addr);
                let metrics_port = c["ports"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|p| p["name"] == "metrics")
                    .unwrap_or_else(|| panic!("{what}: no metrics port"));
                assert_eq!(metrics_port["containerPort"], port, "{what}");
                // Readiness follows the dependencies (/health); liveness only the process's own loop
                // (/health/live), so that a database or broker outage restarts nothing.
                for (probe, path) in [
                    ("readinessProbe", "/health"),
                    ("livenessProbe", "/health/live"),
                ] {
                    let get = &c[probe]["httpGet"];
                    assert_eq!(get["path"], path, "{what}: {probe}");
                    assert!(
                        get["port"] == "metrics" || get["port"] == port,
                        "{what}: {probe} port"
                    );
                }
                let key = env["AMQP_URL"]["valueFrom"]["secretKeyRef"]["key"]
                    .as_str()
                    .unwrap();
                assert_eq!(
                    key,
                    format!("{}-amqp-url", command[0]),
                    "{what}: its own RabbitMQ user"
                );
            }
        }
    };

    let deployments = kind(&docs, "Deployment");
    let mut deployed = BTreeSet::new();
    for d in &deployments {
        let name = d["metadata"]["name"].as_str().unwrap();
        let labels = &d["spec"]["template"]["metadata"]["labels"];
        for (k, v) in d["spec"]["selector"]["matchLabels"].as_object().unwrap() {
            assert_eq!(&labels[k], v, "{name}: selector");
        }
        check_pod(name, &d["spec"]["template"]["spec"], true);
        deployed.insert(name);
    }
    assert_eq!(
        deployed,
        SERVICES.into_iter().collect(),
        "a Deployment per worker"
    );

    let jobs = kind(&docs, "Job");
    assert!(
        jobs.iter().any(
            |j| str_list(&j["spec"]["template"]["spec"]["containers"][0]["command"])
                == ["trackctl", "migrate"]
        ),
        "a Job runs trackctl migrate"
    );
    for j in &jobs {
        check_pod("job", &j["spec"]["template"]["spec"], false);
    }

    let services = kind(&docs, "Service");
    let api = services
        .iter()
        .find(|s| s["metadata"]["name"] == "tracking-api")
        .expect("a Service for tracking-api");
    assert_eq!(
        api["spec"]["selector"]["app.kubernetes.io/name"],
        "tracking-api"
    );

    // KEDA: each queue worker on its own queue's depth; the scheduler and tracking-api are not scaled on a queue.
    let auths = kind(&docs, "TriggerAuthentication");
    let scaled = kind(&docs, "ScaledObject");
    let mut scaled_targets = BTreeSet::new();
    for so in &scaled {
        assert_eq!(so["apiVersion"], "keda.sh/v1alpha1");
        let target = so["spec"]["scaleTargetRef"]["name"].as_str().unwrap();
        assert!(
            deployed.contains(target),
            "ScaledObject targets {target}, no such Deployment"
        );
        let triggers = so["spec"]["triggers"].as_array().unwrap();
        assert_eq!(triggers.len(), 1, "{target}");
        let t = &triggers[0];
        assert_eq!(t["type"], "rabbitmq", "{target}");
        assert_eq!(t["metadata"]["mode"], "QueueLength", "{target}");
        assert!(
            t["metadata"]["value"]
                .as_str()
                .unwrap()
                .parse::<u32>()
                .unwrap()
                > 0
        );
        let queue = t["metadata"]["queueName"].as_str().unwrap();
        assert!(
            WORK_QUEUES.contains(&queue),
            "{target}: {queue} is not a work queue"
        );
        assert_eq!(
            role(target).consumes,
            Some(queue),
            "{target} scales on {queue}"
        );
        let auth_name = t["authenticationRef"]["name"].as_str().unwrap();
        let auth = auths
            .iter()
            .find(|a| a["metadata"]["name"] == auth_name)
            .unwrap_or_else(|| panic!("no TriggerAuthentication {auth_name}"));
        for r in auth["spec"]["secretTargetRef"].as_array().unwrap() {
            assert!(secret_keys(r["name"].as_str().unwrap()).contains(r["key"].as_str().unwrap()));
        }
        let min = so["spec"]["minReplicaCount"].as_u64().unwrap();
        assert!(min >= 1 && so["spec"]["maxReplicaCount"].as_u64().unwrap() >= min);
        assert!(scaled_targets.insert(target), "{target} scaled twice");
    }
    let consumers: BTreeSet<&str> = ROLES
        .iter()
        .filter(|r| r.consumes.is_some())
        .map(|r| r.user)
        .collect();
    assert_eq!(scaled_targets, consumers);
    for d in &deployments {
        let name = d["metadata"]["name"].as_str().unwrap();
        if !consumers.contains(name) {
            assert!(
                d["spec"]["replicas"].as_u64().unwrap() >= 1,
                "{name}: replicas"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Grafana.

/// Metric names in the crates' sources: `counter!("name"`, `gauge!("name"`, `histogram!("name"` (with or without
/// the `metrics::` path), without the series names histograms add.
fn emitted_names() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for path in files_under(&repo().join("crates"), &["rs"]) {
        let text = read(&path);
        for macro_name in ["counter!(", "gauge!(", "histogram!("] {
            for (at, _) in text.match_indices(macro_name) {
                let before = text[..at].chars().next_back();
                if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                    continue;
                }
                let rest = text[at + macro_name.len()..].trim_start();
                let Some(rest) = rest.strip_prefix('"') else {
                    continue;
                };
                names.insert(rest[..rest.find('"').unwrap()].to_owned());
            }
        }
    }
    assert!(names.contains("messages_total"), "found {names:?}");
    names
}

#[test]
fn the_metric_catalog_lists_exactly_the_metrics_the_sources_emit() {
    let catalogued: BTreeSet<String> = tracking_app::catalog::METRICS
        .iter()
        .map(|m| m.name.to_owned())
        .collect();
    let emitted = emitted_names();
    let missing: Vec<_> = emitted.difference(&catalogued).collect();
    let stale: Vec<_> = catalogued.difference(&emitted).collect();
    assert!(
        missing.is_empty(),
        "emitted but not in crates/app/src/catalog.rs: {missing:?}"
    );
    assert!(stale.is_empty(), "catalogued but never emitted: {stale:?}");
}

/// The series a dashboard may query: every catalogued metric, and for a histogram its `_bucket`, `_sum` and
/// `_count` series (never the bare name: histograms have buckets, not quantiles).
fn emitted_metrics() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for m in tracking_app::catalog::METRICS {
        if let tracking_app::catalog::Kind::Histogram(_) = m.kind {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{}{suffix}", m.name));
            }
        } else {
            names.insert(m.name.to_owned());
        }
    }
    names
}

/// What RabbitMQ 3.10's prometheus plugin exports per object (its core metrics collector), that a dashboard may
/// reasonably ask for.
const RABBITMQ_METRICS: [&str; 22] = [
    "rabbitmq_queue_messages_ready",
    "rabbitmq_queue_messages_unacked",
    "rabbitmq_queue_messages",
    "rabbitmq_queue_messages_bytes",
    "rabbitmq_queue_consumers",
    "rabbitmq_queue_consumer_utilisation",
    "rabbitmq_queue_messages_published_total",
    "rabbitmq_channel_messages_published_total",
    "rabbitmq_channel_messages_confirmed_total",
    "rabbitmq_channel_messages_unroutable_returned_total",
    "rabbitmq_channel_messages_delivered_ack_total",
    "rabbitmq_channel_messages_delivered_total",
    "rabbitmq_channel_messages_redelivered_total",
    "rabbitmq_channel_messages_acked_total",
    "rabbitmq_channel_get_ack_total",
    "rabbitmq_connections",
    "rabbitmq_channels",
    "rabbitmq_consumers",
    "rabbitmq_queues",
    "rabbitmq_process_resident_memory_bytes",
    "rabbitmq_disk_space_available_bytes",
    "rabbitmq_alarms_memory_used_watermark",
];

/// What Prometheus itself makes: a target's `up`, and the alerts' state (`ALERTS`, from `deploy/prometheus/alerts.yml`).
const PROMETHEUS_METRICS: [&str; 2] = ["up", "ALERTS"];

const PROMQL_KEYWORDS: [&str; 6] = ["and", "or", "unless", "bool", "offset", "inf"];

/// The metric names a PromQL expression selects: identifiers that are not functions, keywords, labels (inside
/// `{...}` or a `by (...)`-like clause), strings, durations or numbers.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let strings = Regex::new(r#""(?:[^"\\]|\\.)*""#).unwrap();
    let braces = Regex::new(r"\{[^}]*\}").unwrap();
    let ranges = Regex::new(r"\[[^\]]*\]").unwrap();
    let offsets = Regex::new(r"\boffset\s+-?[0-9]+[a-z]+").unwrap();
    let clauses =
        Regex::new(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)").unwrap();
    let tokens = Regex::new(r"[0-9][0-9.eE+]*|[A-Za-z_:][A-Za-z0-9_:]*(\s*\()?").unwrap();
    let e = strings.replace_all(expr, "\"\"");
    let e = braces.replace_all(&e, "{}");
    let e = ranges.replace_all(&e, "[]");
    let e = offsets.replace_all(&e, "");
    let e = clauses.replace_all(&e, "");
    let mut out = BTreeSet::new();
    for m in tokens.captures_iter(&e) {
        let token = m.get(0).unwrap().as_str();
        if m.get(1).is_some() || token.starts_with(|c: char| c.is_ascii_digit()) {
            continue; // a function or aggregation, or a number
        }
        if !PROMQL_KEYWORDS.contains(&token) {
            out.insert(token.to_owned());
        }
    }
    out
}

#[test]
fn promql_metric_names_are_found() {
    assert_eq!(
        metric_names(
            r#"sum by (queue) (rate(a_total{x="b{c}", y=~".+\\.dead"}[$__rate_interval])) / on (queue) b_count{} offset 1h or vector(0) * 60"#
        ),
        ["a_total", "b_count"]
            .map(String::from)
            .into_iter()
            .collect()
    );
}

#[test]
fn dashboard_queries_only_metrics_that_exist() {
    let path = deploy_dir().join("grafana/dashboards/tracking.json");
    let d = load_json(&path);
    assert!(!d["uid"].as_str().unwrap().is_empty());
    assert!(!d["title"].as_str().unwrap().is_empty());
    assert!(d["schemaVersion"].as_u64().unwrap() >= 36);
    let vars = d["templating"]["list"].as_array().unwrap();
    let ds_var = vars
        .iter()
        .find(|v| v["type"] == "datasource")
        .expect("a datasource variable");
    assert_eq!(ds_var["query"], "prometheus");
    let ds_uid = format!("${{{}}}", ds_var["name"].as_str().unwrap());

    let emitted = emitted_metrics();
    let mut used = BTreeSet::new();
    let mut ids = BTreeSet::new();
    let panels = d["panels"].as_array().unwrap();
    let mut real = 0;
    for p in panels {
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "panel ids are unique"
        );
        let pos = &p["gridPos"];
        assert!(pos["x"].as_u64().unwrap() + pos["w"].as_u64().unwrap() <= 24);
        if p["type"] == "row" {
            continue;
        }
        real += 1;
        let title = p["title"].as_str().unwrap();
        assert_eq!(p["datasource"]["type"], "prometheus", "{title}");
        assert_eq!(p["datasource"]["uid"], ds_uid.as_str(), "{title}");
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no targets");
        for t in targets {
            let expr = t["expr"].as_str().unwrap();
            assert!(!expr.trim().is_empty(), "{title}");
            assert!(t["refId"].is_string(), "{title}");
            for name in metric_names(expr) {
                assert!(
                    emitted.contains(&name)
                        || RABBITMQ_METRICS.contains(&name.as_str())
                        || PROMETHEUS_METRICS.contains(&name.as_str()),
                    "{title}: {name} is neither emitted by the code ({emitted:?}) nor a RabbitMQ metric"
                );
                used.insert(name);
            }
        }
    }
    assert!(real >= 10, "{real} panels");
    // Every metric the brief's panels are about is on the dashboard.
    for name in [
        "rabbitmq_queue_messages_ready",
        "rabbitmq_queue_messages_published_total",
        "rabbitmq_channel_messages_delivered_ack_total",
        "messages_total",
        "message_handling_seconds_bucket",
        "carrier_state",
        "carrier_errors_total",
        "carrier_call_seconds_bucket",
        "emails_total",
        "marketplace_calls_total",
        "outbox_relayed_total",
        "shipments_expired_total",
        // The liveness row: what the alerts watch, and the alerts themselves.
        "ALERTS",
        "health_component_up",
        "consumer_stalled",
        "scheduler_last_tick_timestamp_seconds",
        "scheduler_tick_failures_total",
        "carrier_unrecognised_answers_total",
        "changes_refused_total",
        "rows_quarantined_total",
    ] {
        assert!(used.contains(name), "the dashboard does not show {name}");
    }

    let provisioning = deploy_dir().join("grafana/provisioning");
    let ds = load_yaml(&provisioning.join("datasources/prometheus.yaml")).remove(0);
    assert_eq!(ds["datasources"][0]["type"], "prometheus");
    let dash = load_yaml(&provisioning.join("dashboards/tracking.yaml")).remove(0);
    assert_eq!(
        dash["providers"][0]["options"]["path"],
        "/var/lib/grafana/dashboards"
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Alert rules (tests/tests/alerts.rs runs promtool on them and proves them on a real Prometheus).

fn alert_rules() -> Value {
    load_yaml(&deploy_dir().join("prometheus/alerts.yml")).remove(0)
}

#[test]
fn alert_rules_query_only_metrics_that_exist() {
    let emitted = emitted_metrics();
    let mut alerts = 0;
    for group in alert_rules()["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            let name = rule["alert"].as_str().unwrap();
            alerts += 1;
            let expr = rule["expr"].as_str().unwrap();
            for metric in metric_names(expr) {
                assert!(
                    emitted.contains(&metric)
                        || RABBITMQ_METRICS.contains(&metric.as_str())
                        || metric == "up",
                    "{name}: {metric} is neither emitted by the code nor a RabbitMQ metric"
                );
            }
            let summary = rule["annotations"]["summary"].as_str().unwrap();
            assert!(!summary.is_empty(), "{name}: a summary");
            assert!(
                rule["labels"]["severity"] == "critical" || rule["labels"]["severity"] == "warning",
                "{name}: severity"
            );
        }
    }
    assert!(alerts >= 14, "{alerts} alerts");

    // Prometheus for compose loads them, from the file compose mounts.
    let prometheus = load_yaml(&deploy_dir().join("prometheus.yml")).remove(0);
    assert_eq!(
        str_list(&prometheus["rule_files"]),
        ["/etc/prometheus/alerts.yml"]
    );
    let compose = compose();
    assert!(
        str_list(&compose["services"]["prometheus"]["volumes"])
            .contains(&"./prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro".to_owned())
    );
}

#[test]
fn the_prometheus_rule_in_k8s_holds_the_same_rules_as_alerts_yml() {
    let docs = k8s_docs();
    let rules = kind(&docs, "PrometheusRule");
    assert_eq!(rules.len(), 1, "one PrometheusRule");
    assert_eq!(rules[0]["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(
        rules[0]["spec"]["groups"],
        alert_rules()["groups"],
        "deploy/k8s/prometheus-rule.yaml and deploy/prometheus/alerts.yml differ: change both"
    );
}

/// PostgreSQL connections of a Deployment's pod: its `DATABASE_MAX_CONNECTIONS` (container env, then the
/// ConfigMap it loads), else the default every long-running binary uses.
fn pool_per_pod(d: &Value, config_maps: &[&Value]) -> u64 {
    let mut total = 0;
    for c in d["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
    {
        let own = c["env"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["name"] == "DATABASE_MAX_CONNECTIONS")
            .and_then(|e| e["value"].as_str().map(str::to_owned));
        let shared = c["envFrom"].as_array().into_iter().flatten().find_map(|f| {
            let name = f["configMapRef"]["name"].as_str()?;
            let cm = config_maps.iter().find(|m| m["metadata"]["name"] == name)?;
            cm["data"]["DATABASE_MAX_CONNECTIONS"]
                .as_str()
                .map(str::to_owned)
        });
        total += own
            .or(shared)
            .map_or(u64::from(tracking_store::env::WORKER_POOL_SIZE), |v| {
                v.parse().unwrap()
            });
    }
    total
}

#[test]
fn postgres_connections_at_the_keda_maximums_are_stated_where_operators_read() {
    let docs = k8s_docs();
    let config_maps = kind(&docs, "ConfigMap");
    let scaled = kind(&docs, "ScaledObject");
    let mut total = 0;
    let mut parts = Vec::new();
    for d in kind(&docs, "Deployment") {
        let name = d["metadata"]["name"].as_str().unwrap();
        let replicas = scaled
            .iter()
            .find(|s| s["spec"]["scaleTargetRef"]["name"] == name)
            .map_or_else(
                || d["spec"]["replicas"].as_u64().unwrap_or(1),
                |s| s["spec"]["maxReplicaCount"].as_u64().unwrap(),
            );
        let pool = pool_per_pod(d, &config_maps);
        total += replicas * pool;
        parts.push(format!("{name} {replicas} × {pool}"));
    }
    assert!(total > 0);
    let stated = format!("{total} PostgreSQL connections");
    for file in [
        deploy_dir().join("k8s/keda.yaml"),
        repo().join("docs/operations.md"),
    ] {
        assert!(
            read(&file).contains(&stated),
            "{} should state \"{stated}\" at the KEDA maximums ({})",
            file.display(),
            parts.join(", ")
        );
    }
}

#[test]
fn no_deploy_file_holds_a_usable_secret() {
    // Placeholders that would run (a known password, a known token) and password hashes a boot would reload.
    for path in files_under(
        &deploy_dir(),
        &["yaml", "yml", "json", "toml", "conf", "env", "sh"],
    ) {
        let text = read(&path);
        for forbidden in [
            "REPLACE_ME",
            "dev-password",
            "dev-api-token",
            "password_hash",
        ] {
            assert!(
                !text.contains(forbidden),
                "{} holds {forbidden}",
                path.display()
            );
        }
    }
    // The Kubernetes Secrets ship empty: the pods stop, or find nothing, until the operator fills them.
    let docs = k8s_docs();
    for secret in kind(&docs, "Secret") {
        let name = secret["metadata"]["name"].as_str().unwrap();
        for (key, value) in secret["stringData"].as_object().unwrap() {
            let value = value.as_str().unwrap();
            if key.ends_with(".toml") {
                for line in value.lines().map(str::trim) {
                    for field in ["secret", "app_key", "app_token", "access_token"] {
                        if let Some(v) = line.strip_prefix(&format!("{field} = ")) {
                            assert!(v.starts_with("\"\""), "{name}/{key}: {line}");
                        }
                    }
                }
            } else {
                assert_eq!(value, "", "{name}/{key} is not empty");
            }
        }
    }
}
