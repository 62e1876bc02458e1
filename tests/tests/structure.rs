//! The codebase's structure checked against its sources, so that a drift fails here:
//!
//! - SQL lives in `crates/store` (one module per table or aggregate): no `sqlx::query*` or raw SQL in
//!   `crates/workers` nor in `crates/api`;
//! - docs/settings.md's tables name every setting the code reads, and the code reads every setting they name;
//! - `tracking-store`, `tracking-email` and `tracking-marketplaces` reach, through the workspace's `Cargo.toml`
//!   files, none of [`FORBIDDEN_UNDER_PRODUCT_CRATES`] (the runtime, the broker client, the HTTP server, the
//!   carrier clients), and `crates/runtime/src` names none of the application's queues (`crates/app`).
//!
//! All read the files only: no server is needed.

#![allow(clippy::unwrap_used)]

use regex::Regex;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

// ---------------------------------------------------------------------------------------------------------------
// SQL only in the store.

/// The lines of `source` that run SQL themselves: sqlx's query functions and macros, or a string that starts
/// with an SQL statement.
fn sql_lines(source: &str) -> Vec<(usize, String)> {
    let sql = Regex::new(
        r#"sqlx::(query|query_as|query_scalar|query_with|query_as_with|query_scalar_with|raw_sql)\b|\b(query|query_as|query_scalar)(::<[^>]*>)?\(|\bquery(_as|_scalar)?!\(|raw_sql\(|"\s*(SELECT|INSERT INTO|UPDATE|DELETE FROM|WITH|LOCK TABLE)\s"#,
    )
    .unwrap();
    source
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim_start().starts_with("//"))
        .filter(|(_, l)| sql.is_match(l))
        .map(|(n, l)| (n + 1, l.trim().to_owned()))
        .collect()
}

#[test]
fn the_detector_finds_sql_in_its_usual_shapes() {
    for shape in [
        r#"let n: i64 = sqlx::query_scalar("SELECT 1").fetch_one(pool).await?;"#,
        r#"sqlx::query("UPDATE x SET y = 1").execute(pool).await?;"#,
        r#"let rows: Vec<Row> = query_as::<_, Row>(&sql).fetch_all(pool).await?;"#,
        r#"let r = sqlx::query!("DELETE FROM t").execute(pool).await?;"#,
        r#"sqlx::raw_sql("LOCK TABLE t").execute(pool).await?;"#,
        r#"    "INSERT INTO carrier_responses (carrier) VALUES ($1)","#,
    ] {
        assert_eq!(sql_lines(shape).len(), 1, "not seen: {shape}");
    }
    for innocent in [
        "// sqlx::query(\"SELECT 1\") in a comment",
        "let pool = tracking_store::pool(&settings.db)?;",
        "tracking_store::changes::earlier_pending(&self.pool, destination).await",
        "println!(\"select a shipment\");",
    ] {
        assert!(sql_lines(innocent).is_empty(), "flagged: {innocent}");
    }
}

#[test]
fn no_sql_outside_the_store() {
    let root = root();
    let exempt: [std::path::PathBuf; 0] = [];
    let mut found = Vec::new();
    for dir in ["crates/workers/src", "crates/api/src"] {
        for file in rust_files(&root.join(dir)) {
            if exempt.contains(&file) {
                continue;
            }
            let source = std::fs::read_to_string(&file).unwrap();
            for (line, text) in sql_lines(&source) {
                found.push(format!(
                    "{}:{line}: {text}",
                    file.strip_prefix(&root).unwrap().display()
                ));
            }
        }
    }
    assert!(
        found.is_empty(),
        "SQL outside crates/store (move it into a store module, one per table or aggregate):\n{}",
        found.join("\n")
    );
}

/// The names of the dependencies a `Cargo.toml` lists (every `[*dependencies]` table, `name = ...` and
/// `name.workspace = true` alike).
fn dependencies(manifest: &str) -> BTreeSet<String> {
    let entry = Regex::new(r"^([A-Za-z0-9_-]+)(\.workspace)?\s*=").unwrap();
    let mut in_deps = false;
    let mut out = BTreeSet::new();
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_deps = line.trim_matches(['[', ']']).ends_with("dependencies");
        } else if in_deps && let Some(c) = entry.captures(line) {
            out.insert(c[1].to_owned());
        }
    }
    out
}

#[test]
fn the_dependency_reader_sees_both_spellings() {
    let deps = dependencies(
        "[package]\nname = \"x\"\n[dependencies]\nsqlx.workspace = true\ntokio = { version = \"1\" }\n\
         [dev-dependencies]\nregex = \"1\"\n[lints]\nworkspace = true\n",
    );
    assert_eq!(
        deps.into_iter().collect::<Vec<_>>(),
        ["regex", "sqlx", "tokio"]
    );
}

/// The store is the only way to the database: the workers and the API hold a `tracking_store::Db` and open units
/// of work with it, and cannot run a statement of their own (nor open a transaction) because they do not link
/// sqlx at all.
#[test]
fn only_the_store_depends_on_sqlx() {
    let root = root();
    for krate in ["crates/workers", "crates/api"] {
        let manifest = std::fs::read_to_string(root.join(krate).join("Cargo.toml")).unwrap();
        let deps = dependencies(&manifest);
        assert!(!deps.is_empty(), "{krate}: no dependencies read");
        assert!(
            !deps.contains("sqlx"),
            "{krate}/Cargo.toml lists sqlx: go through tracking-store (its Db and Tx) instead"
        );
    }
}

// ---------------------------------------------------------------------------------------------------------------
// README's settings tables against the settings the code reads.

/// Names in capitals that are not settings though they look like one.
const NOT_SETTINGS: [&str; 2] = [
    // `env!("CARGO_PKG_VERSION")`: read by the compiler, not at run time.
    "CARGO_PKG_VERSION",
    // `tracking-api page-link ORDER_ID...`: a command-line argument named in its error.
    "ORDER_ID",
];

/// Every setting name in the sources of the shipped crates: the first argument of a settings-reading function
/// (`tracking_runtime::settings::{var, var_or, required, parse, secs, millis, millis_list, socket_addr}`, through
/// which every setting is read), and any other string literal shaped like one (`NAME_WITH_PARTS`),
/// which catches names handed around before they are read (the secret settings' list, a budget's names).
fn settings_in_code(root: &Path) -> BTreeSet<String> {
    let read = Regex::new(
        r#"\b(var|var_or|required|settings::parse|secs|millis|millis_list|socket_addr)\(\s*"([A-Z][A-Z0-9_]*)""#,
    )
    .unwrap();
    let shaped = Regex::new(r#""([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)""#).unwrap();
    let mut names = BTreeSet::new();
    for krate in std::fs::read_dir(root.join("crates")).unwrap() {
        let krate = krate.unwrap().path();
        // The simulators are test and demo stand-ins, not the product: their variables are not settings.
        if krate.ends_with("sim") {
            continue;
        }
        for file in rust_files(&krate.join("src")) {
            let source = std::fs::read_to_string(&file).unwrap();
            for c in read.captures_iter(&source) {
                names.insert(c[2].to_owned());
            }
            for c in shaped.captures_iter(&source) {
                names.insert(c[1].to_owned());
            }
        }
    }
    for n in NOT_SETTINGS {
        names.remove(n);
    }
    names
}

/// Every variable in the first column of the tables under "# Settings" (docs/settings.md's title; "## Settings" as
/// well), up to the next second-level heading.
fn settings_in_readme(readme: &str) -> BTreeSet<String> {
    let start = readme
        .find("# Settings")
        .expect("docs/settings.md has a Settings heading");
    let section = &readme[start + 1..];
    let end = section[3..].find("\n## ").map_or(section.len(), |e| e + 3);
    let name = Regex::new(r"`([A-Z][A-Z0-9_]*)`").unwrap();
    let mut names = BTreeSet::new();
    for line in section[..end].lines() {
        let Some(row) = line.strip_prefix('|') else {
            continue;
        };
        let first = row.split('|').next().unwrap_or("");
        for c in name.captures_iter(first) {
            names.insert(c[1].to_owned());
        }
    }
    names
}

#[test]
fn the_readme_settings_tables_match_the_settings_the_code_reads() {
    let root = root();
    let code = settings_in_code(&root);
    let readme =
        settings_in_readme(&std::fs::read_to_string(root.join("docs/settings.md")).unwrap());
    assert!(
        code.len() > 50 && readme.len() > 50,
        "the scans found too little: {} in the code, {} in docs/settings.md",
        code.len(),
        readme.len()
    );
    let undocumented: Vec<_> = code.difference(&readme).collect();
    let unread: Vec<_> = readme.difference(&code).collect();
    assert!(
        undocumented.is_empty() && unread.is_empty(),
        "read by the code but not in docs/settings.md's tables: {undocumented:?}\n\
         in docs/settings.md's tables but read nowhere: {unread:?}"
    );
}

#[test]
fn the_readme_scan_reads_first_columns_only() {
    let readme = "intro `NOT_THIS`\n## Settings\n\n| variable | default | meaning |\n| --- | --- | --- |\n\
                  | `A_ONE`, `B_TWO` | 1 | like `C_THREE` |\n| `PREFETCH` | 32 | x |\n## Operating\n| `D_FOUR` | | |\n";
    let names: Vec<_> = settings_in_readme(readme).into_iter().collect();
    assert_eq!(names, ["A_ONE", "B_TWO", "PREFETCH"]);
}

// ---------------------------------------------------------------------------------------------------------------
// Nothing RabbitMQ 4 deprecated or removed (docs/operations.md, "RabbitMQ 4").

/// The RabbitMQ 4 problems in one source file: a global QoS, a queue declared transient (not durable, not
/// exclusive: deprecated in 4.0, refused by default from 4.3), exclusive or auto-delete.
fn rabbitmq4_problems(source: &str) -> Vec<String> {
    let mut out = Vec::new();
    for bad in ["global: true", "exclusive: true", "auto_delete: true"] {
        if source.contains(bad) {
            out.push(bad.to_owned());
        }
    }
    // Every literal of the declare options makes the queue durable or only checks it (passive).
    for (at, _) in source.match_indices("QueueDeclareOptions {") {
        let body = &source[at..];
        let body = &body[..body.find('}').unwrap_or(body.len())];
        if !body.contains("durable: true") && !body.contains("passive: true") {
            out.push(format!("a transient queue declaration: {body}"));
        }
    }
    // The default options on their own are a transient, non-exclusive queue.
    for (at, _) in source.match_indices("QueueDeclareOptions::default()") {
        if !source[..at].ends_with("..") {
            out.push("QueueDeclareOptions::default() declares a transient queue".to_owned());
        }
    }
    out
}

#[test]
fn the_rabbitmq4_detector_finds_what_it_looks_for() {
    assert!(rabbitmq4_problems("ch.basic_qos(10, BasicQosOptions { global: true })").len() == 1);
    assert!(!rabbitmq4_problems("q(n.into(), QueueDeclareOptions::default(), t)").is_empty());
    assert!(
        !rabbitmq4_problems("QueueDeclareOptions { nowait: true, ..Default::default() }")
            .is_empty()
    );
    assert!(
        rabbitmq4_problems(
            "QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() }"
        )
        .is_empty()
    );
    assert!(
        rabbitmq4_problems("QueueDeclareOptions { passive: true, ..Default::default() }")
            .is_empty()
    );
}

#[test]
fn no_code_uses_what_rabbitmq4_deprecated_or_removed() {
    let mut found = Vec::new();
    for file in rust_files(&root().join("crates")) {
        let source = std::fs::read_to_string(&file).unwrap();
        for problem in rabbitmq4_problems(&source) {
            found.push(format!("{}: {problem}", file.display()));
        }
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
}

// ---------------------------------------------------------------------------------------------------------------
// A runtime with no product in it, and product crates with no runtime in them (issue 22, point 2).

/// What the store, the mailer and the marketplace relay must not pull in, directly or through a workspace crate:
/// the worker runtime (which brings the two below), the broker client, the HTTP server and the Prometheus exporter
/// that serves `/metrics`, and the carrier clients (marketplaces once depended on them for redaction alone). An
/// HTTP client (`reqwest`, the relay's) is allowed: it opens connections, it serves none.
const FORBIDDEN_UNDER_PRODUCT_CRATES: [&str; 5] = [
    "tracking-runtime",
    "lapin",
    "axum",
    "metrics-exporter-prometheus",
    "tracking-carriers",
];

/// Each workspace crate's `[dependencies]` (not dev- or build-dependencies), by package name, read from the
/// `Cargo.toml` files under `crates/`.
fn workspace_dependencies(root: &Path) -> std::collections::BTreeMap<String, BTreeSet<String>> {
    let name = Regex::new(r#"(?m)^name\s*=\s*"([A-Za-z0-9_-]+)""#).unwrap();
    let dep = Regex::new(r"(?m)^([A-Za-z0-9_-]+)\s*(?:\.workspace|=)").unwrap();
    let mut out = std::collections::BTreeMap::new();
    for krate in std::fs::read_dir(root.join("crates")).unwrap() {
        let Ok(manifest) = std::fs::read_to_string(krate.unwrap().path().join("Cargo.toml")) else {
            continue;
        };
        out.insert(
            name.captures(&manifest).unwrap()[1].to_owned(),
            manifest_dependencies(&manifest, &dep),
        );
    }
    out
}

/// The names in a manifest's `[dependencies]` table.
fn manifest_dependencies(manifest: &str, dep: &Regex) -> BTreeSet<String> {
    let deps = manifest
        .split_once("\n[dependencies]")
        .map_or("", |(_, rest)| rest.split("\n[").next().unwrap_or(""));
    dep.captures_iter(deps).map(|c| c[1].to_owned()).collect()
}

/// Every dependency `krate` reaches through workspace crates (themselves included), and through which crate each
/// was reached: a workspace crate's own dependencies are followed, an outside crate's are not (those are
/// `cargo tree`'s to show).
fn reached(
    deps: &std::collections::BTreeMap<String, BTreeSet<String>>,
    krate: &str,
) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    let mut todo = vec![krate.to_owned()];
    while let Some(k) = todo.pop() {
        for d in deps.get(&k).into_iter().flatten() {
            if !out.contains_key(d) {
                out.insert(d.clone(), k.clone());
                if deps.contains_key(d) {
                    todo.push(d.clone());
                }
            }
        }
    }
    out
}

#[test]
fn the_dependency_walk_follows_workspace_crates_only() {
    let dep = Regex::new(r"(?m)^([A-Za-z0-9_-]+)\s*(?:\.workspace|=)").unwrap();
    let manifest = "[package]\nname = \"a\"\n[dependencies]\nb.workspace = true\nserde = \"1\"\n\
                    [dev-dependencies]\naxum.workspace = true\n";
    assert_eq!(
        manifest_dependencies(manifest, &dep),
        BTreeSet::from(["b".to_owned(), "serde".to_owned()])
    );
    let mut deps = std::collections::BTreeMap::new();
    deps.insert("a".to_owned(), BTreeSet::from(["b".to_owned()]));
    deps.insert("b".to_owned(), BTreeSet::from(["lapin".to_owned()]));
    let seen = reached(&deps, "a");
    assert_eq!(seen.get("lapin").map(String::as_str), Some("b"));
}

#[test]
fn the_store_mailer_and_relay_pull_no_runtime_broker_or_http_server() {
    let deps = workspace_dependencies(&root());
    assert!(deps.len() >= 10, "the scan found too few crates: {deps:?}");
    let mut found = Vec::new();
    for krate in ["tracking-store", "tracking-email", "tracking-marketplaces"] {
        assert!(deps.contains_key(krate), "{krate} not found under crates/");
        for (dep, via) in reached(&deps, krate) {
            if FORBIDDEN_UNDER_PRODUCT_CRATES.contains(&dep.as_str()) {
                found.push(format!("{krate} depends on {dep} (through {via})"));
            }
        }
    }
    assert!(
        found.is_empty(),
        "read settings through tracking-settings and redact through tracking-redact:\n{}",
        found.join("\n")
    );
}

/// The application's queue and exchange names: the string values of `crates/app/src/topology.rs`' constants.
fn application_queue_names(root: &Path) -> Vec<String> {
    let source = std::fs::read_to_string(root.join("crates/app/src/topology.rs")).unwrap();
    let constant = Regex::new(r#"(?m)^pub const [A-Z_]+: &str = "([^"]+)";"#).unwrap();
    constant
        .captures_iter(&source)
        .map(|c| c[1].to_owned())
        .collect()
}

#[test]
fn the_runtime_names_no_application_queue() {
    let root = root();
    let names = application_queue_names(&root);
    assert!(names.len() >= 6, "the scan found only {names:?}");
    assert!(names.iter().any(|n| n == "tracking.requests"));
    let mut found = Vec::new();
    for file in rust_files(&root.join("crates/runtime/src")) {
        let source = std::fs::read_to_string(&file).unwrap();
        for (n, line) in source.lines().enumerate() {
            for name in &names {
                if line.contains(name.as_str()) {
                    found.push(format!(
                        "{}:{}: {name}",
                        file.strip_prefix(&root).unwrap().display(),
                        n + 1
                    ));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "the runtime names the application's queues (they belong in crates/app/src/topology.rs):\n{}",
        found.join("\n")
    );
}
