#!/usr/bin/env python3
"""End-to-end test of the telemetry stack, on loopback, with the real parts.

Starts the dev binaries (model-serving on the tiny model, backend with its embedded index and S3),
a Pushgateway, node-exporter, Alertmanager and Prometheus from Debian, all on free ports picked
now, with Prometheus and Alertmanager rendered from the committed configs with fast intervals
(1 s scrape and evaluation, `for:` 2 s, group_wait 0 s, group_interval 1 s). The only stand-in is
Discord: a local HTTP server that records the webhook POSTs. cAdvisor cannot run here (no
container runtime, no package), so its job scrapes a fixture in cAdvisor's exposition format
(tests/fixtures/cadvisor.prom) and the report says so.

Checks, in order:
  1. every scrape target up; `promtool check metrics` on each service's real /metrics;
  2. real traffic: text, image and similar searches, bad input, an `etl load` pushing to the
     Pushgateway;
  3. the tiny random model served instead of the trained one -> the search-quality canary's
     SearchQualityDropped reaches the Discord stand-in with its runbook and dashboard;
     stop model-serving -> ServiceDown reaches the Discord stand-in in Discord's webhook format
     (embed title, description with summary, value, runbook and dashboard links) within a bound;
     while it fires, Alertmanager inhibits that service's latency alert but not another service's;
     start model-serving again -> the resolved message arrives;
  4. every panel query of every dashboard returns series from this Prometheus;
  5. the log fields used by Fluent Bit, the Elasticsearch template and the Kibana objects are the
     fields the services really wrote.
Every process is stopped by pid (also on failure or Ctrl-C), every wait is bounded, the temp
directory is removed unless --keep (on failure the last lines of every log are printed first).
"""

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HERE = Path(__file__).resolve().parent
OBS = HERE.parent
sys.path.insert(0, str(HERE))
import logs_config  # noqa: E402  (sibling module)

START = time.monotonic()
ALERT_BOUND_S = 30.0       # stop -> firing message, and ready -> resolved message
DEFAULT_ADDRESSES = {      # as in observability/prometheus/prometheus.yml
    "model-serving": "127.0.0.1:8001",
    "backend": "127.0.0.1:8000",
    "frontend": "127.0.0.1:3000",
    "pushgateway": "127.0.0.1:9091",
    "node": "127.0.0.1:9100",
    "cadvisor": "127.0.0.1:8088",
    "prometheus": "127.0.0.1:9090",
    "alertmanager": "127.0.0.1:9093",
}


class Failure(Exception):
    pass


def log(message):
    print(f"[stack-test {time.monotonic() - START:6.1f}s] {message}", flush=True)


_GIVEN_PORTS = set()


def free_port():
    """A free loopback port below the kernel's ephemeral range, not given before. A port from
    that range (what binding port 0 returns) can be taken, between this check and the service's
    own bind, as the source port of any outgoing connection on the machine."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for _ in range(500):
        port = random.randint(max(1024, low - 12000), low - 1)
        if port in _GIVEN_PORTS:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _GIVEN_PORTS.add(port)
        return port
    raise RuntimeError("no free loopback port below the ephemeral range")


# Loopback only: never through a proxy.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http(method, url, body=None, headers=None, timeout=30):
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with OPENER.open(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def get_json(url, timeout=10):
    status, body = http("GET", url, timeout=timeout)
    if status != 200:
        raise Failure(f"GET {url}: {status} {body[:200]!r}")
    return json.loads(body)


def wait_for(what, check, timeout, interval=0.2):
    """Polls check() until it returns something truthy; at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            value = check()
            if value:
                return value
        except (OSError, Failure, ValueError) as error:
            last = error
        if time.monotonic() >= deadline:
            raise Failure(f"timed out after {timeout:.0f} s waiting for {what}" + (f" (last error: {last})" if last else ""))
        time.sleep(interval)


def multipart(fields):
    """fields: [(name, filename or None, content_type, bytes)] -> (body, content type)."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, filename, ctype, data in fields:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        parts.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\nContent-Type: {ctype}\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def png(width, height, seed):
    """A small RGB PNG (a gradient), with the standard library only."""
    rows = b"".join(b"\x00" + bytes(((x * 5 + seed * 40) % 256, (y * 4) % 256, (x + y + seed * 90) % 256)
                                      [c] for x in range(width) for c in range(3)) for y in range(height))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


# --------------------------------------------------------------------------- processes

class Processes:
    """Children started here, each in its own process group, stopped by pid."""

    def __init__(self, logs_dir):
        self.logs_dir = logs_dir
        self.running = {}

    def start(self, name, argv, env=None, log_name=None):
        log_path = self.logs_dir / f"{log_name or name}.log"
        out = open(log_path, "ab")
        process = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
        out.close()
        self.running[name] = process
        log(f"started {name} (pid {process.pid})")
        return process

    def stop(self, name, timeout=10):
        process = self.running.pop(name, None)
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        log(f"stopped {name} (pid {process.pid})")

    def check_alive(self, name):
        process = self.running.get(name)
        if process is None or process.poll() is not None:
            tail = (self.logs_dir / f"{name}.log").read_text(errors="replace")[-2000:] if (self.logs_dir / f"{name}.log").exists() else ""
            raise Failure(f"{name} exited: {tail}")

    def stop_all(self):
        for name in reversed(list(self.running)):
            self.stop(name)


class Recorder(ThreadingHTTPServer):
    """The Discord stand-in: records each POSTed JSON body and answers 204 like Discord does."""

    daemon_threads = True

    def __init__(self):
        self.messages = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), RecorderHandler)

    def snapshot(self):
        with self.lock:
            return list(self.messages)


class RecorderHandler(BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("content-length", "0"))
        raw = self.rfile.read(length)
        entry = {"t": time.monotonic(), "path": self.path, "content_type": self.headers.get("content-type", "")}
        try:
            entry["body"] = json.loads(raw)
        except ValueError:
            entry["body"] = None
            entry["raw"] = raw.decode(errors="replace")
        with self.server.lock:
            self.server.messages.append(entry)
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


class Fixture(ThreadingHTTPServer):
    """Serves a fixed exposition as /metrics (cAdvisor's series, which no cAdvisor can produce here)."""

    daemon_threads = True

    def __init__(self, text):
        self.text = text.encode()
        super().__init__(("127.0.0.1", 0), FixtureHandler)


class FixtureHandler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/metrics" else 404)
        self.send_header("content-type", "text/plain; version=0.0.4")
        self.end_headers()
        if self.path == "/metrics":
            self.wfile.write(self.server.text)

    def log_message(self, *args):
        pass


# --------------------------------------------------------------------------- rendering configs

def replace_exactly(text, old, new, what):
    if old not in text:
        raise Failure(f"{what}: expected {old!r} in the committed config")
    return text.replace(old, new)


def render_prometheus(out_dir, addresses, drop_jobs):
    """The committed prometheus.yml and rules with this run's ports and fast intervals."""
    text = (OBS / "prometheus" / "prometheus.yml").read_text()
    for job in drop_jobs:
        pattern = re.compile(rf"^  - job_name: {re.escape(job)}\n(?:^    .*\n)+", re.M)
        text, n = pattern.subn("", text)
        if n != 1:
            raise Failure(f"prometheus.yml: cannot find the {job} job")
    for job, address in addresses.items():
        if job in drop_jobs:
            continue
        text = replace_exactly(text, f'"{DEFAULT_ADDRESSES[job]}"', f'"{address}"', "prometheus.yml")
    text = replace_exactly(text, "scrape_interval: 15s", "scrape_interval: 1s", "prometheus.yml")
    text = replace_exactly(text, "scrape_timeout: 10s", "scrape_timeout: 1s", "prometheus.yml")
    text = replace_exactly(text, "evaluation_interval: 15s", "evaluation_interval: 1s", "prometheus.yml")
    (out_dir / "rules").mkdir(parents=True)
    (out_dir / "prometheus.yml").write_text(text)
    for rules in (OBS / "prometheus" / "rules").glob("*.yml"):
        # `for:` durations are covered by the promtool unit tests; here they are 2 s so the test
        # takes seconds, not minutes.
        rendered, _ = re.subn(r"^(\s+)for: \S+$", r"\1for: 2s", rules.read_text(), flags=re.M)
        (out_dir / "rules" / rules.name).write_text(rendered)
    return out_dir / "prometheus.yml"


def render_alertmanager(out_dir, webhook_url):
    env = dict(os.environ, DISCORD_WEBHOOK_URL=webhook_url, GRAFANA_URL="http://grafana.example:3001",
               RUNBOOK_URL="https://runbooks.example/observability/runbooks.md")
    subprocess.run([str(OBS / "alertmanager" / "render.sh"), str(out_dir)], env=env, check=True, timeout=30)
    path = out_dir / "alertmanager.yml"
    text = path.read_text()
    if webhook_url not in text or "${" in text.replace("{{", ""):
        raise Failure("render.sh left a placeholder or lost the webhook URL")
    text = replace_exactly(text, "group_wait: 30s", "group_wait: 0s", "alertmanager.yml")
    text = replace_exactly(text, "group_wait: 10s", "group_wait: 0s", "alertmanager.yml")
    text = replace_exactly(text, "group_interval: 5m", "group_interval: 1s", "alertmanager.yml")
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- the test

class StackTest:
    def __init__(self, args, tmp):
        self.args = args
        self.tmp = tmp
        self.bin = Path(args.bin_dir)
        self.procs = Processes(tmp)
        self.ports = {name: free_port() for name in ("model-serving", "backend", "frontend", "s3", "pushgateway", "node", "prometheus", "alertmanager")}
        # The frontend is started when its binary exists (it is being written as this test is).
        self.with_frontend = (self.bin / "frontend").exists()
        self.addr = {name: f"127.0.0.1:{port}" for name, port in self.ports.items()}
        self.api_key = uuid.uuid4().hex
        self.s3_keys = ("stacktestaccess", uuid.uuid4().hex)
        self.discord = Recorder()
        self.cadvisor = Fixture((HERE / "fixtures" / "cadvisor.prom").read_text())
        self.results = {"frontend_started": (self.bin / "frontend").exists()}
        self.hit_ids = []

    # -- environment of the services
    def service_env(self, **extra):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PUSHGATEWAY", "QDRANT", "S3_", "API_KEY"))}
        env.update(RUST_LOG="info", LOG_FORMAT="json", AWS_EC2_METADATA_DISABLED="true",
                   NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
        env.update({k: str(v) for k, v in extra.items()})
        return env

    def start_model_serving(self):
        self.procs.start("model-serving", [str(self.bin / "model-serving"), "serve"], self.service_env(
            MODEL_DIR=self.args.model_dir, MODEL_SERVING_ADDR=self.addr["model-serving"], MODEL_SERVING_THREADS=1))

    def wait_ready(self, name, address, timeout=120):
        def ready():
            self.procs.check_alive(name)
            return http("GET", f"http://{address}/health/ready", timeout=2)[0] == 200
        wait_for(f"{name} ready", ready, timeout)

    def start(self):
        threading.Thread(target=self.discord.serve_forever, daemon=True).start()
        threading.Thread(target=self.cadvisor.serve_forever, daemon=True).start()
        discord_url = f"http://127.0.0.1:{self.discord.server_address[1]}/api/webhooks/000/stack-test-token"

        self.start_model_serving()
        self.procs.start("backend", [str(self.bin / "backend")], self.service_env(
            BACKEND_ADDR=self.addr["backend"], MODEL_SERVING_URL=f"http://{self.addr['model-serving']}",
            S3_EMBEDDED_ADDR=self.addr["s3"], S3_ACCESS_KEY=self.s3_keys[0], S3_SECRET_KEY=self.s3_keys[1],
            DATA_DIR=self.tmp / "data", API_KEY=self.api_key, INDEX_OPTIMIZE_AFTER_SECS=1,
            SEARCH_CANARY_INTERVAL_SECS=1, CATALOGUE_CHECK_INTERVAL_SECS=1))
        if self.with_frontend:
            self.procs.start("frontend", [str(self.bin / "frontend")], self.service_env(
                FRONTEND_ADDR=self.addr["frontend"], BACKEND_URL=f"http://{self.addr['backend']}"))
        self.procs.start("pushgateway", ["prometheus-pushgateway", f"--web.listen-address={self.addr['pushgateway']}",
                                         f"--persistence.file={self.tmp / 'pushgateway.data'}"])
        self.procs.start("node-exporter", ["prometheus-node-exporter", f"--web.listen-address={self.addr['node']}", "--no-collector.systemd"])

        am_dir = self.tmp / "alertmanager"
        am_config = render_alertmanager(am_dir, discord_url)
        subprocess.run(["amtool", "check-config", str(am_config)], check=True, timeout=30, stdout=subprocess.DEVNULL)
        self.procs.start("alertmanager", [
            "prometheus-alertmanager", f"--config.file={am_config}", f"--storage.path={am_dir / 'data'}",
            f"--web.listen-address={self.addr['alertmanager']}", "--cluster.listen-address=",
            f"--web.external-url=http://{self.addr['alertmanager']}"])

        addresses = {
            "model-serving": self.addr["model-serving"], "backend": self.addr["backend"], "frontend": self.addr["frontend"],
            "pushgateway": self.addr["pushgateway"], "node": self.addr["node"],
            "cadvisor": f"127.0.0.1:{self.cadvisor.server_address[1]}",
            "prometheus": self.addr["prometheus"], "alertmanager": self.addr["alertmanager"],
        }
        # Without a frontend binary its job is left out rather than firing ServiceDown for a
        # service that was never started (and its panels are reported as not checked).
        prom_config = render_prometheus(self.tmp / "prometheus", addresses, drop_jobs=[] if self.with_frontend else ["frontend"])
        subprocess.run(["promtool", "check", "config", str(prom_config)], check=True, timeout=30, stdout=subprocess.DEVNULL)
        self.procs.start("prometheus", [
            "prometheus", f"--config.file={prom_config}", f"--storage.tsdb.path={self.tmp / 'prometheus-data'}",
            f"--web.listen-address={self.addr['prometheus']}", f"--web.external-url=http://{self.addr['prometheus']}"])

        self.wait_ready("model-serving", self.addr["model-serving"])
        self.wait_ready("backend", self.addr["backend"])
        if self.with_frontend:
            self.wait_ready("frontend", self.addr["frontend"])
        for name, key in (("prometheus", "prometheus"), ("alertmanager", "alertmanager"), ("pushgateway", "pushgateway")):
            wait_for(f"{name} ready", lambda k=key, n=name: (self.procs.check_alive(n), http("GET", f"http://{self.addr[k]}/-/ready", timeout=2)[0] == 200)[1], 60)

        def all_up():
            targets = get_json(f"http://{self.addr['prometheus']}/api/v1/targets")["data"]["activeTargets"]
            down = [t["labels"]["job"] for t in targets if t["health"] != "up"]
            return len(targets) == len(addresses) - (not self.with_frontend) and not down
        wait_for("every scrape target up", all_up, 60, 0.5)
        log(f"all {len(addresses)} scrape targets up")

    # -- traffic
    def search(self, query):
        return http("GET", f"http://{self.addr['backend']}/v1/search?" + urllib.parse.urlencode({"q": query, "k": 5}), timeout=60)

    def traffic(self, tag=""):
        photos = [(p.name, "image/jpeg", p.read_bytes()) for p in
                  sorted((Path(self.args.dataset_dir) / "images").glob("*.jpg"))[:6]] if self.args.dataset_dir else []
        if not photos:   # no photo folder (a fresh CI machine): generated PNGs
            photos = [(f"generated-{i}.png", "image/png", png(48, 64, i)) for i in range(3)]
        queries = ["red summer dress", "white sneakers", "black leather jacket", "blue jeans", "striped shirt",
                   "gold watch", "brown handbag", "running shoes", "wool scarf", "denim skirt"]
        queries = [f"{q} {tag}".strip() for q in queries]
        ok = 0
        for _ in range(2):   # the second round is answered from the backend's query cache
            for q in queries:
                status, body = self.search(q)
                if status == 200:
                    ok += 1
                    self.hit_ids += [h["id"] for h in json.loads(body).get("hits", [])][:1]
            for name, ctype, data in photos:
                body, ctype = multipart([("file", name, ctype, data)])
                status, _ = http("POST", f"http://{self.addr['backend']}/v1/search/image?k=5", body, {"content-type": ctype}, 60)
                ok += status == 200
            status, _ = http("POST", f"http://{self.addr['backend']}/search-image", json.dumps({"text": "green hoodie", "k": 3}).encode(),
                             {"content-type": "application/json"})
            ok += status == 200
            for point in self.hit_ids[:3]:
                status, _ = http("GET", f"http://{self.addr['backend']}/v1/images/{point}/similar?k=3")
                ok += status == 200
        if self.with_frontend:
            for q in queries[:4]:
                status, _ = http("GET", f"http://{self.addr['frontend']}/?" + urllib.parse.urlencode({"q": q}))
                if status != 200:
                    raise Failure(f"frontend search page: {status}")
            http("GET", f"http://{self.addr['frontend']}/no-such-page")
            # Shoppers open results: the frontend counts each click (source, position) on its way
            # to the product page.
            for position, point in enumerate(self.hit_ids[:2], 1):
                http("GET", f"http://{self.addr['frontend']}/go/{point}?from=text&pos={position}")
        # Bad input: a 4xx at the backend and an error kind at model-serving.
        http("GET", f"http://{self.addr['backend']}/v1/search?k=5")
        body, ctype = multipart([("file", "broken.jpg", "image/jpeg", b"\xff\xd8\xff\xe0 not really a jpeg")])
        status, _ = http("POST", f"http://{self.addr['model-serving']}/encode_image", body, {"content-type": ctype})
        if status != 400:
            raise Failure(f"a corrupt image should give 400 at model-serving, got {status}")
        if ok == 0:
            raise Failure("no search succeeded")
        log(f"traffic: {ok} successful searches")

    def etl_load(self):
        if self.args.dataset_dir and (Path(self.args.dataset_dir) / "styles.csv").exists():
            dataset = ["--dataset", "fashion-product-images", "--source", self.args.dataset_dir]
        else:
            dataset = ["--dataset", "fashion-mnist", "--source", "/usr/share/datasets/fashion-mnist"]
        env = self.service_env(BACKEND_URL=f"http://{self.addr['backend']}", MODEL_SERVING_URL=f"http://{self.addr['model-serving']}",
                               API_KEY=self.api_key, S3_ENDPOINT=f"http://{self.addr['s3']}", S3_ACCESS_KEY=self.s3_keys[0],
                               S3_SECRET_KEY=self.s3_keys[1], PUSHGATEWAY_URL=f"http://{self.addr['pushgateway']}")
        with open(self.tmp / "etl.log", "ab") as out:
            done = subprocess.run([str(self.bin / "etl"), "load", *dataset, "--limit", "48"], env=env, stdout=out,
                                  stderr=subprocess.STDOUT, timeout=300)
        if done.returncode != 0:
            raise Failure(f"etl load failed ({done.returncode}); see {self.tmp / 'etl.log'}")
        pushed = get_json(f"http://{self.addr['pushgateway']}/api/v1/metrics")["data"]
        if not any(group["labels"].get("job") == "etl" for group in pushed):
            raise Failure("the ETL pushed nothing to the Pushgateway")
        self.loaded_at = time.monotonic()
        log("etl load done, metrics pushed to the Pushgateway")

    # -- 1. promtool check metrics on the real /metrics
    def check_metrics(self):
        for name in ("model-serving", "backend") + (("frontend",) if self.with_frontend else ()):
            status, body = http("GET", f"http://{self.addr[name]}/metrics")
            if status != 200:
                raise Failure(f"{name} /metrics: {status}")
            done = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True, timeout=30)
            problems = (done.stdout + done.stderr).decode().strip()
            if done.returncode != 0 or problems:
                raise Failure(f"promtool check metrics on {name}: rc={done.returncode} {problems}")
            families = len(set(re.findall(rb"^# TYPE (\S+)", body, re.M)))
            log(f"promtool check metrics: {name} clean ({families} metric families)")
            self.results[f"promtool_check_metrics_{name}_families"] = families

    # -- 3. the alert path
    def messages_matching(self, predicate):
        return [m for m in self.discord.snapshot() if m["body"] and predicate(m["body"])]

    @staticmethod
    def embed(body):
        embeds = body.get("embeds") or [{}]
        return embeds[0]

    def check_quality_alert(self):
        """The shop serves the generated tiny random model, not the trained one: the canary's
        questions (captions -> their products) fail, and SearchQualityDropped reaches Discord
        with its runbook and the search-quality dashboard, while every service is up."""
        def firing(body):
            title = self.embed(body).get("title", "")
            return title.startswith("[FIRING") and "SearchQualityDropped" in title
        message = wait_for("SearchQualityDropped at the Discord stand-in", lambda: self.messages_matching(firing), 60, 0.2)[0]
        description = self.embed(message["body"]).get("description", "")
        expected = ["caption_recall_at_10",
                    "[Runbook](https://runbooks.example/observability/runbooks.md#searchqualitydropped)",
                    "[Dashboard](http://grafana.example:3001/d/fashion-search-search-quality)"]
        missing = [e for e in expected if e not in description]
        if missing:
            raise Failure(f"SearchQualityDropped's Discord embed lacks {missing}:\n{description}")
        latency = message["t"] - self.loaded_at
        log(f"SearchQualityDropped (tiny random model) reached the Discord stand-in {latency:.1f} s after the catalogue was loaded")
        self.results["quality_alert_latency_from_load_s"] = round(latency, 2)

    def check_alert_path(self):
        prom = f"http://{self.addr['prometheus']}"
        am = f"http://{self.addr['alertmanager']}"
        wait_for("no ServiceDown before the outage",
                 lambda: not get_json(f"{prom}/api/v1/query?query=" + urllib.parse.quote('ALERTS{alertname="ServiceDown"}'))["data"]["result"], 20)

        def firing(body):
            title = self.embed(body).get("title", "")
            return title.startswith("[FIRING") and "ServiceDown · model-serving" in title

        def resolved(body):
            return self.embed(body).get("title", "").startswith("[RESOLVED] ServiceDown · model-serving")

        stopped_at = time.monotonic()
        self.procs.stop("model-serving")
        # Searches during the outage: they fail (5xx, upstream errors), as users would see.
        for q in ("outage one", "outage two", "outage three"):
            self.search(q)
        message = wait_for("ServiceDown at the Discord stand-in", lambda: self.messages_matching(firing), ALERT_BOUND_S, 0.1)[0]
        fire_latency = message["t"] - stopped_at
        log(f"ServiceDown reached the Discord stand-in {fire_latency:.1f} s after model-serving stopped")
        self.results["alert_fire_latency_s"] = round(fire_latency, 2)
        self.check_discord_payload(message, firing=True)

        self.check_inhibition(am)

        started_at = time.monotonic()
        self.start_model_serving()
        self.wait_ready("model-serving", self.addr["model-serving"])
        ready_at = time.monotonic()
        if self.with_frontend:   # ServiceDown is grouped per service; make sure it is not the frontend's
            self.procs.check_alive("frontend")
        message = wait_for("the resolved message", lambda: self.messages_matching(resolved), ALERT_BOUND_S, 0.1)[0]
        log(f"resolved message arrived {message['t'] - ready_at:.1f} s after model-serving was ready "
            f"({message['t'] - started_at:.1f} s after its start)")
        self.results["alert_resolve_latency_from_ready_s"] = round(message["t"] - ready_at, 2)
        self.results["alert_resolve_latency_from_start_s"] = round(message["t"] - started_at, 2)
        self.check_discord_payload(message, firing=False)

        # The backend's circuit breaker lets searches through again once model-serving answers.
        wait_for("backend searches to succeed again", lambda: self.search(f"after the outage {uuid.uuid4().hex[:6]}")[0] == 200, 60, 0.5)
        self.results["search_recovered_after_ready_s"] = round(time.monotonic() - ready_at, 2)
        log(f"searches succeed again {self.results['search_recovered_after_ready_s']:.1f} s after model-serving was ready")

    def check_discord_payload(self, message, firing):
        body = message["body"]
        if not message["content_type"].startswith("application/json"):
            raise Failure(f"Discord webhook POST with content type {message['content_type']!r}")
        if not message["path"].startswith("/api/webhooks/000/stack-test-token"):
            raise Failure(f"posted to {message['path']}, not the configured webhook path")
        embeds = body.get("embeds")
        if not isinstance(embeds, list) or len(embeds) != 1:
            raise Failure(f"Discord payload must carry one embed: {body}")
        embed = embeds[0]
        title, description, color = embed.get("title", ""), embed.get("description", ""), embed.get("color")
        if not isinstance(color, int) or len(title) > 256 or len(description) > 4096:
            raise Failure(f"embed outside Discord's limits or without a colour: {embed}")
        expected = [
            "**model-serving is down**",
            f"Prometheus cannot scrape model-serving at {self.addr['model-serving']}",
            "**Value:** up = 0",
            "[Runbook](https://runbooks.example/observability/runbooks.md#servicedown)",
            "[Dashboard](http://grafana.example:3001/d/fashion-search-overview)",
            f"[Query](http://{self.addr['prometheus']}/graph?",
            "**Since:**",
        ]
        expected.append("🔴" if firing else "✅")
        if not firing:
            expected.append("**resolved:**")
        missing = [e for e in expected if e not in description]
        if missing:
            raise Failure(f"Discord embed lacks {missing}:\n{description}")
        if "(critical)" not in title:
            raise Failure(f"title without severity: {title}")
        self.results["discord_firing_color" if firing else "discord_resolved_color"] = color
        if not firing and color == self.results.get("discord_firing_color"):
            raise Failure("resolved and firing messages have the same colour")
        log(f"Discord payload ok ({'firing' if firing else 'resolved'}): {title!r}, colour {color:#08x}")
        self.results["discord_example_" + ("firing" if firing else "resolved")] = body

    def check_inhibition(self, am):
        """While ServiceDown{service="model-serving"} fires, that service's latency alert is inhibited
        and another service's is not (the real Alertmanager with the committed inhibit rules)."""
        now = time.time()
        ends = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + 120))
        alerts = [{"labels": {"alertname": "SearchRequestHighLatency", "service": service, "severity": "warning", "source": "stack-test"},
                   "annotations": {"summary": f"synthetic latency alert for {service}", "value": "p95 = 1s",
                                   "runbook": "searchrequesthighlatency", "dashboard": "fashion-search-search-path"},
                   "endsAt": ends} for service in ("model-serving", "backend")]
        status, body = http("POST", f"{am}/api/v2/alerts", json.dumps(alerts).encode(), {"content-type": "application/json"})
        if status != 200:
            raise Failure(f"posting alerts to Alertmanager: {status} {body[:200]!r}")

        def states():
            found = get_json(f"{am}/api/v2/alerts?" + urllib.parse.urlencode({"filter": 'source="stack-test"'}))
            return {a["labels"]["service"]: a["status"] for a in found} if len(found) == 2 else None
        wait_for("the synthetic alerts in Alertmanager", states, 10)
        wait_for("the backend latency alert at the Discord stand-in",
                 lambda: self.messages_matching(lambda b: "SearchRequestHighLatency · backend" in self.embed(b).get("title", "")), ALERT_BOUND_S, 0.1)
        current = states()
        if current["model-serving"]["state"] != "suppressed" or not current["model-serving"]["inhibitedBy"]:
            raise Failure(f"model-serving's latency alert is not inhibited by ServiceDown: {current['model-serving']}")
        if current["backend"]["state"] != "active":
            raise Failure(f"backend's latency alert should be active: {current['backend']}")
        if self.messages_matching(lambda b: "SearchRequestHighLatency · model-serving" in self.embed(b).get("title", "")):
            raise Failure("an inhibited alert reached Discord")
        log("inhibition ok: ServiceDown(model-serving) suppresses its latency alert, not backend's")
        # End them now, so they do not linger.
        for alert in alerts:
            alert["endsAt"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 1))
        http("POST", f"{am}/api/v2/alerts", json.dumps(alerts).encode(), {"content-type": "application/json"})

    # -- 4. every dashboard panel query returns series
    def check_dashboards(self):
        prom = f"http://{self.addr['prometheus']}"
        checked, nan_only, failures, skipped = 0, [], [], []
        for path in sorted((OBS / "grafana" / "dashboards").glob("*.json")):
            dashboard = json.loads(path.read_text())
            for panel in dashboard["panels"]:
                for target in panel.get("targets", []):
                    expr = (target["expr"].replace("$__rate_interval", "1m").replace("$__interval", "15s")
                            .replace("$service", ".+"))
                    if not self.with_frontend and "frontend" in expr:
                        skipped.append(f"{path.name} / {panel['title']}")
                        continue
                    if re.search(r"\$\{?[A-Za-z_]", expr):
                        failures.append(f"{path.name} / {panel['title']}: unknown variable in {expr}")
                        continue

                    seen = []

                    def query(e=expr):
                        data = get_json(f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": e}))
                        if data["status"] != "success":
                            raise Failure(f"{data}")
                        result = data["data"]["result"]
                        seen[:] = result
                        # Series with a number; a quantile over a window with no new samples is NaN.
                        return result if any(r["value"][1] not in ("NaN", "+Inf", "-Inf") for r in result) else None
                    try:
                        wait_for(f"series for {panel['title']!r}: {expr}", query, 15, 0.5)
                    except Failure as error:
                        if not seen:
                            failures.append(f"{path.name} / {panel['title']}: {error}")
                            continue
                        nan_only.append(f"{path.name} / {panel['title']}: {expr}")
                    checked += 1
        if failures:
            raise Failure("dashboard queries without series:\n  " + "\n  ".join(failures))
        log(f"dashboards: all {checked} panel queries returned series ({len(nan_only)} of them only NaN values after 15 s)")
        for item in nan_only:
            log(f"  NaN-only: {item}")
        for item in skipped:
            log(f"  not checked (no frontend running): {item}")
        self.results["panel_queries_checked"] = checked
        self.results["panel_queries_skipped_no_frontend"] = skipped
        self.results["panel_queries_nan_only"] = nan_only

    # -- 5. log fields
    def check_log_fields(self):
        lines, not_json, fields, samples = 0, 0, {}, []
        for name in ("model-serving", "backend", "etl") + (("frontend",) if self.with_frontend else ()):
            for raw in (self.tmp / f"{name}.log").read_text(errors="replace").splitlines():
                try:
                    record = json.loads(raw)
                except ValueError:
                    not_json += 1
                    continue
                lines += 1
                if len(samples) < 200:
                    samples.append(record)
                for key, value in record.items():
                    fields.setdefault(key, set()).add(type(value).__name__)
        problems = logs_config.check_fields_against(fields, samples)
        if problems:
            raise Failure("log configuration uses fields the services do not write:\n  " + "\n  ".join(problems))
        log(f"log fields: {lines} real JSON lines ({not_json} other lines), {len(fields)} distinct fields; "
            f"Fluent Bit, the index template and the Kibana objects use only those")
        self.results["log_lines"] = lines
        self.results["log_fields"] = sorted(fields)

    def run(self):
        self.start()
        self.traffic("before")
        self.etl_load()
        self.check_metrics()
        self.check_quality_alert()
        self.check_alert_path()
        self.traffic("after")
        time.sleep(2)   # new series of the restarted model-serving: a scrape before more samples
        self.traffic("again")
        time.sleep(3)   # a few scrapes and rule evaluations after the last requests
        self.check_dashboards()
        self.check_log_fields()

    def close(self):
        self.procs.stop_all()
        self.discord.shutdown()
        self.cadvisor.shutdown()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin-dir", required=True, help="where the dev binaries model-serving, backend, etl are")
    parser.add_argument("--model-dir", required=True, help="a model folder (the tiny test model)")
    parser.add_argument("--dataset-dir", default="", help="Fashion Product Images folder (else Fashion-MNIST from the Debian package)")
    parser.add_argument("--keep", action="store_true", help="keep the temp directory (logs, configs)")
    parser.add_argument("--report", help="write the measured numbers as JSON here")
    args = parser.parse_args()
    for tool in ("prometheus", "promtool", "prometheus-alertmanager", "amtool", "prometheus-pushgateway", "prometheus-node-exporter"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found: run `make system-deps`")
    for binary in ("model-serving", "backend", "etl"):
        if not (Path(args.bin_dir) / binary).exists():
            sys.exit(f"{args.bin_dir}/{binary} not found: cargo build --bins first")

    # SIGTERM (e.g. a CI timeout) unwinds like Ctrl-C so every child is stopped.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    tmp = Path(tempfile.mkdtemp(prefix="fashion-stack-test-"))
    test = StackTest(args, tmp)
    ok = False
    try:
        test.run()
        ok = True
    except Failure as error:
        log(f"FAILED: {error}")
    except KeyboardInterrupt:
        log("interrupted")
    finally:
        try:
            test.close()
            if args.report:
                Path(args.report).write_text(json.dumps(test.results, indent=2, ensure_ascii=False) + "\n")
            if not ok:
                for log_file in sorted(tmp.glob("*.log")):
                    tail = log_file.read_text(errors="replace").splitlines()[-15:]
                    print(f"--- {log_file.name} (last lines)\n" + "\n".join(tail), flush=True)
        finally:
            if args.keep:
                log(f"logs and configs kept in {tmp}")
            else:
                shutil.rmtree(tmp, ignore_errors=True)
    log("PASSED" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
