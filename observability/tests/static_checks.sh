#!/usr/bin/env bash
# Checks every piece of the telemetry stack's configuration with the real tools:
# promtool (config, rules, rule unit tests), amtool (config, routing), docker-compose config,
# the dashboards' freshness and their type check against @grafana/schema (tsc), and the log
# pipeline's files (JSON/NDJSON, references, multiline parser on a real Rust panic).
#   static_checks.sh [PYTHON]
set -euo pipefail
obs=$(cd "$(dirname "$0")/.." && pwd)
python=${1:-python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
step() { printf '\n== %s\n' "$*"; }

step "promtool: prometheus.yml and rule files"
promtool check config "$obs/prometheus/prometheus.yml"
step "promtool: rule unit tests"
promtool test rules "$obs"/prometheus/tests/*.test.yml

step "amtool: rendered config and routing"
DISCORD_WEBHOOK_URL=https://discord.com/api/webhooks/000/not-a-real-token \
  "$obs/alertmanager/render.sh" "$tmp/alertmanager"
if grep -n '\${' "$tmp/alertmanager/alertmanager.yml" "$tmp"/alertmanager/templates/*.tmpl; then
  echo "render.sh left a placeholder"; exit 1
fi
amtool check-config "$tmp/alertmanager/alertmanager.yml" | grep -E "SUCCESS|FAIL" | head -1
route() {  # expected receiver, then the alert's labels
  local want=$1; shift
  amtool config routes test --config.file="$tmp/alertmanager/alertmanager.yml" --verify.receivers="$want" "$@" >/dev/null 2>&1 \
    || { echo "routing: {$*} should go to $want, goes to $(amtool config routes test --config.file="$tmp/alertmanager/alertmanager.yml" "$@" 2>/dev/null)"; exit 1; }
  echo "  {$*} -> $want"
}
route discord-critical alertname=ServiceDown service=model-serving severity=critical
route discord-critical alertname=SearchLatencyBudgetBurnFast service=backend severity=critical slo=search-latency
route discord-critical alertname=NodeOutOfMemory service=host severity=critical
route discord-warning alertname=SearchRequestHighLatency service=backend severity=warning
route discord-warning alertname=EtlJobFailed service=etl severity=warning dataset=fashion-mnist
route blackhole alertname=Watchdog severity=none
route blackhole alertname=SomethingWithoutSeverity
# Every severity the rules use has a route to Discord.
for severity in $(grep -ho 'severity: [a-z]*' "$obs/prometheus/rules/alerts.yml" | sort -u | cut -d' ' -f2); do
  route "discord-$severity" alertname=Any severity="$severity"
done

step "docker-compose config"
DISCORD_WEBHOOK_URL=https://discord.com/api/webhooks/000/not-a-real-token \
  docker-compose -f "$obs/compose.yaml" config -q
echo "  $(DISCORD_WEBHOOK_URL=x docker-compose -f "$obs/compose.yaml" config --services | tr '\n' ' ')"
if docker-compose -f "$obs/compose.yaml" config -q 2>/dev/null; then
  echo "compose must refuse to start Alertmanager without DISCORD_WEBHOOK_URL"; exit 1
fi

step "Grafana: dashboards up to date, provisioning, type check against @grafana/schema"
"$python" "$obs/grafana/generate.py" --check
"$python" - "$obs" <<'PY'
import json, sys
from pathlib import Path
obs = Path(sys.argv[1])
provisioning = (obs / "grafana/provisioning/datasources/datasources.yml").read_text()
for path in sorted((obs / "grafana/dashboards").glob("*.json")):
    d = json.loads(path.read_text())
    uids = {t["datasource"]["uid"] for p in d["panels"] for t in p["targets"]}
    for uid in uids:
        assert f"uid: {uid}" in provisioning, f"{path.name}: datasource uid {uid} is not provisioned"
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
print("  dashboards use only provisioned datasources; panel ids unique")
# Every dashboard an alert links to exists.
rules = (obs / "prometheus/rules/alerts.yml").read_text()
uids = {json.loads(p.read_text())["uid"] for p in (obs / "grafana/dashboards").glob("*.json")}
import re
for uid in set(re.findall(r"dashboard: (\S+)", rules)):
    assert uid in uids, f"alerts link to a dashboard {uid} that does not exist"
runbooks = (obs / "runbooks.md").read_text()
for anchor in set(re.findall(r"runbook: (\S+)", rules)):
    assert f"## {anchor}\n" in runbooks, f"alerts link to runbook #{anchor}, missing from runbooks.md"
print("  every alert's dashboard and runbook exist")
PY
command -v npm >/dev/null || { echo "npm not found (make system-deps installs nodejs and npm)"; exit 1; }
(cd "$obs/grafana/typecheck" && npm ci --no-audit --no-fund --loglevel=error >/dev/null && npm run --silent check)

step "logs: Elasticsearch template, Kibana objects, Fluent Bit (with a real Rust panic)"
panic_arg=()
if command -v rustc >/dev/null; then
  printf 'fn main() { let v: Vec<u32> = Vec::new(); let i = std::env::args().count() + 2; println!("{}", v[i]); }\n' > "$tmp/panic.rs"
  rustc -g -o "$tmp/panic" "$tmp/panic.rs" 2>/dev/null
  RUST_BACKTRACE=1 "$tmp/panic" 2> "$tmp/panic.txt" && { echo "the panic sample did not panic"; exit 1; }
  panic_arg=(--panic-sample "$tmp/panic.txt")
fi
"$python" "$obs/tests/logs_config.py" "${panic_arg[@]}"
echo
echo "static checks passed"
