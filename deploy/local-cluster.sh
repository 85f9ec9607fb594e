#!/usr/bin/env bash
# `make cluster`: the multi-process topology of deploy/compose.yaml on this machine, without
# containers. Starts what is not running (pid files in var/run, logs beside them):
#   Qdrant (from QDRANT_BIN; or the server at QDRANT_URL, started elsewhere),
#   an S3 server (moto's standalone server; or the one at S3_ENDPOINT),
#   model-serving x2, backend x2 (over that Qdrant and that S3), the frontend,
#   nginx configured from deploy/nginx.conf (the compose file's names replaced by loopback
#   addresses), which is the one door: shop :8080, API :8000, model-serving :8001.
# `make stop` stops all of it by pid.
#
# Environment (the Makefile passes it): ROOT, RUN_DIR, TARGET_DIR, RUN_MODEL, S3_VENV,
# API_KEY, S3_ACCESS_KEY, S3_SECRET_KEY; optional QDRANT_BIN / QDRANT_URL, S3_ENDPOINT, NGINX_BIN.
set -euo pipefail

CLUSTER_DIR="$ROOT/var/cluster"
NGINX_BIN="${NGINX_BIN:-/usr/sbin/nginx}"
mkdir -p "$RUN_DIR" "$CLUSTER_DIR"

# start NAME READY_URL COMMAND...: runs COMMAND in the background unless NAME's pid file names a
# live process, then waits (at most 120 s) until READY_URL answers 2xx.
start() {
  local name=$1 url=$2; shift 2
  local pidfile="$RUN_DIR/$name.pid" log="$RUN_DIR/$name.log"
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    echo "$name already running (pid $(cat "$pidfile"))"
  else
    nohup "$@" >> "$log" 2>&1 &
    echo $! > "$pidfile"
  fi
  for _ in $(seq 1 240); do
    curl -fsS -m 2 "$url" >/dev/null 2>&1 && return 0
    kill -0 "$(cat "$pidfile")" 2>/dev/null || { echo "$name exited:"; tail -5 "$log"; exit 1; }
    sleep 0.5
  done
  echo "$name not ready at $url; see $log"; exit 1
}

# The index: a Qdrant server is required (two backends cannot share the embedded engine).
if [ -z "${QDRANT_URL:-}" ]; then
  if [ -z "${QDRANT_BIN:-}" ] || [ ! -x "$QDRANT_BIN" ]; then
    echo "make cluster needs a Qdrant server: QDRANT_BIN=<binary> or QDRANT_URL=<grpc url> (README: Scaling out)"
    exit 1
  fi
  mkdir -p "$CLUSTER_DIR/qdrant"
  start qdrant http://127.0.0.1:6333/readyz \
    env QDRANT__SERVICE__HOST=127.0.0.1 QDRANT__SERVICE__HTTP_PORT=6333 QDRANT__SERVICE__GRPC_PORT=6334 \
      QDRANT__STORAGE__STORAGE_PATH="$CLUSTER_DIR/qdrant/storage" \
      QDRANT__STORAGE__SNAPSHOTS_PATH="$CLUSTER_DIR/qdrant/snapshots" \
      QDRANT__TELEMETRY_DISABLED=true "$QDRANT_BIN"
  QDRANT_URL=http://127.0.0.1:6334
fi

# The object store: one S3 server both backends and the ETL write to.
if [ -z "${S3_ENDPOINT:-}" ]; then
  start s3 http://127.0.0.1:9000/ "$S3_VENV/bin/moto_server" -H 127.0.0.1 -p 9000
  S3_ENDPOINT=http://127.0.0.1:9000
fi

MS=(127.0.0.1:8101 127.0.0.1:8102)
BE=(127.0.0.1:8111 127.0.0.1:8112)
for i in 0 1; do
  start "model-serving-$((i + 1))" "http://${MS[$i]}/health/ready" \
    env MODEL_DIR="$RUN_MODEL" MODEL_SERVING_ADDR="${MS[$i]}" "$TARGET_DIR/release/model-serving" serve
done
for i in 0 1; do
  start "backend-$((i + 1))" "http://${BE[$i]}/health/ready" \
    env BACKEND_ADDR="${BE[$i]}" DATA_DIR="$CLUSTER_DIR/backend-$((i + 1))" \
      MODEL_SERVING_URL="http://${MS[0]},http://${MS[1]}" QDRANT_URL="$QDRANT_URL" \
      S3_ENDPOINT="$S3_ENDPOINT" S3_ACCESS_KEY="$S3_ACCESS_KEY" S3_SECRET_KEY="$S3_SECRET_KEY" \
      API_KEY="$API_KEY" BACKEND_TRUSTED_PROXIES=127.0.0.1 "$TARGET_DIR/release/backend"
done

# nginx, from the deployment's own file.
mkdir -p "$CLUSTER_DIR/nginx/client_body" "$CLUSTER_DIR/nginx/proxy"
chmod -R a+rwx "$CLUSTER_DIR/nginx"
sed -e 's|worker_processes auto;|worker_processes 1;|' \
    -e "s|pid /tmp/nginx.pid;|pid $CLUSTER_DIR/nginx/nginx.pid;|" \
    -e "s|/tmp/client_body|$CLUSTER_DIR/nginx/client_body|" \
    -e "s|/tmp/proxy|$CLUSTER_DIR/nginx/proxy|" \
    -e 's|access_log /dev/stdout;|access_log off;|' \
    -e 's|frontend:3000|127.0.0.1:3000|' \
    -e "s|backend-1:8000|${BE[0]}|" -e "s|backend-2:8000|${BE[1]}|" \
    -e "s|model-serving-1:8001|${MS[0]}|" -e "s|model-serving-2:8001|${MS[1]}|" \
    -e 's|listen 8080;|listen 127.0.0.1:8080;|' -e 's|listen 8000;|listen 127.0.0.1:8000;|' \
    -e 's|listen 8001;|listen 127.0.0.1:8001;|' -e 's|listen 8081;|listen 127.0.0.1:8081;|' \
    "$ROOT/deploy/nginx.conf" > "$CLUSTER_DIR/nginx/nginx.conf"
start nginx http://127.0.0.1:8081/healthz \
  "$NGINX_BIN" -p "$CLUSTER_DIR/nginx" -c "$CLUSTER_DIR/nginx/nginx.conf" -e stderr -g 'daemon off;'
start frontend http://127.0.0.1:3000/health/ready \
  env FRONTEND_ADDR=127.0.0.1:3000 BACKEND_URL=http://127.0.0.1:8000 FRONTEND_TRUSTED_PROXIES=127.0.0.1 \
    "$TARGET_DIR/release/frontend"

# A demo catalogue through the balancer when the index is empty (the ETL writes the photos to S3).
total=$(curl -fsS http://127.0.0.1:8000/v1/stats | sed -n 's/.*"total":\([0-9]*\).*/\1/p')
if [ "${total:-0}" = 0 ] && [ -f "${DATASET_DIR:-}/styles.csv" ]; then
  echo "loading up to ${DEMO_LIMIT:-500} photos through nginx (log: $RUN_DIR/etl.log)"
  BACKEND_URL=http://127.0.0.1:8000 MODEL_SERVING_URL=http://127.0.0.1:8001 S3_ENDPOINT="$S3_ENDPOINT" \
    "$TARGET_DIR/release/etl" load --dataset fashion-product-images --source "$DATASET_DIR" \
    --limit "${DEMO_LIMIT:-500}" >> "$RUN_DIR/etl.log"
fi

echo
echo "shop           http://127.0.0.1:8080   (nginx → frontend → nginx → backend x2)"
echo "API            http://127.0.0.1:8000   (nginx → ${BE[*]})"
echo "model-serving  http://127.0.0.1:8001   (nginx → ${MS[*]}; the backends call both directly)"
echo "Qdrant         $QDRANT_URL"
echo "S3             $S3_ENDPOINT"
echo "load: BACKEND_URL=http://127.0.0.1:8000 MODEL_SERVING_URL=http://127.0.0.1:8001 S3_ENDPOINT=$S3_ENDPOINT etl load ..."
echo "stop: make stop"
