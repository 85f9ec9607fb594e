#!/bin/sh
# Renders the Alertmanager config from its template with the environment's secrets and links:
#   render.sh OUT_DIR   ->   OUT_DIR/alertmanager.yml, OUT_DIR/templates/*.tmpl
# DISCORD_WEBHOOK_URL  the Discord channel webhook (a secret: never committed). Unset: a loopback
#                      address nothing answers, so alerts show in Alertmanager's UI but are not sent.
# GRAFANA_URL          Grafana base URL for dashboard links (default http://127.0.0.1:3001).
# RUNBOOK_URL          observability/runbooks.md as readers can open it (default: this checkout).
# POSIX sh + sed only: it also runs inside the prom/alertmanager image (busybox) in compose.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: render.sh OUT_DIR}

if [ -z "${DISCORD_WEBHOOK_URL:-}" ]; then
  echo "render.sh: DISCORD_WEBHOOK_URL is not set: alerts are visible in Alertmanager but not sent to Discord" >&2
  DISCORD_WEBHOOK_URL=http://127.0.0.1:9/discord-webhook-url-not-set
fi
case $DISCORD_WEBHOOK_URL in
  *"'"*|*" "*|*"	"*) echo "render.sh: DISCORD_WEBHOOK_URL must not contain quotes or spaces" >&2; exit 1 ;;
  http://*|https://*) ;;
  *) echo "render.sh: DISCORD_WEBHOOK_URL must be an http(s) URL" >&2; exit 1 ;;
esac
GRAFANA_URL=${GRAFANA_URL:-http://127.0.0.1:3001}
RUNBOOK_URL=${RUNBOOK_URL:-file://$(dirname "$here")/runbooks.md}

# Escape for the right-hand side of a sed s|||: backslash, the delimiter and &.
esc() { printf '%s' "$1" | sed -e 's/[\\|&]/\\&/g'; }
subst() {
  sed -e "s|\${DISCORD_WEBHOOK_URL}|$(esc "$DISCORD_WEBHOOK_URL")|g" \
      -e "s|\${GRAFANA_URL}|$(esc "${GRAFANA_URL%/}")|g" \
      -e "s|\${RUNBOOK_URL}|$(esc "$RUNBOOK_URL")|g" "$1"
}

mkdir -p "$out/templates"
(umask 077; subst "$here/alertmanager.yml.tmpl" > "$out/alertmanager.yml.new")
mv "$out/alertmanager.yml.new" "$out/alertmanager.yml"
for t in "$here"/templates/*.tmpl; do
  subst "$t" > "$out/templates/$(basename "$t")"
done
