# Fashion search: the verbs a newcomer needs. `make help` lists them.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

ROOT        := $(abspath .)
CACHE_DIR   ?= $(HOME)/.cache/fashion-search
VAR         := $(ROOT)/var
RUN_DIR     := $(VAR)/run
MODELS_DIR  := $(VAR)/models
CARGO       ?= cargo
TARGET_DIR  := $(or $(CARGO_TARGET_DIR),$(ROOT)/target)
PYTHON      ?= python3

# ONNX Runtime comes from the PyPI wheel (ort's own download needs a CDN we cannot reach).
ORT_VERSION := 1.31.1
ORT_WHEEL   := onnxruntime-$(ORT_VERSION)-cp311-cp311-manylinux_2_28_x86_64.whl
ORT_SHA256  := 5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f
ORT_DIR     := $(CACHE_DIR)/onnxruntime-$(ORT_VERSION)
ORT_LIB     := $(ORT_DIR)/libonnxruntime.so.$(ORT_VERSION)
export ORT_DYLIB_PATH ?= $(ORT_LIB)

VENV        := $(CACHE_DIR)/venv
VENV_STAMP  := $(VENV)/.requirements-$(shell sha256sum model-serving/tools/requirements.txt | cut -c1-16)
VPY         := $(VENV)/bin/python

# Real photos for tests, benchmarks and demos (never committed): shared/ beside the checkout.
SHARED      ?= $(abspath $(firstword $(wildcard $(ROOT)/../shared /work/shared)))
DATASET_DIR ?= $(SHARED)/datasets/fashion-product-images-small
export DATASET_DIR

TINY_MODEL  := $(MODELS_DIR)/tiny
BENCH_MODEL := $(MODELS_DIR)/vit-b32-random
GEN_MODEL   := model-serving/tools/gen_models.py
TOKENIZER   := model-serving/assets/clip-tokenizer/tokenizer.json

# The model `make run` serves: a real CLIP export in the model cache (`make model`) if there is
# one, else the project's own trained model (committed, `make train`), else the generated tiny one.
MODEL       ?= clip-vit-base-patch32
OWN_MODEL   := $(ROOT)/model-serving/models/fashion-clip-mini
RUN_MODEL   := $(patsubst %/model.json,%,$(firstword $(wildcard $(MODELS_DIR)/$(MODEL)/model.json $(OWN_MODEL)/model.json) $(TINY_MODEL)/model.json))

MODEL_SERVING_ADDR ?= 127.0.0.1:8001
export AWS_EC2_METADATA_DISABLED := true

.PHONY: help
help: ## list the verbs
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

# ---------------------------------------------------------------------------- prerequisites

# Debian packages the build and tests need: nasm assembles libjpeg-turbo's SIMD decoder
# (mozjpeg-sys); dataset-fashion-mnist is the ETL's Fashion-MNIST source; the ETL pushes its
# metrics to prometheus-pushgateway (tested); the frontend's browser test drives chromium.
DEBIAN_PACKAGES := nasm dataset-fashion-mnist prometheus-pushgateway chromium chromium-driver
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: system-deps
system-deps: ## install the Debian packages the build and tests need (no-op when present)
	@missing=""; for p in $(DEBIAN_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $$missing >/dev/null; \
	fi

.PHONY: ort
ort: $(ORT_LIB) ## fetch libonnxruntime from the PyPI wheel (sha256-checked; no-op when present)

$(ORT_LIB):
	@mkdir -p $(ORT_DIR)/download
	@if [ ! -f $(ORT_DIR)/download/$(ORT_WHEEL) ]; then \
	  $(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 \
	    --platform manylinux_2_28_x86_64 onnxruntime==$(ORT_VERSION) -d $(ORT_DIR)/download; fi
	@echo "$(ORT_SHA256)  $(ORT_DIR)/download/$(ORT_WHEEL)" | sha256sum --check --quiet \
	  || { echo "onnxruntime wheel checksum mismatch"; rm -f $(ORT_DIR)/download/$(ORT_WHEEL); exit 1; }
	@cd $(ORT_DIR) && $(PYTHON) -c "import zipfile,sys; z=zipfile.ZipFile('download/$(ORT_WHEEL)'); \
	  open('libonnxruntime.so.$(ORT_VERSION)','wb').write(z.read('onnxruntime/capi/libonnxruntime.so.$(ORT_VERSION)'))"
	@echo "onnxruntime $(ORT_VERSION) -> $(ORT_LIB)"

.PHONY: venv
venv: $(VENV_STAMP) ## Python environment for model generation and reference checks

$(VENV_STAMP): model-serving/tools/requirements.txt
	@[ -x $(VPY) ] || $(PYTHON) -m venv $(VENV)
	@$(VPY) -m pip install --quiet --disable-pip-version-check -r $<
	@rm -f $(VENV)/.requirements-* && touch $@

.PHONY: models
models: $(TINY_MODEL)/model.json ## generate the tiny test model

$(TINY_MODEL)/model.json: $(GEN_MODEL) $(TOKENIZER) | $(VENV_STAMP)
	$(VPY) $(GEN_MODEL) --preset tiny --tokenizer $(TOKENIZER) --out $(TINY_MODEL)

$(BENCH_MODEL)/model.json: $(GEN_MODEL) $(TOKENIZER) | $(VENV_STAMP)
	$(VPY) $(GEN_MODEL) --preset vit-b32 --tokenizer $(TOKENIZER) --out $(BENCH_MODEL)

.PHONY: model
model: system-deps $(ORT_LIB) ## download a real CLIP export: make model MODEL=clip-vit-base-patch32 [HF_ENDPOINT=..]
	$(CARGO) run --release --locked --bin model-serving -- download $(MODEL) --dest $(MODELS_DIR)/$(MODEL)

# ---------------------------------------------------------------------------- test

# One build serves the lints, the binaries and the tests, so each dependency compiles once:
# - clippy-driver wraps rustc for the workspace's own crates (what `cargo clippy` does, but with
#   code generation), instead of a separate `cargo clippy` that checks every dependency again;
# - the binaries are built together with the tests (`--bins --tests`), so dev-dependencies
#   unify features the same way for both (built apart, syn, hyper-rustls and two more got other
#   features and most of the tree compiled twice);
# - the test-* targets below build with the same command, which is then a no-op, and run
#   nextest over the workspace with a filter (`-p backend` unifies features otherwise and
#   rebuilds most of the tree).
CLIPPY_DRIVER := $(shell rustup which clippy-driver 2>/dev/null)
LINTED := RUSTC_WORKSPACE_WRAPPER=$(CLIPPY_DRIVER) CLIPPY_ARGS=-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__
BUILD_TESTED = $(LINTED) $(CARGO) build --workspace --locked --bins --tests

.PHONY: build-tested
build-tested: ## the lints, binaries and tests in one debug build (what make test builds)
	@[ -x "$(CLIPPY_DRIVER)" ] || { echo "clippy-driver not found: rustup component add clippy"; exit 1; }
	$(BUILD_TESTED)

.PHONY: test
test: system-deps $(ORT_LIB) $(VENV_STAMP) $(TINY_MODEL)/model.json ## everything CI runs: fmt, clippy, all tests
	$(CARGO) fmt --all --check
	$(MAKE) --no-print-directory build-tested
	TEST_MODEL_DIR=$(TINY_MODEL) REFERENCE_PYTHON=$(VPY) \
	  $(LINTED) $(CARGO) nextest run --workspace --locked --no-fail-fast
	$(if $(strip $(TEST_EXTRA)),$(MAKE) --no-print-directory $(TEST_EXTRA))

# The production path, opt-in (a Qdrant server is not in any package registry: build it from
# source or download its release binary, and name it in QDRANT_BIN). Runs the backend's suites
# that need it: both engines under one contract, readiness following the server, a 3-node
# cluster losing a node under load, and two backends behind nginx (deploy/nginx.conf) over an
# external S3 server (moto's standalone server, in its own venv) losing one backend under load.
S3_VENV        := $(CACHE_DIR)/venv-s3
S3_VENV_STAMP  := $(S3_VENV)/.moto-5.2.5
LIVE_PACKAGES  := nginx-light

$(S3_VENV_STAMP):
	@[ -x $(S3_VENV)/bin/python ] || $(PYTHON) -m venv $(S3_VENV)
	@$(S3_VENV)/bin/pip install --quiet --disable-pip-version-check "moto[server]==5.2.5"
	@touch $@

.PHONY: test-live
test-live: system-deps $(ORT_LIB) $(TINY_MODEL)/model.json $(S3_VENV_STAMP) ## server-path tests: QDRANT_BIN=<qdrant> make test-live
	@[ -x "$(QDRANT_BIN)" ] || { echo "set QDRANT_BIN to a Qdrant server binary (README: Scaling out)"; exit 1; }
	@dpkg-query -W -f='$${Status}' $(LIVE_PACKAGES) 2>/dev/null | grep -q "install ok installed" || \
	  { $(SUDO) apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $(LIVE_PACKAGES) >/dev/null; }
	$(MAKE) --no-print-directory build-tested
	TEST_MODEL_DIR=$(TINY_MODEL) QDRANT_BIN=$(QDRANT_BIN) S3_SERVER_BIN=$(S3_VENV)/bin/moto_server \
	  $(LINTED) $(CARGO) nextest run --workspace --locked --no-fail-fast --no-capture \
	  -E 'package(backend) and test(/engines|qdrant_live|qdrant_cluster|replicas|reindex|thumbnails/)'

# The server path's rates (backend/server/tests/it/bench_cluster.rs, an ignored test that only
# prints): 16 clients through nginx with 1 vs 2 backends over 1 Qdrant node vs a 3-node cluster,
# and batch upserts with the embedded engine, one node and the cluster; release binaries.
.PHONY: bench-cluster
bench-cluster: $(ORT_LIB) $(TINY_MODEL)/model.json $(S3_VENV_STAMP) build-release ## server-path rates: QDRANT_BIN=<qdrant> make bench-cluster
	@[ -x "$(QDRANT_BIN)" ] || { echo "set QDRANT_BIN to a Qdrant server binary (README: Scaling out)"; exit 1; }
	@dpkg-query -W -f='$${Status}' $(LIVE_PACKAGES) 2>/dev/null | grep -q "install ok installed" || \
	  { $(SUDO) apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $(LIVE_PACKAGES) >/dev/null; }
	TEST_MODEL_DIR=$(TINY_MODEL) QDRANT_BIN=$(QDRANT_BIN) S3_SERVER_BIN=$(S3_VENV)/bin/moto_server \
	  BENCH_BIN_DIR=$(TARGET_DIR)/release $(LINTED) $(CARGO) nextest run --workspace --locked --no-capture \
	  --run-ignored only -E 'package(backend) and test(bench_cluster)'

# Two of each service behind nginx (deploy/nginx.conf), over a Qdrant server and an S3 server:
# the compose file's topology as processes on this machine (deploy/local-cluster.sh).
.PHONY: cluster
cluster: $(ORT_LIB) $(TINY_MODEL)/model.json build-release $(S3_VENV_STAMP) ## two of each behind nginx: QDRANT_BIN=<qdrant> make cluster (make stop)
	@dpkg-query -W -f='$${Status}' $(LIVE_PACKAGES) 2>/dev/null | grep -q "install ok installed" || \
	  { $(SUDO) apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $(LIVE_PACKAGES) >/dev/null; }
	@mkdir -p $(RUN_DIR)
	@$(SERVICE_SECRETS) ROOT=$(ROOT) RUN_DIR=$(RUN_DIR) TARGET_DIR=$(TARGET_DIR) RUN_MODEL=$(RUN_MODEL) \
	  S3_VENV=$(S3_VENV) bash deploy/local-cluster.sh

# ---------------------------------------------------------------------------- run

.PHONY: build-release
build-release: system-deps
	$(CARGO) build --release --locked --bin model-serving --bin backend --bin frontend --bin etl

BACKEND_ADDR ?= 127.0.0.1:8000
FRONTEND_ADDR ?= 127.0.0.1:3000
S3_EMBEDDED_ADDR ?= 127.0.0.1:9000
# The demo catalogue `make run` loads into an empty index: the real photos beside the checkout,
# else Fashion-MNIST from its Debian package.
FASHION_MNIST_DIR ?= /usr/share/datasets/fashion-mnist
DEMO_LIMIT ?= 2000

# Starts one service in the background unless its pid file names a live process, then waits
# until its /health/ready answers. $(1) name, $(2) address, $(3) environment and command.
define start_service
	@if [ -f $(RUN_DIR)/$(1).pid ] && kill -0 $$(cat $(RUN_DIR)/$(1).pid) 2>/dev/null; then \
	  echo "$(1) already running (pid $$(cat $(RUN_DIR)/$(1).pid))"; \
	else \
	  $(3) >> $(RUN_DIR)/$(1).log 2>&1 & echo $$! > $(RUN_DIR)/$(1).pid; \
	fi
	@for i in $$(seq 1 240); do \
	  curl -fsS http://$(2)/health/ready >/dev/null 2>&1 && break; \
	  kill -0 $$(cat $(RUN_DIR)/$(1).pid) 2>/dev/null || { echo "$(1) exited:"; tail -5 $(RUN_DIR)/$(1).log; exit 1; }; \
	  sleep 0.5; done
	@curl -fsS http://$(2)/health/ready >/dev/null || { echo "$(1) not ready; see $(RUN_DIR)/$(1).log"; exit 1; }
endef

# Secrets `make run` generates once (mode 600) and hands to the services that share them.
define secret
$$(cat $(RUN_DIR)/$(1) 2>/dev/null || { (umask 077; head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > $(RUN_DIR)/$(1)); cat $(RUN_DIR)/$(1); })
endef
SERVICE_SECRETS = API_KEY=$${API_KEY:-$(call secret,api-key)} S3_ACCESS_KEY=$(call secret,s3-access-key) S3_SECRET_KEY=$(call secret,s3-secret-key)

.PHONY: run
run: $(ORT_LIB) $(TINY_MODEL)/model.json build-release ## build, start model-serving, backend, frontend (logs, pids in var/run), load a demo catalogue
	@mkdir -p $(RUN_DIR) $(VAR)/data
	$(call start_service,model-serving,$(MODEL_SERVING_ADDR),MODEL_DIR=$(RUN_MODEL) MODEL_SERVING_ADDR=$(MODEL_SERVING_ADDR) nohup $(TARGET_DIR)/release/model-serving serve)
	$(call start_service,backend,$(BACKEND_ADDR),$(SERVICE_SECRETS) BACKEND_ADDR=$(BACKEND_ADDR) MODEL_SERVING_URL=http://$(MODEL_SERVING_ADDR) S3_EMBEDDED_ADDR=$(S3_EMBEDDED_ADDR) DATA_DIR=$(VAR)/data nohup $(TARGET_DIR)/release/backend)
	$(call start_service,frontend,$(FRONTEND_ADDR),FRONTEND_ADDR=$(FRONTEND_ADDR) BACKEND_URL=http://$(BACKEND_ADDR) nohup $(TARGET_DIR)/release/frontend)
	@$(MAKE) --no-print-directory demo-data
	@echo
	@echo "shop           http://$(FRONTEND_ADDR)"
	@echo "API docs       http://$(BACKEND_ADDR)/docs   (OpenAPI: http://$(BACKEND_ADDR)/openapi.json)"
	@echo "model-serving  http://$(MODEL_SERVING_ADDR)   (model: $(RUN_MODEL))"
	@echo "metrics        http://$(FRONTEND_ADDR)/metrics  http://$(BACKEND_ADDR)/metrics  http://$(MODEL_SERVING_ADDR)/metrics"
	@echo "images         http://$(S3_EMBEDDED_ADDR) (embedded S3, pre-signed URLs)"
	@echo "write key      $(RUN_DIR)/api-key (header x-api-key)"
	@echo "logs: make logs    stop: make stop    telemetry: make observe"

# Loads the demo catalogue with the ETL until one load has finished (an interrupted load resumes).
# The mark lives in the data directory, so a wiped catalogue is loaded again. (The count alone
# cannot tell: identical photos become one product, so a full load indexes under DEMO_LIMIT.)
DEMO_LOADED = $(VAR)/data/demo-loaded
.PHONY: demo-data
demo-data:
	@total=$$(curl -fsS http://$(BACKEND_ADDR)/v1/stats | sed -n 's/.*"total":\([0-9]*\).*/\1/p'); \
	if [ -f $(DEMO_LOADED) ] && [ "$${total:-0}" -gt 0 ] 2>/dev/null; then echo "catalogue: $$total images indexed"; exit 0; fi; \
	if [ -f "$(DATASET_DIR)/styles.csv" ]; then set -- fashion-product-images "$(DATASET_DIR)"; \
	elif [ -d "$(FASHION_MNIST_DIR)" ]; then set -- fashion-mnist "$(FASHION_MNIST_DIR)"; \
	else echo "no demo dataset found ($(DATASET_DIR), $(FASHION_MNIST_DIR)); load one with etl load"; exit 0; fi; \
	echo "loading up to $(DEMO_LIMIT) images of $$1 from $$2 (log: $(RUN_DIR)/etl.log)"; \
	export $(SERVICE_SECRETS) BACKEND_URL=http://$(BACKEND_ADDR) MODEL_SERVING_URL=http://$(MODEL_SERVING_ADDR) \
	  S3_ENDPOINT=http://$(S3_EMBEDDED_ADDR); \
	pg=$${PUSHGATEWAY_URL:-http://$(PUSHGATEWAY_ADDR)}; \
	if curl -fsS -m 2 "$$pg/-/ready" >/dev/null 2>&1; then export PUSHGATEWAY_URL=$$pg; \
	else unset PUSHGATEWAY_URL; echo "no Pushgateway at $$pg: the load's metrics are not pushed (make observe starts one)"; fi; \
	$(TARGET_DIR)/release/etl load --dataset $$1 --source $$2 --limit $(DEMO_LIMIT) >> $(RUN_DIR)/etl.log \
	  && date -u +%FT%TZ > $(DEMO_LOADED); \
	$(TARGET_DIR)/release/etl status 2>>$(RUN_DIR)/etl.log

.PHONY: stop
stop: ## stop what `make run` or `make cluster` started (by pid)
	@for f in $(wildcard $(RUN_DIR)/*.pid); do \
	  pid=$$(cat $$f); name=$$(basename $$f .pid); \
	  if kill -0 $$pid 2>/dev/null; then kill -TERM $$pid; \
	    for i in $$(seq 1 50); do kill -0 $$pid 2>/dev/null || break; sleep 0.2; done; \
	    kill -0 $$pid 2>/dev/null && kill -KILL $$pid; echo "stopped $$name ($$pid)"; fi; \
	  rm -f $$f; done

.PHONY: logs
logs: ## show the last lines of every service log
	@tail -n 20 $(RUN_DIR)/*.log

# ---------------------------------------------------------------------------- bench

# The reference design's model server runs beside model-serving (section 6 of
# model-serving-bench) from its own venv: FastAPI, gunicorn, uvicorn are never needed by make test.
BENCH_VENV       := $(CACHE_DIR)/venv-bench
BENCH_REQ        := model-serving/tools/bench-requirements.txt
BENCH_VENV_STAMP := $(BENCH_VENV)/.requirements-$(shell cat model-serving/tools/requirements.txt $(BENCH_REQ) | sha256sum | cut -c1-16)

$(BENCH_VENV_STAMP): $(BENCH_REQ) model-serving/tools/requirements.txt
	@[ -x $(BENCH_VENV)/bin/python ] || $(PYTHON) -m venv $(BENCH_VENV)
	@cd model-serving/tools && $(BENCH_VENV)/bin/pip install --quiet --disable-pip-version-check -r bench-requirements.txt
	@rm -f $(BENCH_VENV)/.requirements-* && touch $@

# int8 copies (make quantize, model-serving/tools/quantize.mk) for the fp32 / int8 section.
BENCH_INT8_MODELS := $(MODELS_DIR)/vit-b32-random-int8 $(MODELS_DIR)/fashion-clip-mini-int8

.PHONY: bench
bench: system-deps $(ORT_LIB) $(BENCH_MODEL)/model.json $(TINY_MODEL)/model.json $(VENV_STAMP) $(BENCH_VENV_STAMP) $(addsuffix /model.json,$(BENCH_INT8_MODELS)) ## benchmarks (release build): model-serving beside the reference server, fp32 vs int8, cold start and memory, backend search, ETL ingest
	$(CARGO) build --release --locked --bin model-serving-bench --bin backend-bench --bin etl-bench \
	  --bin model-serving --bin backend --bin frontend --bin hostile
	BENCH_MODEL_DIR=$(BENCH_MODEL) REFERENCE_PYTHON=$(VPY) TINY_MODEL_DIR=$(TINY_MODEL) TRAINED_MODEL_DIR=$(OWN_MODEL) \
	  BENCH_INT8_MODEL_DIR=$(word 1,$(BENCH_INT8_MODELS)) TRAINED_INT8_MODEL_DIR=$(word 2,$(BENCH_INT8_MODELS)) \
	  REFERENCE_SERVER_DIR=$(SHARED)/bench REFERENCE_SERVER_VENV=$(BENCH_VENV) $(TARGET_DIR)/release/model-serving-bench
	TEST_MODEL_DIR=$(TINY_MODEL) $(TARGET_DIR)/release/backend-bench
	BENCH_MODEL_DIR=$(BENCH_MODEL) $(TARGET_DIR)/release/etl-bench
	@echo; echo "the make run stack (model $(RUN_MODEL)): cold start and memory"
	HOSTILE_FOOTPRINT=1 HOSTILE_PHOTOS=500 HOSTILE_BIN_DIR=$(TARGET_DIR)/release MODEL_DIR=$(RUN_MODEL) \
	  $(TARGET_DIR)/release/hostile

# Search quality through the API: the held-out products loaded with the ETL, every question in
# each matching mode (EVAL_PRODUCTS, EVAL_CAPTIONS, MODEL_DIR: see backend/eval/src/main.rs).
.PHONY: eval-search
eval-search: system-deps $(ORT_LIB) ## search quality through the API: vector vs keyword vs hybrid (trained model, held-out products)
	$(CARGO) build --release --locked --bin search-eval
	$(TARGET_DIR)/release/search-eval

# Hostile traffic against the release services as separate processes: each case's status, time
# and peak extra memory, then a search soak with no scraper (HOSTILE_SOAK_SECS=0 skips it).
HOSTILE_SOAK_SECS ?= 600
.PHONY: hostile
hostile: system-deps $(ORT_LIB) $(TINY_MODEL)/model.json ## hostile cases (bombs, SSRF, slowloris, ...) against release builds, then a 10-minute soak
	$(CARGO) build --release --locked --bin model-serving --bin backend --bin frontend --bin hostile
	HOSTILE_BIN_DIR=$(TARGET_DIR)/release MODEL_DIR=$(RUN_MODEL) HOSTILE_SOAK_SECS=$(HOSTILE_SOAK_SECS) \
	  $(TARGET_DIR)/release/hostile

# Parts kept beside what they build: the telemetry stack and model training.
-include observability/observability.mk
-include backend/contract/contract.mk
-include model-serving/training/training.mk
-include model-serving/fuzz/fuzz.mk
-include deploy/deploy.mk
-include model-serving/tools/quantize.mk

.PHONY: clean
clean: ## remove build output and generated models (keeps the download cache)
	$(CARGO) clean
	rm -rf $(MODELS_DIR)
