# Every command a developer or CI needs. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help
CARGO ?= cargo
# Works on machines that trust local TCP connections and on fresh Debian ones (scripts/setup.sh sets this password).
export TEST_DATABASE_URL ?= postgres://postgres:postgres@127.0.0.1:5432/postgres
export TEST_AMQP_URL ?= amqp://guest:guest@127.0.0.1:5672

.PHONY: help setup build release test lint fmt demo demo-break-correios demo-fix-correios ci fuzz bench bench-normalizer bench-scheduler bench-publishers bench-fetcher bench-latency bench-pipeline chaos clean-test-resources

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-22s %s\n", $$1, $$2}'

setup: ## Install (Debian packages) and start PostgreSQL, RabbitMQ (management and prometheus plugins), maildev, Prometheus and Alertmanager when missing
	@bash scripts/setup.sh

build: ## Build every binary (debug)
	$(CARGO) build --workspace --bins

release: ## Build every binary (release) into target/release/
	$(CARGO) build --workspace --release --bins

test: setup build ## The whole test suite: unit, integration (real RabbitMQ and PostgreSQL) and end-to-end (real binaries, SMTP, HTTP)
	$(CARGO) test --workspace --no-fail-fast

lint: ## cargo fmt --check, clippy with warnings as errors, cargo deny (deny.toml: advisories, licences, duplicates, sources); the fuzz targets (outside the workspace) still compile
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	cd fuzz && $(CARGO) fmt --check
	$(CARGO) check --manifest-path fuzz/Cargo.toml --bins --target-dir $${CARGO_TARGET_DIR:-target}
	bash scripts/deny.sh

fmt: ## Format the code
	$(CARGO) fmt --all

demo: setup release ## Start everything and show a few parcels travel (Ctrl-C stops it)
	@bash scripts/demo.sh

demo-break-correios: ## While the demo runs: break its Correios simulator's answers (the CarrierBroken alert reaches maildev)
	@bash scripts/demo-correios.sh break

demo-fix-correios: ## While the demo runs: mend its Correios simulator's answers
	@bash scripts/demo-correios.sh fix

ci: lint test ## What CI runs

FUZZ_SECONDS ?= 60

fuzz: ## Run every cargo-fuzz target for FUZZ_SECONDS each (nightly; installs cargo-fuzz when missing); docs/FUZZING.md
	@FUZZ_SECONDS=$(FUZZ_SECONDS) bash scripts/fuzz.sh

BENCH := $${CARGO_TARGET_DIR:-target}/release/bench

bench: bench-fetcher bench-normalizer bench-scheduler bench-publishers bench-latency bench-pipeline ## Every benchmark (release build); docs/BENCHMARKS.md has the figures

bench-normalizer: setup release ## Normalizer throughput beside the bare RabbitMQ hop (SHIPMENTS=2000)
	TRACKING_BIN_PROFILE=release $(BENCH) normalizer $(or $(SHIPMENTS),2000)

bench-scheduler: setup release ## The scheduler's due-scan with 1,000,000 active shipments (ROWS=1000000)
	$(BENCH) scheduler $(or $(ROWS),1000000)

clean-test-resources: ## Drop test databases and vhosts that killed test runs left behind
	@bash scripts/clean-test-resources.sh

bench-publishers: setup release ## Time to drain CHANGES=1000 status changes to an SMTP server and to a webhook
	TRACKING_BIN_PROFILE=release $(BENCH) publishers $(or $(CHANGES),1000)

bench-fetcher: setup release ## Codes per second through the fetcher against the Correios simulator, batches of 50 and of 1 (CODES=2000)
	TRACKING_BIN_PROFILE=release $(BENCH) fetcher $(or $(CODES),2000)

bench-latency: setup release ## Carrier update to email accepted, p50/p90/p99 at RATE=200 updates/s for SECONDS=20
	TRACKING_BIN_PROFILE=release $(BENCH) latency $(or $(RATE),200) $(or $(SECONDS),20)

bench-pipeline: setup release ## The whole pipeline beside the null pipeline draining PARCELS=3000 parcels: parcels/s, CPU ms per parcel, memory
	TRACKING_BIN_PROFILE=release $(BENCH) pipeline $(or $(PARCELS),3000)

chaos: setup release ## Reliability under faults: PARCELS=10000 parcels while workers are killed -9, RabbitMQ stops 20 s and PostgreSQL 60 s (servers of its own; CLUSTER=3: a 3-node RabbitMQ cluster, random nodes stopped in turn); docs/RELIABILITY.md
	CLUSTER=$(or $(CLUSTER),1) bash scripts/chaos.sh $(or $(PARCELS),10000)
