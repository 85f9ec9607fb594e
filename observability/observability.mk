# The telemetry stack (included by the Makefile). `make observe` runs Prometheus, Alertmanager,
# the Pushgateway and node-exporter natively (Debian packages) against the services `make run`
# started, with pids and logs in var/run so `make stop` stops them too. The full stack (Grafana,
# cAdvisor, Fluent Bit, Elasticsearch, Kibana, Jaeger) is observability/compose.yaml.

OBS_DIR            := $(ROOT)/observability
OBSERVE_DIR        := $(VAR)/observe
PROMETHEUS_ADDR    := 127.0.0.1:9090
ALERTMANAGER_ADDR  := 127.0.0.1:9093
PUSHGATEWAY_ADDR   := 127.0.0.1:9091
NODE_EXPORTER_ADDR := 127.0.0.1:9100

# promtool/amtool come with prometheus/prometheus-alertmanager; docker-compose only validates
# observability/compose.yaml (there is no container engine); npm type-checks the dashboards.
DEBIAN_PACKAGES += prometheus prometheus-alertmanager prometheus-node-exporter docker-compose \
                   $(if $(shell command -v npm),,nodejs npm)
TEST_EXTRA += test-observability

# Starts one native part unless its pid file names a live process, then waits (bounded) for its
# readiness URL. $(1) name, $(2) URL that answers when ready, $(3) command.
define start_observer
	@if [ -f $(RUN_DIR)/$(1).pid ] && kill -0 $$(cat $(RUN_DIR)/$(1).pid) 2>/dev/null; then \
	  echo "$(1) already running (pid $$(cat $(RUN_DIR)/$(1).pid))"; \
	else \
	  nohup $(3) >> $(RUN_DIR)/$(1).log 2>&1 & echo $$! > $(RUN_DIR)/$(1).pid; \
	fi
	@for i in $$(seq 1 60); do \
	  curl -fsS $(2) >/dev/null 2>&1 && break; \
	  kill -0 $$(cat $(RUN_DIR)/$(1).pid) 2>/dev/null || { echo "$(1) exited:"; tail -5 $(RUN_DIR)/$(1).log; exit 1; }; \
	  sleep 0.5; done
	@curl -fsS $(2) >/dev/null || { echo "$(1) not ready; see $(RUN_DIR)/$(1).log"; exit 1; }
endef

.PHONY: observe
observe: system-deps ## run Prometheus, Alertmanager, Pushgateway, node-exporter against the running services (DISCORD_WEBHOOK_URL)
	@mkdir -p $(RUN_DIR) $(OBSERVE_DIR)
	@$(OBS_DIR)/alertmanager/render.sh $(OBSERVE_DIR)/alertmanager
	@promtool check config $(OBS_DIR)/prometheus/prometheus.yml >/dev/null
	$(call start_observer,pushgateway,http://$(PUSHGATEWAY_ADDR)/-/ready,prometheus-pushgateway --web.listen-address=$(PUSHGATEWAY_ADDR) --persistence.file=$(OBSERVE_DIR)/pushgateway.data)
	$(call start_observer,node-exporter,http://$(NODE_EXPORTER_ADDR)/metrics,prometheus-node-exporter --web.listen-address=$(NODE_EXPORTER_ADDR) --no-collector.systemd)
	$(call start_observer,alertmanager,http://$(ALERTMANAGER_ADDR)/-/ready,prometheus-alertmanager --config.file=$(OBSERVE_DIR)/alertmanager/alertmanager.yml --storage.path=$(OBSERVE_DIR)/alertmanager/data --web.listen-address=$(ALERTMANAGER_ADDR) --cluster.listen-address= --web.external-url=http://$(ALERTMANAGER_ADDR))
	$(call start_observer,prometheus,http://$(PROMETHEUS_ADDR)/-/ready,prometheus --config.file=$(OBS_DIR)/prometheus/prometheus.yml --storage.tsdb.path=$(OBSERVE_DIR)/prometheus --web.listen-address=$(PROMETHEUS_ADDR) --web.external-url=http://$(PROMETHEUS_ADDR) --web.enable-lifecycle)
	@echo "prometheus     http://$(PROMETHEUS_ADDR)  (targets: http://$(PROMETHEUS_ADDR)/targets, alerts: /alerts)"
	@echo "alertmanager   http://$(ALERTMANAGER_ADDR)  (Discord: $(if $(DISCORD_WEBHOOK_URL),DISCORD_WEBHOOK_URL set,DISCORD_WEBHOOK_URL unset - alerts are not sent))"
	@echo "pushgateway    http://$(PUSHGATEWAY_ADDR)  (etl: PUSHGATEWAY_URL=http://$(PUSHGATEWAY_ADDR))"
	@echo "node-exporter  http://$(NODE_EXPORTER_ADDR)/metrics"
	@echo "grafana, logs, traces: docker compose -f observability/compose.yaml up -d (README, Observability)"
	@echo "stop: make stop"

.PHONY: test-observability
test-observability: system-deps $(ORT_LIB) $(TINY_MODEL)/model.json ## check the telemetry stack's configs with the real tools and run its end-to-end test
	$(OBS_DIR)/tests/static_checks.sh $(PYTHON)
	$(MAKE) --no-print-directory build-tested
	ORT_DYLIB_PATH=$(ORT_DYLIB_PATH) $(PYTHON) $(OBS_DIR)/tests/stack_test.py --bin-dir $(TARGET_DIR)/debug \
	  --model-dir $(TINY_MODEL) $(if $(wildcard $(DATASET_DIR)/styles.csv),--dataset-dir $(DATASET_DIR)) \
	  --report $(VAR)/observability-report.json
