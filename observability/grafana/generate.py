#!/usr/bin/env python3
"""Writes the Grafana dashboards (observability/grafana/dashboards/*.json) from the panel lists
below, so every panel has the same shape and every query lives in one readable place.

    python3 observability/grafana/generate.py            # rewrite the JSON files
    python3 observability/grafana/generate.py --check    # fail if the committed JSON is stale

Queries use the recording rules (observability/prometheus/rules/recording.yml) where one exists and
the services' own metric names otherwise. The end-to-end test runs every query against a live
Prometheus holding the services' real data; typecheck/ checks the JSON against @grafana/schema.
"""

import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "dashboards"
PROMETHEUS = {"type": "prometheus", "uid": "prometheus"}
SERVICES = "model-serving|backend|frontend"
POLLED = '/metrics|/health/.*'
FS = 'fstype!~"tmpfs|ramfs|overlay|squashfs|nsfs", mountpoint!~"/(run|sys|proc|dev)($|/.*)"'


def target(expr, legend="", ref="A"):
    return {"datasource": PROMETHEUS, "refId": ref, "expr": expr, "legendFormat": legend,
            "range": True, "instant": False}


def timeseries(title, queries, unit="short", description="", stack=False, max_=None):
    defaults = {
        "unit": unit,
        "color": {"mode": "palette-classic"},
        "custom": {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 10 if stack else 0,
            "showPoints": "never",
            "spanNulls": False,
            "stacking": {"mode": "normal" if stack else "none", "group": "A"},
        },
        "thresholds": {"mode": "absolute", "steps": [{"color": "green", "value": None}]},
    }
    if max_ is not None:
        defaults["max"] = max_
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": PROMETHEUS,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "legend": {"showLegend": True, "displayMode": "list", "placement": "bottom", "calcs": []},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": [target(e, l, chr(ord("A") + i)) for i, (e, l) in enumerate(queries)],
    }


def stat(title, queries, unit="short", description="", thresholds=None):
    steps = thresholds or [{"color": "green", "value": None}]
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": PROMETHEUS,
        "fieldConfig": {
            "defaults": {"unit": unit, "color": {"mode": "thresholds"},
                         "thresholds": {"mode": "absolute", "steps": steps}},
            "overrides": [],
        },
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "orientation": "auto",
            "textMode": "auto",
            "colorMode": "background",
            "graphMode": "none",
            "justifyMode": "auto",
            "wideLayout": True,
            "showPercentChange": False,
            "percentChangeColorMode": "standard",
        },
        "targets": [target(e, l, chr(ord("A") + i)) for i, (e, l) in enumerate(queries)],
    }


RED_BELOW_1 = [{"color": "red", "value": None}, {"color": "green", "value": 1}]
RED_BELOW_HALF = [{"color": "red", "value": None}, {"color": "green", "value": 0.5}]


def dashboard(uid, title, description, rows, variables=()):
    panels, y, pid = [], 0, 1
    for row in rows:
        width = 24 // len(row)
        height = 5 if all(p["type"] == "stat" for p in row) else 8
        for i, panel in enumerate(row):
            panel["id"] = pid
            panel["gridPos"] = {"x": i * width, "y": y, "w": width, "h": height}
            panels.append(panel)
            pid += 1
        y += height
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["fashion-search"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 41,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "weekStart": "",
        "links": [{"title": "Fashion search", "type": "dashboards", "tags": ["fashion-search"],
                   "asDropdown": True, "icon": "external link", "includeVars": False,
                   "keepTime": True, "targetBlank": False, "tooltip": "", "url": ""}],
        "annotations": {"list": [{
            "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
            "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
            "name": "Annotations & Alerts", "type": "dashboard"}]},
        "templating": {"list": list(variables)},
        "panels": panels,
    }


def service_variable():
    return {
        "name": "service",
        "label": "Service",
        "type": "query",
        "datasource": PROMETHEUS,
        "query": {"query": "label_values(http_requests_total, service)", "refId": "service"},
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "allValue": ".+",
        "current": {"text": "All", "value": "$__all"},
        "options": [],
        "hide": 0,
        "sort": 1,
        "regex": "",
        "skipUrlSync": False,
    }


def overview():
    s = 'service=~"$service"'
    return dashboard(
        "fashion-search-overview", "Fashion search · service overview",
        "Rate, errors and duration of every service, from the shared telemetry crate's HTTP metrics.",
        [
            [stat("model-serving up", [('up{job="model-serving"}', "{{instance}}")], thresholds=RED_BELOW_1),
             stat("backend up", [('up{job="backend"}', "{{instance}}")], thresholds=RED_BELOW_1),
             stat("frontend up", [('up{job="frontend"}', "{{instance}}")], thresholds=RED_BELOW_1),
             stat("Version", [("build_info", "{{service}} {{version}}")])],
            # One place to look: quality and catalogue health beside latency and errors (their
            # dashboards: search quality, search path).
            [stat("Search quality (lowest alerted check)",
                  [('min(search_quality_score{check=~"caption_recall_at_10|type_precision_at_10|photo_recall_at_1"})', "")],
                  "percentunit", "The canary's lowest score; SearchQualityDropped under 50% (search-quality dashboard).",
                  thresholds=RED_BELOW_HALF),
             stat("Broken images in the catalogue sample",
                  [('sum(max by (problem) (catalogue_check_problems{problem=~"missing_object|presign_failed"}))', "")], "short",
                  "Sampled points whose object is missing or whose pre-signed URL fails (search-quality dashboard).",
                  thresholds=[{"color": "green", "value": None}, {"color": "red", "value": 1}]),
             stat("Searches with no hits (5m)",
                  [('sum(rate(backend_search_outcomes_total{outcome!="hits"}[5m])) / sum(rate(backend_search_outcomes_total[5m]))', "")],
                  "percentunit", "Empty or below the relevance floor, all kinds."),
             stat("Search p99 (5m)", [('max(stage:backend_search_stage_seconds:quantile5m{stage="total", quantile="0.99"})', "")], "s",
                  "Whole search inside the backend (search-path dashboard).")],
            # Replicas and Qdrant peers (deploy/: every replica and node is scraped, never the
            # load balancer): a lost one shows here and fires ServiceDown / QdrantPeerDown.
            [timeseries("Replicas and Qdrant peers up",
                        [('up{job=~"model-serving|backend|frontend|qdrant"}', "{{job}} {{instance}}")], "short",
                        "1 per scraped replica or Qdrant node; 0 when lost (ServiceDown, QdrantPeerDown).", max_=1),
             timeseries("Replicas serving, by service",
                        [('count by (job) (up{job=~"model-serving|backend|frontend|qdrant"} == 1)', "{{job}} up"),
                         ('count by (job) (up{job=~"model-serving|backend|frontend|qdrant"})', "{{job}} scraped")], "short",
                        "Behind nginx a lost replica costs capacity, not answers; a second lost Qdrant peer loses shards.")],
            [timeseries("Requests per second", [(f"service:http_requests:rate5m{{{s}}}", "{{service}}")],
                        "reqps", "User traffic; /metrics and /health/* left out."),
             timeseries("Error ratio (5xx)", [(f"service:http_request_error_ratio:rate5m{{{s}}}", "{{service}}")],
                        "percentunit", "Share of requests answered with a server error.")],
            [timeseries("Latency p50 / p95 / p99",
                        [(f"service:http_request_duration_seconds:quantile5m{{{s}}}", "{{service}} p{{quantile}}")], "s"),
             timeseries("In flight", [(f"sum by (service) (http_requests_in_flight{{{s}}})", "{{service}}")], "short")],
            [timeseries("Resident memory", [('process_resident_memory_bytes{job=~"$service"}', "{{job}}")], "bytes",
                        "Each service's RSS, from /proc at every scrape (the model's ONNX sessions dominate model-serving's)."),
             timeseries("CPU", [('rate(process_cpu_seconds_total{job=~"$service"}[$__rate_interval])', "{{job}}")], "short",
                        "Cores busy per service (user + system). The counter moves in whole seconds, so short windows are coarse.")],
            [timeseries("Frontend pages by what the shopper saw",
                        [("sum by (page, shown) (rate(frontend_pages_total[$__rate_interval]))", "{{page}} {{shown}}")], "reqps",
                        "shown: ok, empty (no hits) or error (the backend failed and the page says so)."),
             timeseries("Frontend calls to the backend",
                        [("sum by (call, outcome) (rate(frontend_backend_calls_total[$__rate_interval]))", "{{call}} {{outcome}}")], "reqps")],
            [timeseries("Requests by route and status",
                        [(f'sum by (service, route, status) (rate(http_requests_total{{{s}, route!~"{POLLED}"}}[$__rate_interval]))',
                          "{{service}} {{route}} {{status}}")], "reqps"),
             timeseries("p95 latency by route",
                        [(f'histogram_quantile(0.95, sum by (service, route, le) (rate(http_request_duration_seconds_bucket{{{s}, route!~"{POLLED}"}}[$__rate_interval])))',
                          "{{service}} {{route}}")], "s")],
        ],
        [service_variable()],
    )


def search_path():
    return dashboard(
        "fashion-search-search-path", "Fashion search · search path",
        "Where a search spends its time: query encoding (model-serving), vector index search, pre-signing; and the latency SLO (99% under 500 ms).",
        [
            [stat("Searches/s", [("sum(kind:backend_searches:rate5m)", "")], "reqps"),
             stat("Slower than 500 ms (1h)", [("slo:search_latency_bad:ratio_rate1h", "")], "percentunit",
                  thresholds=[{"color": "green", "value": None}, {"color": "red", "value": 0.01}]),
             stat("Budget burn rate (1h)", [("slo:search_latency_bad:ratio_rate1h / 0.01", "")], "x",
                  thresholds=[{"color": "green", "value": None}, {"color": "orange", "value": 1}, {"color": "red", "value": 14.4}]),
             stat("Points in the index", [("backend_index_points", "")])],
            [timeseries("Stage latency p95", [('stage:backend_search_stage_seconds:quantile5m{quantile="0.95"}', "{{stage}}")], "s",
                        "encode = query embedding (cache or model-serving), index_search, presign, total."),
             timeseries("Mean time per stage (stacked)", [('stage:backend_search_stage_seconds:mean5m{stage!="total"}', "{{stage}}")], "s", stack=True)],
            [timeseries("Stage latency p50 / p99", [('stage:backend_search_stage_seconds:quantile5m{quantile=~"0.5|0.99"}', "{{stage}} p{{quantile}}")], "s"),
             timeseries("Searches by kind", [("kind:backend_searches:rate5m", "{{kind}}")], "reqps")],
            [timeseries("Slow searches (SLO: under 1%)",
                        [("slo:search_latency_bad:ratio_rate5m", "5m"), ("slo:search_latency_bad:ratio_rate1h", "1h"),
                         ("slo:search_latency_bad:ratio_rate6h", "6h")], "percentunit"),
             timeseries("Query cache hit ratio",
                        [('sum(result:backend_query_cache:rate5m{result="hit"}) / sum(result:backend_query_cache:rate5m)', "hit ratio")],
                        "percentunit", max_=1)],
            [timeseries("Text encoding inside model-serving",
                        [('modality:model_serving_queue_wait_seconds:quantile5m{modality="text", quantile="0.95"}', "queue wait p95"),
                         ('modality:model_serving_inference_seconds:quantile5m{modality="text", quantile="0.95"}', "inference p95")], "s"),
             timeseries("Upstream failures and breaker",
                        [("sum by (upstream) (rate(backend_upstream_errors_total[$__rate_interval]))", "{{upstream}} errors/s"),
                         ("max(backend_model_breaker_open)", "breaker open")], "short")],
            [timeseries("Searches without matches (share of each kind)",
                        [('sum by (kind, outcome) (rate(backend_search_outcomes_total{outcome!="hits"}[$__rate_interval]))'
                          ' / ignoring (outcome) group_left sum by (kind) (rate(backend_search_outcomes_total[$__rate_interval]))',
                          "{{kind}} {{outcome}}")], "percentunit",
                        "empty: nothing in the index or the filters; below_floor: a text search nothing matched at the model's relevance floor (the shop says no good matches).",
                        max_=1),
             timeseries("Searches by outcome",
                        [("sum by (kind, outcome) (rate(backend_search_outcomes_total[$__rate_interval]))", "{{kind}} {{outcome}}")], "reqps")],
        ],
    )


def search_quality():
    checks = "caption_recall_at_10|type_precision_at_10|photo_recall_at_1"
    return dashboard(
        "fashion-search-search-quality", "Fashion search · search quality",
        "The search-quality canary (backend/server/src/canary.rs): known questions built from the catalogue, asked of the live "
        "index by meaning every SEARCH_CANARY_INTERVAL_SECS; SearchQualityDropped fires when a check stays under 50% for 10 minutes. "
        "And what shoppers get: searches without matches.",
        [
            [stat("Caption → its product (top 10)", [('min(search_quality_score{check="caption_recall_at_10"})', "")], "percentunit",
                  thresholds=RED_BELOW_HALF),
             stat("Type → that type (top 10)", [('min(search_quality_score{check="type_precision_at_10"})', "")], "percentunit",
                  thresholds=RED_BELOW_HALF),
             stat("Photo → itself (first)", [('min(search_quality_score{check="photo_recall_at_1"})', "")], "percentunit",
                  thresholds=RED_BELOW_HALF),
             stat("Last canary run", [("time() - max(search_quality_last_run_timestamp_seconds)", "")], "s",
                  thresholds=[{"color": "green", "value": None}, {"color": "red", "value": 600}])],
            [timeseries("Canary scores by check", [("min by (check) (search_quality_score)", "{{check}}")], "percentunit",
                        f"Alerted checks: {checks.replace('|', ', ')} (under 50% for 10 minutes). caption_mrr is shown, not alerted: "
                        "it falls on large catalogues without anything being wrong.", max_=1),
             timeseries("Canary run time and questions", [("max(search_quality_run_seconds)", "run seconds"),
                                                         ("max by (check) (search_quality_questions)", "{{check}} questions")], "short",
                        "A run with an unchanged model asks the index only (text embeddings come from the query cache).")],
            [timeseries("Searches without matches (share of each kind)",
                        [('sum by (kind, outcome) (rate(backend_search_outcomes_total{outcome!="hits"}[$__rate_interval]))'
                          ' / ignoring (outcome) group_left sum by (kind) (rate(backend_search_outcomes_total[$__rate_interval]))',
                          "{{kind}} {{outcome}}")], "percentunit",
                        "Shoppers' zero-result (empty) and below-relevance (below_floor) rates.", max_=1),
             timeseries("Points in the catalogue", [("max by (instance) (backend_index_points)", "{{instance}}")], "short",
                        "The catalogue the canary draws from; its set is rebuilt when the model or the size changes by a tenth.")],
            [timeseries("Staged model beside the live one: searches without matches",
                        [('sum by (kind, outcome) (rate(backend_staged_searches_total{outcome!="hits"}[$__rate_interval]))'
                          ' / ignoring (outcome) group_left sum by (kind) (rate(backend_staged_searches_total[$__rate_interval]))',
                          "staged {{kind}} {{outcome}}"),
                         ('(sum by (kind, outcome) (rate(backend_search_outcomes_total{outcome!="hits"}[$__rate_interval]))'
                          ' - sum by (kind, outcome) (rate(backend_staged_searches_total{outcome!="hits"}[$__rate_interval])))'
                          ' / ignoring (outcome) group_left() (sum by (kind) (rate(backend_search_outcomes_total[$__rate_interval]))'
                          ' - sum by (kind) (rate(backend_staged_searches_total[$__rate_interval])))',
                          "live {{kind}} {{outcome}}")], "percentunit",
                        "A model staged beside the live one (etl reindex --next --stage) answers the searches that name it (model=): "
                        "its zero-result and below-floor shares against the live model's, before it is promoted.", max_=1),
             timeseries("Searches on the staged model",
                        [("sum by (kind) (rate(backend_staged_searches_total[$__rate_interval]))", "{{kind}}")], "reqps",
                        "Searches that named the staged model (GET /v1/models lists it); none while nothing is staged.")],
            [timeseries("Click-through rate (text results)",
                        [('sum(rate(frontend_result_clicks_total{from="text"}[$__rate_interval]))'
                          ' / sum(rate(frontend_pages_total{page="results", shown="ok"}[$__rate_interval]))', "clicks per results page")],
                        "percentunit", "Result cards opened per text-results page shown with hits (the frontend's /go links)."),
             timeseries("Mean click position",
                        [("sum by (from) (rate(frontend_result_click_position_sum[$__rate_interval]))"
                          " / sum by (from) (rate(frontend_result_click_position_count[$__rate_interval]))", "{{from}}")], "short",
                        "Where in the ranking shoppers find what they open (1 = first); rising means the good results sink.")],
            [timeseries("Catalogue check: problems in the sample",
                        [("max by (problem) (catalogue_check_problems)", "{{problem}}")], "short",
                        "Each run samples CATALOGUE_CHECK_SAMPLE points (object HEAD, pre-signed URL fetched) and as many stored objects "
                        "(looked up in the index). missing_object and presign_failed page (CatalogueImagesBroken); orphan_object costs storage."),
             timeseries("Catalogue check: sample and age",
                        [("max by (sample) (catalogue_check_sampled)", "{{sample}} sampled"),
                         ("time() - max(catalogue_check_last_run_timestamp_seconds)", "seconds since the last run")], "short")],
        ],
    )


def model_serving():
    return dashboard(
        "fashion-search-model-serving", "Fashion search · model-serving",
        "CLIP encoders: throughput, dynamic batching (batch size, queue wait), per-stage time and errors.",
        [
            [timeseries("Items encoded per second", [("modality:model_serving_items_encoded:rate5m", "{{modality}}")], "short"),
             timeseries("Mean batch size", [("modality:model_serving_batch_size_items:mean5m", "{{modality}}")], "short")],
            [timeseries("Queue wait p50 / p95", [("modality:model_serving_queue_wait_seconds:quantile5m", "{{modality}} p{{quantile}}")], "s"),
             timeseries("Inference per batch p50 / p95", [("modality:model_serving_inference_seconds:quantile5m", "{{modality}} p{{quantile}}")], "s")],
            [timeseries("Queue depth and capacity",
                        [("max by (modality) (model_serving_queue_depth_items)", "{{modality}} depth"),
                         ("max by (modality) (model_serving_queue_capacity_items)", "{{modality}} capacity")], "short"),
             timeseries("Batch size p95 and cap",
                        [("histogram_quantile(0.95, sum by (modality, le) (rate(model_serving_batch_size_items_bucket[$__rate_interval])))", "{{modality}}"),
                         ("max by (modality) (model_serving_batch_cap_items)", "{{modality}} cap (run budget)")], "short")],
            [timeseries("Preprocess and decode p95",
                        [("modality:model_serving_preprocess_seconds:quantile5m", "preprocess {{modality}}"),
                         ("modality:model_serving_decode_seconds:quantile5m", "decode {{modality}}")], "s"),
             timeseries("Errors by kind",
                        [("sum by (modality, kind) (rate(model_serving_errors_total[$__rate_interval]))", "{{modality}} {{kind}}")], "short")],
            [timeseries("ONNX Runtime runs per second by session",
                        [("sum by (modality, session) (rate(model_serving_inference_seconds_count[$__rate_interval]))", "{{modality}} {{session}}")], "short",
                        "rest: the image session with every core, which runs a request that finds the service idle (MODEL_SERVING_REST_SESSION); "
                        "pool: the sessions that run batches side by side under load. Mostly rest means the service is at rest; mostly pool, under load."),
             timeseries("Mean time per run by session",
                        [("sum by (modality, session) (rate(model_serving_inference_seconds_sum[$__rate_interval])) / "
                          "sum by (modality, session) (rate(model_serving_inference_seconds_count[$__rate_interval]))", "{{modality}} {{session}}")], "s",
                        "A pool session runs on one thread, the rest session on every core: the same batch takes the pool about twice as long.")],
        ],
    )


def etl():
    return dashboard(
        "fashion-search-etl", "Fashion search · ETL",
        "The ETL job's metrics as pushed to the Pushgateway (one group per dataset), and the backend's ingest.",
        [
            [stat("Last run failed", [('max by (dataset) (etl_job_failed{job="etl"})', "{{dataset}}")],
                  thresholds=[{"color": "green", "value": None}, {"color": "red", "value": 1}]),
             stat("Since last success", [('time() - etl_last_success_timestamp_seconds{job="etl"}', "{{dataset}}")], "s"),
             stat("Since last push", [('time() - max by (dataset) (push_time_seconds{job="etl"})', "{{dataset}}")], "s")],
            [timeseries("Items by outcome (last run)", [('sum by (dataset, outcome) (etl_items_total{job="etl"})', "{{dataset}} {{outcome}}")], "short"),
             timeseries("Failures by reason (last run)", [('sum by (dataset, reason) (etl_failures_total{job="etl"})', "{{dataset}} {{reason}}")], "short",
                        "source: the dataset entry itself (no or unreadable file, malformed line); image: model-serving refused it (not an image, corrupt, too large). The log lists each with its reason."),
             timeseries("Throughput (items/s)", [('etl_throughput_items_per_second{job="etl"}', "{{dataset}}")], "short")],
            [timeseries("Mean time per batch and stage (last run)",
                        [('sum by (stage) (etl_stage_seconds_sum{job="etl"}) / sum by (stage) (etl_stage_seconds_count{job="etl"})', "{{stage}}")], "s"),
             timeseries("Backend ingest", [("sum(rate(backend_ingested_items_total[$__rate_interval]))", "items/s"),
                                           ("max(backend_index_points)", "points")], "short")],
        ],
    )


def host():
    return dashboard(
        "fashion-search-host", "Fashion search · host and containers",
        "node-exporter (host) and cAdvisor (containers, under compose).",
        [
            [stat("Memory available", [("node_memory_MemAvailable_bytes / node_memory_MemTotal_bytes", "{{instance}}")], "percentunit",
                  thresholds=[{"color": "red", "value": None}, {"color": "orange", "value": 0.1}, {"color": "green", "value": 0.2}]),
             stat("Monitoring targets up", [("sum(up)", "up"), ("count(up)", "targets")])],
            [timeseries("CPU busy", [('1 - avg by (instance) (rate(node_cpu_seconds_total{mode="idle"}[$__rate_interval]))', "{{instance}}")], "percentunit", max_=1),
             timeseries("Load", [("node_load1", "1m"), ("node_load5", "5m")], "short")],
            [timeseries("Memory", [("node_memory_MemTotal_bytes - node_memory_MemAvailable_bytes", "used"),
                                   ("node_memory_MemAvailable_bytes", "available")], "bytes"),
             timeseries("Filesystem free", [(f"node_filesystem_avail_bytes{{{FS}}} / node_filesystem_size_bytes{{{FS}}}", "{{mountpoint}}")], "percentunit", max_=1)],
            [timeseries("Disk I/O", [("sum by (instance) (rate(node_disk_read_bytes_total[$__rate_interval]))", "read"),
                                     ("sum by (instance) (rate(node_disk_written_bytes_total[$__rate_interval]))", "written")], "Bps"),
             timeseries("Network", [("sum by (instance) (rate(node_network_receive_bytes_total[$__rate_interval]))", "received"),
                                    ("sum by (instance) (rate(node_network_transmit_bytes_total[$__rate_interval]))", "sent")], "Bps")],
            [timeseries("Container CPU", [('sum by (name) (rate(container_cpu_usage_seconds_total{name!=""}[$__rate_interval]))', "{{name}}")], "short"),
             timeseries("Container memory (working set)", [('sum by (name) (container_memory_working_set_bytes{name!=""})', "{{name}}")], "bytes")],
            [timeseries("Container memory / limit",
                        [('sum by (name) (container_memory_working_set_bytes{name!=""}) / sum by (name) (container_spec_memory_limit_bytes{name!=""} > 0)', "{{name}}")],
                        "percentunit", "Containers with a memory limit; ContainerHighMemoryUsage fires above 90%.", max_=1),
             timeseries("Container network", [('sum by (name) (rate(container_network_receive_bytes_total{name!=""}[$__rate_interval]))', "{{name}} in"),
                                              ('sum by (name) (rate(container_network_transmit_bytes_total{name!=""}[$__rate_interval]))', "{{name}} out")], "Bps")],
        ],
    )


DASHBOARDS = {
    "overview.json": overview,
    "search-path.json": search_path,
    "search-quality.json": search_quality,
    "model-serving.json": model_serving,
    "etl.json": etl,
    "host.json": host,
}


def render(build):
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main():
    check = "--check" in sys.argv[1:]
    stale = []
    OUT.mkdir(parents=True, exist_ok=True)
    for name, build in DASHBOARDS.items():
        text = render(build)
        path = OUT / name
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        sys.exit(f"stale dashboards (run python3 observability/grafana/generate.py): {', '.join(stale)}")


if __name__ == "__main__":
    main()
