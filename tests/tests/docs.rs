//! The docs checked against the repository, so that a claim that stops being true fails here (issue 22, "docs
//! drift"). Files are read only: no server is needed, and the whole file runs in well under a second.
//!
//! What is checked, and the rules (kept simple so that a failure is quick to fix):
//!
//! 1. **Files named exist.** In README.md and docs/*.md:
//!    - a Markdown link `[text](target)` that is not a URL or an anchor names a file or directory relative to the
//!      linking file's directory;
//!    - a word ending in `.md` (`docs/operations.md`) names a file relative to the repository's root or to the
//!      file's directory;
//!    - a path in backquotes that starts with a top-level directory of the repository (`crates/…`, `tests/…`,
//!      `deploy/…`, `docs/…`, `migrations/…`, `scripts/…`, `fuzz/…`) exists, unless it holds a placeholder
//!      (`<…>`, `{…}`, `*`, `…`) or a space.
//!
//!    In the comments (`//`, `///`, `//!`) of `crates/**/*.rs` and `tests/**/*.rs`, a word ending in `.md` names
//!    a file relative to the repository's root. Outputs are not checked: paths under a `target/` directory or
//!    under one the root `.gitignore` lists (`deploy/secrets/`), and the files [`GENERATED_MD`] lists.
//! 2. **Tests named exist.** In README.md and docs/*.md, within one paragraph (a run of lines up to a blank line, a
//!    list item, a table row or a heading), backquoted spans are read in order:
//!    - `path/file.rs::fn_name`: the file exists and declares `fn fn_name`;
//!    - `crates/…/file.rs` or `tests/…/file.rs`: the file exists, and becomes the paragraph's current file;
//!    - `fn_name` (snake case, at least four words, not shaped like a metric: see [`is_test_name`]) after a
//!      current file: that file declares `fn fn_name`;
//!    - `...suffix` or `…suffix` after a current file: that file declares a `fn` whose name ends with `suffix`;
//!    - `fn_name` in a paragraph with "Test:" or "Tests:" and no file before it: some Rust file under `crates/` or
//!      `tests/` declares it.
//! 3. **docs/settings.md's defaults are the code's.** For every row of its tables whose names the
//!    code reads with a literal default (`settings::secs("NAME", 1800)`, `settings::parse("NAME", 30.0f64)`,
//!    `settings::var_or("NAME", "…")`, `millis`, `millis_list`, `socket_addr`, tracking-api's `at_least_one` and
//!    `positive_millis`, a `("NAME", 5.0)` pair, or a `const` holding the literal), the row's default is the
//!    same value (a row naming several settings gives their defaults in the same order, separated by `, `; a
//!    parenthesis after a value, `14400 (4 h)`, is a comment). A row whose default the test cannot read from the
//!    code is listed in [`DEFAULTS_NOT_READ`] with the reason, and a default of `none` means the code has
//!    no literal default.
//! 4. **The secret settings docs/settings.md lists are the code's** (`SECRET_SETTINGS`, the settings that may come from
//!    `NAME_FILE`).
//! 5. **docs/architecture.md's crates table names every dependency**: each `tracking-x` in a crate's
//!    `[dependencies]` is named (`x`) in that crate's "knows about" cell.

#![allow(clippy::unwrap_used)]

use regex::Regex;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Every file under `dir` whose name ends with `ext`, recursively, sorted.
fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else if path.extension().is_some_and(|e| e == ext) {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// README.md and docs/*.md, as paths relative to the root.
fn markdown_docs(root: &Path) -> Vec<String> {
    let mut out = vec!["README.md".to_owned()];
    for f in files(&root.join("docs"), "md") {
        out.push(f.strip_prefix(root).unwrap().display().to_string());
    }
    out
}

// ---------------------------------------------------------------------------------------------------------------
// 1. Files named exist.

/// Markdown files that programs write, named bare in comments: not in the repository, and not meant to be.
const GENERATED_MD: [(&str, &str); 1] = [(
    "report.md",
    "tests/src/bin/chaos.rs writes it into each run's directory, target/chaos/<run>/",
)];

/// The top-level directories of the repository: a backquoted path starting with one of them is checked.
const TOP_DIRS: [&str; 7] = [
    "crates/",
    "tests/",
    "deploy/",
    "docs/",
    "migrations/",
    "scripts/",
    "fuzz/",
];

static URL: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"[a-z]+://[^\s)>`]*").unwrap());
static LINK: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\]\(([^)\s]+)\)").unwrap());
static MD_WORD: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"[A-Za-z0-9_./<>{}*…-]*[A-Za-z0-9_]\.md\b").unwrap());
static CODE_SPAN: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"`([^`]+)`").unwrap());

fn has_placeholder(path: &str) -> bool {
    path.contains(['<', '>', '{', '}', '*', '…', ' ']) || path.contains("...")
}

/// Whether `path` (from the root) is an output rather than a file of the repository: under a `target/` directory
/// (cargo's, the chaos and test reports), or under a directory the root `.gitignore` lists (`/deploy/secrets/`,
/// which `scripts/compose-secrets.sh` fills).
fn is_output(root: &Path, path: &str) -> bool {
    let ignored = std::fs::read_to_string(root.join(".gitignore")).unwrap_or_default();
    path.starts_with("target/")
        || path.contains("/target/")
        || ignored
            .lines()
            .filter_map(|l| l.trim().strip_prefix('/'))
            .map(|l| l.trim_end_matches('/'))
            .filter(|l| !l.is_empty())
            .any(|i| path == i || path.starts_with(&format!("{i}/")))
}

/// What is wrong with the file references of one line of a Markdown document at `doc` (relative to the root):
/// one message per missing file.
fn missing_in_markdown(root: &Path, doc: &str, line: &str) -> Vec<String> {
    let dir = Path::new(doc).parent().unwrap_or(Path::new(""));
    let mut out = Vec::new();
    for c in LINK.captures_iter(line) {
        let target = &c[1];
        if target.starts_with('#') || target.contains("://") || target.starts_with("mailto:") {
            continue;
        }
        let path = target.split('#').next().unwrap();
        if !root.join(dir).join(path).exists() {
            out.push(format!(
                "the link ({target}) points to {}, which is not in the repository",
                dir.join(path).display()
            ));
        }
    }
    // Links are checked above, URLs are not files.
    let text = LINK.replace_all(line, " ");
    let text = URL.replace_all(&text, " ");
    for m in MD_WORD.find_iter(&text) {
        let word = m.as_str().strip_prefix("./").unwrap_or(m.as_str());
        if has_placeholder(word) || is_output(root, word) {
            continue;
        }
        if !root.join(word).exists() && !root.join(dir).join(word).exists() {
            let looked = if dir.as_os_str().is_empty() {
                word.to_owned()
            } else {
                format!("{word} and {}", dir.join(word).display())
            };
            out.push(format!(
                "`{word}` names a Markdown file that is not in the repository (looked for {looked}); link to a \
                 file that exists or say in words where it lives"
            ));
        }
    }
    out
}

/// What is wrong with the repository paths one paragraph names in backquotes: `(line, message)` per missing path.
fn missing_paths(root: &Path, first_line: usize, text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for c in CODE_SPAN.captures_iter(text) {
        let span = c[1].trim();
        let path = span.split("::").next().unwrap();
        if !TOP_DIRS.iter().any(|d| path.starts_with(d))
            || has_placeholder(path)
            || path.contains('\n')
            || is_output(root, path)
            || path.ends_with(".md")
        {
            continue;
        }
        if !root.join(path).exists() {
            let at = first_line + text[..c.get(0).unwrap().start()].matches('\n').count();
            out.push((at, format!("`{path}` is not in the repository")));
        }
    }
    out
}

/// What is wrong with the `.md` files named in the comment of one line of Rust source.
fn missing_in_rust_comment(root: &Path, line: &str) -> Vec<String> {
    let Some(at) = line.find("//") else {
        return Vec::new();
    };
    // Only a line that is a comment: `"//"` inside a string literal of code is not one.
    if !line[..at].trim().is_empty() {
        return Vec::new();
    }
    let text = URL.replace_all(&line[at..], " ");
    let mut out = Vec::new();
    for m in MD_WORD.find_iter(&text) {
        let word = m.as_str().trim_start_matches(['.', '/']);
        if has_placeholder(word)
            || is_output(root, word)
            || GENERATED_MD.iter().any(|(g, _)| *g == word)
        {
            continue;
        }
        if !root.join(word).exists() {
            out.push(format!(
                "`{word}` names a Markdown file that is not in the repository (paths in comments are from the \
                 repository's root); name a file that exists or say in words where it lives"
            ));
        }
    }
    out
}

#[test]
fn every_file_the_docs_and_comments_name_exists() {
    let root = root();
    let mut found = Vec::new();
    for doc in markdown_docs(&root) {
        let text = read(&root.join(&doc));
        for (n, line) in text.lines().enumerate() {
            for problem in missing_in_markdown(&root, &doc, line) {
                found.push(format!("{doc}:{}: {problem}", n + 1));
            }
        }
        for (line, paragraph) in paragraphs(&text) {
            for (at, problem) in missing_paths(&root, line, &paragraph) {
                found.push(format!("{doc}:{at}: {problem}"));
            }
        }
    }
    let mut sources = files(&root.join("crates"), "rs");
    sources.extend(files(&root.join("tests"), "rs"));
    for file in sources {
        let name = file.strip_prefix(&root).unwrap().display().to_string();
        for (n, line) in read(&file).lines().enumerate() {
            for problem in missing_in_rust_comment(&root, line) {
                found.push(format!("{name}:{}: {problem}", n + 1));
            }
        }
    }
    assert!(
        found.is_empty(),
        "files named in the docs or in comments that do not exist:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_file_detector_sees_links_words_and_paths() {
    let root = root();
    let missing = |doc: &str, line: &str| missing_in_markdown(&root, doc, line).len();
    assert_eq!(
        missing("README.md", "see [ops](docs/operations.md#alerts)"),
        0
    );
    assert_eq!(missing("README.md", "see [ops](docs/nope.md)"), 1);
    assert_eq!(missing("docs/orders.md", "see [page](tracking-page.md)"), 0);
    assert_eq!(
        missing("docs/orders.md", "see [page](docs/tracking-page.md)"),
        1
    );
    assert_eq!(missing("README.md", "contract.md \"tracking-api\""), 1);
    assert_eq!(missing("docs/architecture.md", "(operations.md, \"X\")"), 0);
    assert_eq!(missing("README.md", "in `target/chaos/<run>/report.md`"), 0);
    assert_eq!(missing("README.md", "https://example.com/a/README.md"), 0);
    let paths = |text: &str| missing_paths(&root, 1, text).len();
    assert_eq!(
        paths("`tests/tests/nope.rs` and `crates/x/{carrier}.toml`"),
        1
    );
    assert_eq!(
        paths("`deploy/secrets/api-token` and `fuzz/target/x`: outputs"),
        0
    );
    assert_eq!(
        paths("`a\nb` `tests/tests/docs.rs::x`\n`tests/tests/nope.rs`"),
        1
    );
    assert_eq!(
        missing_in_rust_comment(&root, "//! see shared/contract.md").len(),
        1
    );
    assert_eq!(
        missing_in_rust_comment(&root, "/// (docs/privacy.md)").len(),
        0
    );
    assert_eq!(
        missing_in_rust_comment(&root, "let x = \"a.md\"; // no").len(),
        0
    );
}

// ---------------------------------------------------------------------------------------------------------------
// 2. Tests named exist.

static FN: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\bfn\s+([A-Za-z_][A-Za-z0-9_]*)").unwrap());
static SNAKE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-z][a-z0-9]*(_[a-z0-9]+){3,}$").unwrap());
static ELIDED: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^(?:\.\.\.|…)([a-z0-9_]+)$").unwrap());

/// Whether a backquoted identifier is read as a test's name: snake case, four words or more, and not shaped like a
/// metric (Prometheus suffixes, RabbitMQ's metrics).
fn is_test_name(span: &str) -> bool {
    const METRIC_SUFFIXES: [&str; 7] = [
        "_total", "_seconds", "_bytes", "_sum", "_count", "_bucket", "_info",
    ];
    SNAKE.is_match(span)
        && !METRIC_SUFFIXES.iter().any(|s| span.ends_with(s))
        && !span.starts_with("rabbitmq_")
}

/// Splits a Markdown document into paragraphs: `(first line number, text)`. A paragraph ends at a blank line and
/// before a list item, a table row or a heading; fenced code blocks are left out.
fn paragraphs(doc: &str) -> Vec<(usize, String)> {
    let starts_unit = |l: &str| {
        let t = l.trim_start();
        t.starts_with("- ")
            || t.starts_with("* ")
            || t.starts_with('|')
            || t.starts_with('#')
            || t.split_once(". ")
                .is_some_and(|(n, _)| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
    };
    let mut out: Vec<(usize, String)> = Vec::new();
    let mut open = false;
    let mut fenced = false;
    for (n, line) in doc.lines().enumerate() {
        // A fenced code block is no paragraph: its backquotes are not spans.
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            open = false;
            continue;
        }
        if fenced || line.trim().is_empty() {
            open = false;
            continue;
        }
        if open && !starts_unit(line) {
            let last = out.last_mut().unwrap();
            last.1.push('\n');
            last.1.push_str(line);
        } else {
            out.push((n + 1, line.to_owned()));
        }
        // A table row and a heading are units of their own.
        open = !line.trim_start().starts_with(['|', '#']);
    }
    out
}

/// The `fn` names each Rust file declares, read once.
#[derive(Default)]
struct Functions(HashMap<String, Option<BTreeSet<String>>>);

impl Functions {
    /// `None` when the file does not exist.
    fn of(&mut self, root: &Path, file: &str) -> Option<&BTreeSet<String>> {
        self.0
            .entry(file.to_owned())
            .or_insert_with(|| {
                let source = std::fs::read_to_string(root.join(file)).ok()?;
                Some(FN.captures_iter(&source).map(|c| c[1].to_owned()).collect())
            })
            .as_ref()
    }

    /// Every `fn` declared in any Rust file under `crates/` and `tests/`.
    fn anywhere(&mut self, root: &Path) -> BTreeSet<String> {
        let mut all = BTreeSet::new();
        let mut sources = files(&root.join("crates"), "rs");
        sources.extend(files(&root.join("tests"), "rs"));
        for file in sources {
            let name = file.strip_prefix(root).unwrap().display().to_string();
            all.extend(self.of(root, &name).into_iter().flatten().cloned());
        }
        all
    }
}

/// What is wrong with the tests one paragraph names: one message per test that is not there, with the line.
fn missing_tests(
    root: &Path,
    fns: &mut Functions,
    first_line: usize,
    text: &str,
) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    // Spans are read over the whole paragraph: one may run over a line break.
    for c in CODE_SPAN.captures_iter(text) {
        let at = first_line + text[..c.get(0).unwrap().start()].matches('\n').count();
        let span = c[1].trim();
        if let Some((file, name)) = span.split_once("::")
            && file.ends_with(".rs")
        {
            match fns.of(root, file) {
                None => out.push((at, format!("`{span}`: {file} is not in the repository"))),
                Some(names) if !names.contains(name) => out.push((
                    at,
                    format!("`{span}`: {file} declares no `fn {name}` (renamed or removed?)"),
                )),
                Some(_) => {}
            }
            current = fns.of(root, file).map(|_| file.to_owned());
        } else if span.ends_with(".rs")
            && (span.starts_with("crates/") || span.starts_with("tests/"))
        {
            // Its existence is the file check's business; an unknown file sets no current file.
            current = fns.of(root, span).map(|_| span.to_owned());
        } else if current.is_none()
            && is_test_name(span)
            && (text.contains("Test:") || text.contains("Tests:"))
        {
            // A "Test:" line naming a test before any file: it is declared somewhere.
            if !fns.anywhere(root).contains(span) {
                out.push((
                    at,
                    format!(
                        "`{span}`: no Rust file under crates/ or tests/ declares `fn {span}` (renamed or removed?)"
                    ),
                ));
            }
        } else if let Some(file) = &current {
            let names = fns.of(root, file).unwrap();
            if let Some(e) = ELIDED.captures(span) {
                let suffix = &e[1];
                if !names.iter().any(|n| n.ends_with(suffix)) {
                    out.push((
                        at,
                        format!(
                            "`{span}`: {file} declares no `fn` ending in `{suffix}` (renamed or removed?)"
                        ),
                    ));
                }
            } else if is_test_name(span) && !names.contains(span) {
                out.push((
                    at,
                    format!(
                        "`{span}`: {file} (the file this paragraph named last) declares no `fn {span}` \
                         (renamed or removed? or name its file before it)"
                    ),
                ));
            }
        }
    }
    out
}

#[test]
fn every_test_the_docs_name_exists() {
    let root = root();
    let mut fns = Functions::default();
    let mut found = Vec::new();
    let mut named = 0;
    for doc in markdown_docs(&root) {
        for (line, text) in paragraphs(&read(&root.join(&doc))) {
            named += CODE_SPAN
                .captures_iter(&text)
                .filter(|c| c[1].contains(".rs::") || is_test_name(&c[1]))
                .count();
            for (at, problem) in missing_tests(&root, &mut fns, line, &text) {
                found.push(format!("{doc}:{at}: {problem}"));
            }
        }
    }
    assert!(
        named >= 10,
        "the scan found only {named} test names in the docs"
    );
    assert!(
        found.is_empty(),
        "tests named in the docs that do not exist:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_test_detector_reads_the_formats_the_docs_use() {
    let root = root();
    let mut fns = Functions::default();
    let mut check = |text: &str| missing_tests(&root, &mut fns, 1, text).len();
    // A span running over a line break does not shift the spans after it.
    assert_eq!(
        check("`a\nb` (`tests/tests/docs.rs`,\n`no_such_test_here_at_all`)"),
        1
    );
    // The file itself is a fine test file to name.
    assert_eq!(
        check("Test: `tests/tests/docs.rs::every_test_the_docs_name_exists`."),
        0
    );
    assert_eq!(
        check("Test: `tests/tests/docs.rs::every_test_the_docs_name_is_gone`."),
        1
    );
    assert_eq!(check("Tests: `tests/tests/nope.rs::a_b_c_d`."), 1);
    assert_eq!(
        check(
            "(`tests/tests/docs.rs`,\n`every_test_the_docs_name_exists`, `no_such_test_here_at_all`)"
        ),
        1
    );
    assert_eq!(
        check(
            "`tests/tests/docs.rs::every_file_the_docs_and_comments_name_exists` and `...the_docs_name_exists`"
        ),
        0
    );
    assert_eq!(
        check(
            "`tests/tests/docs.rs::every_file_the_docs_and_comments_name_exists` and `...name_vanished`"
        ),
        1
    );
    // Metrics and names with no file before them are not read as tests.
    assert_eq!(
        check(
            "`tests/tests/docs.rs`: `carrier_stale_codes_total`, `rabbitmq_queue_messages_ready`"
        ),
        0
    );
    assert_eq!(check("`no_file_named_before_this`"), 0);
    assert_eq!(check("Test: `no_file_named_before_this`."), 1);
    assert_eq!(check("Tests: `every_test_the_docs_name_exists`."), 0);
    let p = paragraphs("a\nb\n\n- c\n  d\n| e |\n| f |\n## g\nh\n```sh\nx `y\n```\nz\n");
    let lines: Vec<_> = p.iter().map(|(n, _)| *n).collect();
    assert_eq!(lines, [1, 4, 6, 7, 8, 9, 13]);
}

// ---------------------------------------------------------------------------------------------------------------
// 3. docs/settings.md's defaults against the code's.

/// Settings whose default the test cannot read from the code as a literal, and why.
const DEFAULTS_NOT_READ: [(&str, &str); 6] = [
    (
        "USER",
        "the operating system's login name, read by trackctl for the audit row (not a setting of ours)",
    ),
    (
        "DATABASE_MAX_CONNECTIONS",
        "each binary passes its own default to tracking_store::env::db_settings",
    ),
    (
        "METRICS_ADDR",
        "each binary passes its own port to boot::metrics_addr (the Binaries table of docs/operating.md)",
    ),
    (
        "LOG_FORMAT",
        "read with settings::var and a match: anything but `json` is text",
    ),
    (
        "EMAIL_STATUSES",
        "the default is Status::notifies_customer_by_default, a match",
    ),
    (
        "EVENT_TABLES_DIR",
        "without it the tables built into the binary (include_str!) are used",
    ),
];

/// A literal default, as the code writes it, made comparable: digits without `_` or type suffix (products
/// evaluated), a list as `a,b,c`, a string as itself.
fn normalise_code_literal(literal: &str) -> Option<String> {
    let literal = literal.trim().trim_start_matches('&');
    if let Some(s) = literal.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        return Some(s.to_owned());
    }
    if literal == "true" || literal == "false" {
        return Some(literal.to_owned());
    }
    if let Some(list) = literal.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
        let items: Option<Vec<String>> = list
            .split(',')
            .filter(|i| !i.trim().is_empty())
            .map(normalise_code_literal)
            .collect();
        return items.map(|i| i.join(","));
    }
    let mut product = 1f64;
    for factor in literal.split('*') {
        let digits = factor.trim().replace('_', "");
        product *= strip_type_suffix(&digits).parse::<f64>().ok()?;
    }
    Some(format_number(product))
}

fn strip_type_suffix(n: &str) -> &str {
    for suffix in [
        "usize", "u64", "u32", "u16", "u8", "i64", "i32", "f64", "f32",
    ] {
        if let Some(s) = n.strip_suffix(suffix) {
            return s;
        }
    }
    n
}

fn format_number(n: f64) -> String {
    if n.fract() == 0.0 {
        format!("{}", n as i64)
    } else {
        format!("{n}")
    }
}

/// A docs/settings.md default, made comparable: backquotes and a trailing parenthesis dropped, numbers normalised.
fn normalise_readme_default(cell: &str) -> String {
    let cell = cell.trim();
    let cell = match cell.find(" (") {
        Some(at) => &cell[..at],
        None => cell,
    };
    let cell = cell.trim().trim_matches('`');
    match cell.parse::<f64>() {
        Ok(n) => format_number(n),
        Err(_) => cell.to_owned(),
    }
}

static READ_WITH_DEFAULT: LazyLock<Regex> = LazyLock::new(|| {
    let literal = r#"(?:"[^"]*"|true|false|\[[0-9_,\s]*\]|[0-9][0-9_.]*[a-z0-9]*(?:\s*\*\s*[0-9][0-9_]*)*|&?(?:[a-z_]+::)*[A-Z][A-Z0-9_]*)"#;
    Regex::new(&format!(
        r#"\b(?:var_or|parse|secs|millis|millis_list|socket_addr|at_least_one|positive_millis)\(\s*"([A-Z][A-Z0-9_]*)"\s*,\s*({literal})\s*,?\s*\)|\(\s*"([A-Z][A-Z0-9_]*)"\s*,\s*([0-9][0-9_.]*)\s*\)"#
    ))
    .unwrap()
});
static CONST: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r#"\bconst\s+([A-Z][A-Z0-9_]*)\s*:\s*[^=]+=\s*([^;]+);"#).unwrap());

/// Every literal default the shipped crates give a setting they read: name → (the normalised default, where).
/// A default naming a `const` (`NAME`, `crate::NAME`, `tracking_store::NAME`, or a `NAME` imported with `use
/// tracking_x::…`) is resolved when that crate's const holds a literal; one that cannot be resolved is left out.
fn defaults_in_code(root: &Path) -> BTreeMap<String, Vec<(String, String)>> {
    // (crate directory, const name) → its value.
    let mut consts: HashMap<(String, String), String> = HashMap::new();
    // (setting, literal, the reading crate, the reading file's source, where)
    let mut reads = Vec::new();
    for krate in std::fs::read_dir(root.join("crates")).unwrap() {
        let krate = krate.unwrap().path();
        // The simulators are test and demo stand-ins: their variables are not settings.
        if krate.ends_with("sim") {
            continue;
        }
        let crate_dir = krate.file_name().unwrap().to_string_lossy().into_owned();
        for file in files(&krate.join("src"), "rs") {
            let source = read(&file);
            let name = file.strip_prefix(root).unwrap().display().to_string();
            for c in CONST.captures_iter(&source) {
                consts.insert((crate_dir.clone(), c[1].to_owned()), c[2].trim().to_owned());
            }
            for c in READ_WITH_DEFAULT.captures_iter(&source) {
                let (setting, literal) = match (c.get(1), c.get(2), c.get(3), c.get(4)) {
                    (Some(s), Some(l), _, _) | (_, _, Some(s), Some(l)) => (s.as_str(), l.as_str()),
                    _ => continue,
                };
                let line = source[..c.get(0).unwrap().start()].lines().count().max(1);
                let at = format!("{name}:{line}");
                // A const is resolved here, where the reading file's imports are known.
                let literal = match literal.trim_start_matches('&').rsplit_once("::") {
                    Some((path, konst)) => {
                        let owner = match path {
                            "crate" => crate_dir.clone(),
                            other => other.trim_start_matches("tracking_").to_owned(),
                        };
                        Err((owner, konst.to_owned()))
                    }
                    None if literal
                        .trim_start_matches('&')
                        .starts_with(|c: char| c.is_ascii_uppercase()) =>
                    {
                        let konst = literal.trim_start_matches('&');
                        let import =
                            Regex::new(&format!(r"use tracking_([a-z_]+)::[^;]*\b{konst}\b"))
                                .unwrap();
                        let owner = import
                            .captures(&source)
                            .map_or_else(|| crate_dir.clone(), |c| c[1].to_owned());
                        Err((owner, konst.to_owned()))
                    }
                    None => Ok(literal.to_owned()),
                };
                reads.push((setting.to_owned(), literal, at));
            }
        }
    }
    let mut out: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for (setting, literal, at) in reads {
        let literal = match literal {
            Ok(l) => l,
            Err(key) => match consts.get(&key) {
                Some(value) => value.clone(),
                None => continue,
            },
        };
        if let Some(value) = normalise_code_literal(&literal) {
            out.entry(setting).or_default().push((value, at));
        }
    }
    out
}

/// docs/settings.md's rows: `(line, names, default cell)`.
fn readme_setting_rows(readme: &str) -> Vec<(usize, Vec<String>, String)> {
    let start = readme
        .find("# Settings")
        .expect("docs/settings.md has a \"# Settings\" heading");
    let first_line = readme[..start].matches('\n').count() + 1;
    let section = &readme[start..];
    let end = section[3..].find("\n## ").map_or(section.len(), |e| e + 3);
    let name = Regex::new(r"`([A-Z][A-Z0-9_]*)`").unwrap();
    let mut rows = Vec::new();
    for (n, line) in section[..end].lines().enumerate() {
        let Some(row) = line.strip_prefix('|') else {
            continue;
        };
        let cells: Vec<&str> = row.split('|').collect();
        if cells.len() < 3 {
            continue;
        }
        let names: Vec<String> = name
            .captures_iter(cells[0])
            .map(|c| c[1].to_owned())
            .collect();
        if names.is_empty() {
            continue;
        }
        rows.push((first_line + n, names, cells[1].trim().to_owned()));
    }
    rows
}

/// The disagreements between docs/settings.md's rows and the code's defaults, one message each.
fn default_disagreements(
    rows: &[(usize, Vec<String>, String)],
    code: &BTreeMap<String, Vec<(String, String)>>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (line, names, cell) in rows {
        // One value for several names is the default of each (`none`).
        let documented: Vec<&str> = match cell.split(", ").collect::<Vec<_>>() {
            parts if names.len() == 1 || parts.len() == 1 => vec![cell.as_str(); names.len()],
            parts => parts,
        };
        for (i, name) in names.iter().enumerate() {
            let in_code = code.get(name);
            let not_read = DEFAULTS_NOT_READ.iter().any(|(n, _)| n == name);
            if names.len() > 1 && documented.len() != names.len() && in_code.is_some() {
                out.push(format!(
                    "docs/settings.md:{line}: the row names {} settings but its default cell `{cell}` has {} values \
                     separated by \", \": give one per setting, in the same order",
                    names.len(),
                    documented.len()
                ));
                break;
            }
            let readme = normalise_readme_default(documented.get(i).copied().unwrap_or(""));
            match in_code {
                Some(defaults) => {
                    for (value, at) in defaults {
                        if *value != readme {
                            out.push(format!(
                                "docs/settings.md:{line}: `{name}` defaults to `{value}` in the code ({at}) but to \
                                 `{readme}` in docs/settings.md"
                            ));
                        }
                    }
                }
                None if readme == "none" || not_read => {}
                None => out.push(format!(
                    "docs/settings.md:{line}: `{name}` has the default `{readme}` in docs/settings.md but the test finds no \
                     literal default for it in the code: read it with a literal default \
                     (settings::secs(\"{name}\", 60)), or add it to DEFAULTS_NOT_READ in tests/tests/docs.rs \
                     with the reason"
                )),
            }
        }
    }
    out
}

#[test]
fn the_readme_setting_defaults_are_the_codes() {
    let root = root();
    let code = defaults_in_code(&root);
    let rows = readme_setting_rows(&read(&root.join("docs/settings.md")));
    assert!(
        code.len() > 50 && rows.len() > 50,
        "the scans found too little: {} defaults in the code, {} rows in docs/settings.md",
        code.len(),
        rows.len()
    );
    let mut found = default_disagreements(&rows, &code);
    for (name, _) in DEFAULTS_NOT_READ {
        if !rows
            .iter()
            .any(|(_, names, _)| names.iter().any(|n| n == name))
        {
            found.push(format!(
                "DEFAULTS_NOT_READ in tests/tests/docs.rs names `{name}`, which no docs/settings.md row names: \
                 remove it"
            ));
        } else if code.contains_key(name) {
            found.push(format!(
                "DEFAULTS_NOT_READ in tests/tests/docs.rs names `{name}`, whose default the test now reads from \
                 the code: remove it"
            ));
        }
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn the_default_detector_reads_the_usual_shapes() {
    assert_eq!(normalise_code_literal("4 * 3600").as_deref(), Some("14400"));
    assert_eq!(normalise_code_literal("172_800").as_deref(), Some("172800"));
    assert_eq!(normalise_code_literal("30.0f64").as_deref(), Some("30"));
    assert_eq!(normalise_code_literal("32u16").as_deref(), Some("32"));
    assert_eq!(normalise_code_literal("\"info\"").as_deref(), Some("info"));
    assert_eq!(
        normalise_code_literal("[1_000, 10_000]").as_deref(),
        Some("1000,10000")
    );
    assert_eq!(normalise_readme_default("14400 (4 h)"), "14400");
    assert_eq!(
        normalise_readme_default("`127.0.0.1:8080`"),
        "127.0.0.1:8080"
    );
    let source = r#"settings::secs("A_SECS", 4 * 3600)?; parse("B", 5usize)?; rate(("C_RATE", 5.0), ("C_BURST", 10.0))"#;
    let found: Vec<String> = READ_WITH_DEFAULT
        .captures_iter(source)
        .map(|c| {
            format!(
                "{}={}",
                c.get(1).or(c.get(3)).unwrap().as_str(),
                c.get(2).or(c.get(4)).unwrap().as_str()
            )
        })
        .collect();
    assert_eq!(
        found,
        ["A_SECS=4 * 3600", "B=5usize", "C_RATE=5.0", "C_BURST=10.0"]
    );
    // A disagreement is reported with docs/settings.md's line, the code's place and both values.
    let rows = vec![(
        7,
        vec!["A_SECS".to_owned(), "B".to_owned()],
        "1800, 5".to_owned(),
    )];
    let mut code = BTreeMap::new();
    code.insert(
        "A_SECS".to_owned(),
        vec![("14400".to_owned(), "x.rs:3".to_owned())],
    );
    code.insert("B".to_owned(), vec![("5".to_owned(), "x.rs:4".to_owned())]);
    assert_eq!(
        default_disagreements(&rows, &code),
        [
            "docs/settings.md:7: `A_SECS` defaults to `14400` in the code (x.rs:3) but to `1800` in docs/settings.md"
        ]
    );
}

// ---------------------------------------------------------------------------------------------------------------
// 4. The secret settings.

#[test]
fn the_readme_lists_the_secret_settings_the_code_reads_from_files() {
    let root = root();
    let source = read(&root.join("crates/app/src/lib.rs"));
    let list = Regex::new(r"SECRET_SETTINGS: \[&str; \d+\] = \[([^\]]*)\]").unwrap();
    let quoted = Regex::new(r#""([A-Z][A-Z0-9_]*)""#).unwrap();
    let code: BTreeSet<String> = quoted
        .captures_iter(
            &list
                .captures(&source)
                .expect("SECRET_SETTINGS in crates/app/src/lib.rs")[1],
        )
        .map(|c| c[1].to_owned())
        .collect();
    let readme = read(&root.join("docs/settings.md"));
    let sentence_at = readme.find("Every secret setting (").expect(
        "docs/settings.md's sentence \"Every secret setting (…) can also be read from the file…\"",
    );
    let sentence = &readme[sentence_at..];
    let sentence = &sentence[..sentence.find(')').unwrap()];
    let name = Regex::new(r"`([A-Z][A-Z0-9_]*)`").unwrap();
    let documented: BTreeSet<String> = name
        .captures_iter(sentence)
        .map(|c| c[1].to_owned())
        .collect();
    let line = readme[..sentence_at].lines().count() + 1;
    assert!(
        code.len() >= 5,
        "the scan found only {code:?} in crates/app/src/lib.rs"
    );
    let missing: Vec<_> = code.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&code).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "docs/settings.md:{line}: \"Every secret setting (…)\" must list SECRET_SETTINGS of \
         crates/app/src/lib.rs (the settings that may come from NAME_FILE): missing {missing:?}, not \
         secret {extra:?}"
    );
}

// ---------------------------------------------------------------------------------------------------------------
// 5. The crates table of docs/architecture.md.

/// Each crate's `tracking-*` dependencies (not dev-dependencies), by crate name, from `crates/*/Cargo.toml`.
fn crate_dependencies(root: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let name = Regex::new(r#"(?m)^name\s*=\s*"([a-z-]+)""#).unwrap();
    let dep = Regex::new(r"(?m)^(tracking-[a-z-]+)\s*(?:\.workspace|=)").unwrap();
    let mut out = BTreeMap::new();
    for krate in std::fs::read_dir(root.join("crates")).unwrap() {
        let Ok(manifest) = std::fs::read_to_string(krate.unwrap().path().join("Cargo.toml")) else {
            continue;
        };
        let Some(krate) = name.captures(&manifest) else {
            continue;
        };
        let deps = manifest
            .split_once("\n[dependencies]")
            .map_or("", |(_, rest)| rest.split("\n[").next().unwrap_or(""));
        out.insert(
            krate[1].to_owned(),
            dep.captures_iter(deps).map(|c| c[1].to_owned()).collect(),
        );
    }
    out
}

/// What the "knows about" cells of the crates table miss: every `tracking-x` dependency of a crate is named in
/// its cell as `x` (`domain`, `runtime`, ...), unless the cell says "all of the above" or "everything".
fn crates_table_problems(
    architecture: &str,
    deps: &BTreeMap<String, BTreeSet<String>>,
) -> Vec<String> {
    let row = Regex::new(r"^\| `(tracking-[a-z-]+)`[^|]*\|[^|]*\|([^|]*)\|").unwrap();
    let mut out = Vec::new();
    for (n, line) in architecture.lines().enumerate() {
        let Some(c) = row.captures(line) else {
            continue;
        };
        let (krate, knows) = (&c[1], c[2].to_lowercase());
        if knows.contains("all of the above") || knows.contains("everything") {
            continue;
        }
        for dep in deps.get(krate).into_iter().flatten() {
            let word = dep.trim_start_matches("tracking-");
            if !Regex::new(&format!(r"\b{word}\b"))
                .unwrap()
                .is_match(&knows)
            {
                out.push(format!(
                    "docs/architecture.md:{}: `{krate}` depends on `{dep}` (crates' Cargo.toml), but its \
                     \"knows about\" cell does not name `{word}`",
                    n + 1
                ));
            }
        }
    }
    out
}

#[test]
fn the_crates_table_names_every_dependency() {
    let root = root();
    let deps = crate_dependencies(&root);
    assert!(
        deps.len() >= 8 && deps.values().any(|d| d.len() >= 3),
        "the scan found too little: {deps:?}"
    );
    let found = crates_table_problems(&read(&root.join("docs/architecture.md")), &deps);
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn the_crates_table_check_sees_a_missing_dependency() {
    let mut deps = BTreeMap::new();
    deps.insert(
        "tracking-x".to_owned(),
        BTreeSet::from(["tracking-domain".to_owned(), "tracking-carriers".to_owned()]),
    );
    let table = "| crate | concern | knows about |\n| `tracking-x` | things | domain types |\n";
    assert_eq!(
        crates_table_problems(table, &deps),
        [
            "docs/architecture.md:2: `tracking-x` depends on `tracking-carriers` (crates' Cargo.toml), but its \
          \"knows about\" cell does not name `carriers`"
        ]
    );
    let table = "| `tracking-x` | things | domain types, carriers (redaction) |\n";
    assert!(crates_table_problems(table, &deps).is_empty());
}
