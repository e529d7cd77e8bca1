# NexusPipe tasks. `make run` and `make test` are the README's two commands.

CARGO ?= cargo
PLUGINS := enrich-geo funnel alerts
WASM_TARGET := wasm32-wasip2
# Plugins get their own target dir so building them never waits on (or
# invalidates) the host's build.
PLUGIN_TARGET_DIR := target/wasm
PLUGIN_OUT := target/plugins

.PHONY: all plugins wasm-target toolchains servers browser readers tracker screenshot examples run test bench bench-load bench-swap bench-sinks bench-kafka bench-query bench-flink bench-overload soak fuzz lint fmt clean

# rust-toolchain.toml lists the target; older rustups do not add it by themselves.
wasm-target:
	@rustup target list --installed 2>/dev/null | grep -qx $(WASM_TARGET) || rustup target add $(WASM_TARGET)

all: plugins
	$(CARGO) build --release -p nexuspipe

## Build every bundled plugin to target/plugins/<crate>.wasm
plugins: wasm-target
	$(CARGO) build --profile plugin --target $(WASM_TARGET) --target-dir $(PLUGIN_TARGET_DIR) $(addprefix -p ,$(PLUGINS))
	@mkdir -p $(PLUGIN_OUT)
	@for p in $(PLUGINS); do \
	  cp $(PLUGIN_TARGET_DIR)/$(WASM_TARGET)/plugin/$$(echo $$p | tr - _).wasm $(PLUGIN_OUT)/$$p.wasm; \
	done
	@ls -l $(PLUGIN_OUT)/*.wasm

## Install the Python, JavaScript and C plugin toolchains (skips what is there)
toolchains:
	.ci/install-plugin-toolchains.sh

## Install Debian's Chromium and playwright-core for the dashboard's browser tests
browser:
	.ci/install-browser.sh

## Rebuild host/tracker/tracker.min.js (GET /tracker.js) from host/tracker/src with esbuild
tracker:
	host/tracker/build.sh

## Screenshot of the dashboard for the README (docs/dashboard.png), taken by its browser test
screenshot: plugins browser
	$(CARGO) test -p nexuspipe --test all dashboard::the_dashboard_shows
	cp target/screenshots/dashboard-desktop.png docs/dashboard.png

## Install InfluxDB 1.x and VictoriaMetrics (Debian packages) for the sink tests
servers:
	.ci/install-servers.sh

## pyarrow and DuckDB in target/venv-readers: the archive's tests read it with them
readers:
	.ci/install-readers.sh

## Build the example plugins (Python, JavaScript, C, and their Rust twins) to target/examples/
examples: toolchains wasm-target
	examples/plugins/build.sh

## Run NexusPipe with the embedded default pipeline (HTTP on 127.0.0.1:8000)
run: plugins
	$(CARGO) run --release -p nexuspipe -- run

## The whole test suite (tests build the Wasm artifacts they need, in every
## example language, and start the real servers the sinks write to: the
## toolchains and servers are installed first if missing)
test: plugins toolchains servers browser readers
	$(CARGO) test --workspace --all-targets
	$(CARGO) test --workspace --doc

bench: plugins
	$(CARGO) bench -p nexuspipe

## Load benchmark: nexuspipe gen against nexuspipe run (release, default pipeline)
bench-load: plugins
	$(CARGO) build --release -p nexuspipe
	python3 host/benches/load.py

## Swap benchmark: pause and upload-to-active of plugin uploads under load
bench-swap: plugins
	$(CARGO) build --release -p nexuspipe
	python3 host/benches/swap.py

## Sink benchmark: points/s into InfluxDB 1.x and VictoriaMetrics, webhook alert latency
bench-sinks: servers
	$(CARGO) bench -p nexuspipe --bench sinks

## Overload: twice the saturation rate for 60 s (429s with Retry-After, RSS, p99 of accepted requests)
bench-overload: plugins
	$(CARGO) build --release -p nexuspipe
	python3 host/benches/overload.py

## Soak: half the saturation rate for SOAK_DURATION (30m); CSV and plot in docs/soak.{csv,png}
SOAK_DURATION ?= 30m
soak: plugins
	$(CARGO) build --release -p nexuspipe
	python3 host/benches/soak.py --duration $(SOAK_DURATION)

## Kafka benchmark: collector events/s with acks, processor events/s from Kafka to InfluxDB (tansu, InfluxDB 1.x)
bench-kafka: plugins servers
	$(CARGO) build --release -p nexuspipe
	python3 host/benches/kafka.py

## Query benchmark: /v1/metrics latency, store on/off, 1 000 WebSocket clients, alert push latency
bench-query: plugins browser
	python3 host/benches/query.py

## Side by side with Apache Flink (PyFlink from PyPI in target/venv-flink, Java 17):
## the same jobs on the same 4 million events, outputs compared
bench-flink: plugins
	$(CARGO) build --release -p nexuspipe
	python3 host/benches/flink.py

## Fuzz each target in fuzz/ for FUZZ_SECONDS (nightly + cargo-fuzz, installed if missing)
FUZZ_SECONDS ?= 60
fuzz:
	scripts/fuzz.sh $(FUZZ_SECONDS)

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
