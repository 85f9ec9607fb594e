#!/usr/bin/env python3
"""The backend's API contract, fuzzed: schemathesis (every check) against the running backend.

Starts model-serving and the backend (debug binaries, the tiny model, embedded Qdrant and S3) on
loopback, indexes a few photos, then lets schemathesis generate requests from /openapi.json.
The write key is given, so add-by-URL is fuzzed too: the backend runs with
BACKEND_FETCH_ONLY_ALLOWLISTED and an allowlist of one loopback image server started here, so no
generated URL can leave the machine (no name is even resolved). Every process started here is
stopped by pid. Exit status: schemathesis's.
"""

import argparse
import http.server
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
KEY = "contract-write-key"


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


def wait_ready(url, proc, name, seconds=120):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{name} exited during start-up (code {proc.returncode})")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"{name} not ready after {seconds} s")


def image_server(photo):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("content-type", "image/jpeg")
            self.send_header("content-length", str(len(photo)))
            self.end_headers()
            self.wfile.write(photo)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def upload(url, photo, fields):
    boundary = uuid.uuid4().hex
    body = b""
    for name, value in fields.items():
        body += f'--{boundary}\r\ncontent-disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
    body += (
        f'--{boundary}\r\ncontent-disposition: form-data; name="file"; filename="p.jpg"\r\n'
        "content-type: image/jpeg\r\n\r\n"
    ).encode() + photo + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(url, data=body, method="POST")
    request.add_header("content-type", f"multipart/form-data; boundary={boundary}")
    request.add_header("x-api-key", KEY)
    with urllib.request.urlopen(request, timeout=60) as r:
        return json.load(r)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bin-dir", required=True)
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--dataset-dir", required=True)
    ap.add_argument("--schemathesis", required=True)
    ap.add_argument("--max-examples", type=int, default=25)
    ap.add_argument("--max-time", type=int, default=240)
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="contract-")
    procs = []

    def stop_all(*_):
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(procs):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    signal.signal(signal.SIGTERM, lambda *_: (stop_all(), sys.exit(143)))
    try:
        photos = sorted(os.listdir(os.path.join(args.dataset_dir, "images")))[:6]
        photo_bytes = [open(os.path.join(args.dataset_dir, "images", p), "rb").read() for p in photos]
        images = image_server(photo_bytes[0])
        image_addr = f"127.0.0.1:{images.server_address[1]}"

        env = dict(os.environ, LOG_FORMAT="json", RUST_LOG="warn", AWS_EC2_METADATA_DISABLED="true")
        ms_addr = f"127.0.0.1:{free_port()}"
        ms_log = open(os.path.join(work, "model-serving.log"), "w")
        procs.append(subprocess.Popen(
            [os.path.join(args.bin_dir, "model-serving"), "serve"],
            env=dict(env, MODEL_DIR=args.model_dir, MODEL_SERVING_ADDR=ms_addr),
            stdout=ms_log, stderr=subprocess.STDOUT))
        wait_ready(f"http://{ms_addr}/health/ready", procs[-1], "model-serving")

        addr = f"127.0.0.1:{free_port()}"
        backend_log = open(os.path.join(work, "backend.log"), "w")
        procs.append(subprocess.Popen(
            [os.path.join(args.bin_dir, "backend")],
            env=dict(
                env,
                BACKEND_ADDR=addr,
                MODEL_SERVING_URL=f"http://{ms_addr}",
                DATA_DIR=os.path.join(work, "data"),
                S3_EMBEDDED_ADDR=f"127.0.0.1:{free_port()}",
                S3_ACCESS_KEY="contract-access",
                S3_SECRET_KEY="contract-secret-key-0123456789",
                API_KEY=KEY,
                BACKEND_FETCH_ALLOW=image_addr,
                BACKEND_FETCH_ONLY_ALLOWLISTED="true",
                # The operators' query summary on, so its route answers 200 too.
                BACKEND_QUERY_SUMMARY="true",
                # The fuzzer is one client sending fast; rate limits are tested elsewhere.
                BACKEND_SEARCH_RATE_PER_SEC="0",
                BACKEND_WRITE_RATE_PER_SEC="0",
            ),
            stdout=backend_log, stderr=subprocess.STDOUT))
        wait_ready(f"http://{addr}/health/ready", procs[-1], "backend")

        for i, photo in enumerate(photo_bytes):
            upload(f"http://{addr}/v1/images", photo, {
                "dataset": "contract", "gender": ["Men", "Women"][i % 2],
                "article_type": "Tshirts", "colour": "Blue", "caption": f"photo {i}"})
        print(f"contract: backend on {addr}, {len(photo_bytes)} photos indexed, "
              f"URL fetches limited to {image_addr}", flush=True)

        command = [
            args.schemathesis, "--config-file", os.path.join(HERE, "schemathesis.toml"), "run",
            f"http://{addr}/openapi.json",
            # No --checks on the command line: every check is on by default, and a command-line
            # selection would override the per-operation rule of schemathesis.toml (schemathesis
            # gives the command line the last word), which is how CI once failed on a form's
            # text `true` counted as an accepted type violation.
            "-H", f"x-api-key: {KEY}",
            "--max-examples", str(args.max_examples),
            "--phases", "examples,coverage,fuzzing,stateful",
            "--max-time", str(args.max_time),
            "--workers", "1",
            "--seed", "20261201",
            "--request-timeout", "30",
            "--max-redirects", "0",
            "--suppress-health-check", "too_slow",
        ]
        # In the scratch folder: schemathesis keeps its state (.schemathesis/) in the working one.
        run = subprocess.run(command, cwd=work, env=dict(env, NO_COLOR="1"))
        for proc, name in zip(procs, ["model-serving", "backend"]):
            if proc.poll() is not None:
                print(f"contract: {name} died during the run (code {proc.returncode})")
                return 1
        return run.returncode
    finally:
        stop_all()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
