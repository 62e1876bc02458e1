#!/usr/bin/env bash
# `make lint`'s dependency check (deny.toml): licences, duplicate versions, sources and RustSec advisories.
# cargo-deny is installed when missing (scripts/setup.sh does the same). The advisory database is refreshed when its
# git remote answers; when it does not (machines that reach only the package registries), the copy already in
# $CARGO_HOME/advisory-dbs is used and its date printed; with no copy at all, advisories are skipped, loudly.
set -euo pipefail
cd "$(dirname "$0")/.."
DENY_VERSION=0.20.2
if ! cargo deny --version 2>/dev/null | grep -q "$DENY_VERSION"; then
    echo "==> installing cargo-deny $DENY_VERSION"
    cargo install --locked --quiet "cargo-deny@$DENY_VERSION"
fi
# cargo-deny reads `cargo metadata` for every target in deny.toml: fetch what it needs from the registry first.
cargo fetch --locked --quiet
db_dir="${CARGO_HOME:-$HOME/.cargo}/advisory-dbs"
checks=(bans licenses sources advisories)
if timeout 120 cargo deny fetch db >/dev/null 2>&1; then
    :
elif ls -d "$db_dir"/advisory-db-*/.git >/dev/null 2>&1; then
    db=$(ls -d "$db_dir"/advisory-db-* | head -1)
    echo "==> advisory database not refreshed (remote unreachable); using the copy of $(git -C "$db" log -1 --format=%cs)"
else
    echo "==> WARNING: no advisory database and its remote is unreachable: advisories NOT checked" >&2
    checks=(bans licenses sources)
fi
cargo deny --offline check "${checks[@]}"
