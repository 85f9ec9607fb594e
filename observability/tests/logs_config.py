#!/usr/bin/env python3
"""Checks the log pipeline's configuration (no Fluent Bit, Elasticsearch or Kibana can run here).

    python3 logs_config.py [--panic-sample FILE]

Static part (this script): the Elasticsearch index template and every Kibana saved object are valid
JSON / NDJSON (with their JSON-in-strings), Kibana references resolve, Fluent Bit's parsers and
multiline parser exist where they are used, the index names agree between Fluent Bit, the template,
the Kibana data view and the Grafana datasource, and the multiline rules (run here with Python's
regex engine, which reads these patterns as Onigmo does) join a real Rust panic into one record
while JSON lines stay one record each.

Against real logs (stack_test.py calls check_fields_against with the services' real log lines):
every field that Fluent Bit, the index template or the Kibana objects use is one the services
write (or one the pipeline itself adds), the required fields exist, the template's types match
the values, and the timestamps parse with Fluent Bit's Time_Format.
"""

import argparse
import json
import re
import sys
from datetime import datetime
from pathlib import Path

LOGS = Path(__file__).resolve().parent.parent / "logs"
GRAFANA_DATASOURCES = LOGS.parent / "grafana" / "provisioning" / "datasources" / "datasources.yml"

# Fields that exist in Elasticsearch without a service writing them.
PIPELINE_FIELDS = {
    "@timestamp": "Fluent Bit's es output (Time_Key) from the parsed timestamp",
    "log": "the tail input's raw line; renamed to message for non-JSON records",
}
# What the issue asks the index template to map, and the services must write.
REQUIRED = ["timestamp", "level", "service", "trace_id", "message", "method", "route", "status", "duration_ms"]
ES_TYPES = {  # mapping type -> Python types of the JSON values it accepts
    "keyword": {"str"}, "text": {"str"}, "date": {"str"},
    "short": {"int"}, "integer": {"int"}, "long": {"int"},
    "float": {"float", "int"}, "double": {"float", "int"}, "boolean": {"bool"},
}


def fluentbit_sections(path):
    """Fluent Bit's classic format: [SECTION] headers, then `Key Value` lines (keys repeat)."""
    sections = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            sections.append((line[1:-1].upper(), []))
            continue
        if not sections:
            raise ValueError(f"{path.name}: {line!r} before any section")
        key, _, value = line.partition(" ")
        sections[-1][1].append((key.lower(), value.strip()))
    return sections


def values(entries, key):
    return [v for k, v in entries if k == key.lower()]


def one(entries, key):
    found = values(entries, key)
    return found[0] if found else None


def multiline_rules(parsers):
    """{name: [(state, regex, next_state)]} from [MULTILINE_PARSER] sections."""
    result = {}
    for section, entries in parsers:
        if section != "MULTILINE_PARSER":
            continue
        rules = []
        for rule in values(entries, "rule"):
            state, pattern, nxt = re.findall(r'"((?:[^"\\]|\\.)*)"', rule)
            if not (pattern.startswith("/") and pattern.endswith("/")):
                raise ValueError(f"multiline rule regex must be /.../: {pattern}")
            rules.append((state, re.compile(pattern[1:-1]), nxt))
        result[one(entries, "name")] = rules
    return result


def group_lines(rules, lines):
    """Fluent Bit's regex multiline state machine: a start_state match opens a record, lines
    matching a rule of the current state join it, anything else closes it and stands alone."""
    records, current, state = [], None, None
    for line in lines:
        if current is not None:
            nxt = next((n for s, rx, n in rules if s == state and rx.search(line)), None)
            if nxt is not None:
                current.append(line)
                state = nxt
                continue
            records.append(current)
            current = None
        nxt = next((n for s, rx, n in rules if s == "start_state" and rx.search(line)), None)
        if nxt is not None:
            current, state = [line], nxt
        else:
            records.append([line])
    if current is not None:
        records.append(current)
    return records


def kql_fields(query):
    return set(re.findall(r"([A-Za-z_@][\w.@]*)\s*:", query))


def kibana_objects():
    objects = []
    for n, line in enumerate((LOGS / "kibana" / "saved-objects.ndjson").read_text().splitlines(), 1):
        if line.strip():
            try:
                objects.append(json.loads(line))
            except ValueError as error:
                raise ValueError(f"saved-objects.ndjson line {n}: {error}") from error
    return objects


def index_template():
    return json.loads((LOGS / "elasticsearch" / "index-template.json").read_text())


def referenced_fields():
    """{where: set of log field names} for every place the configuration names a field."""
    refs = {}
    parsers = fluentbit_sections(LOGS / "parsers.conf")
    config = fluentbit_sections(LOGS / "fluent-bit.conf")
    fb = set()
    for section, entries in parsers:
        if section == "PARSER" and one(entries, "time_key"):
            fb.add(one(entries, "time_key"))
    for section, entries in config:
        if section == "FILTER":
            for condition in values(entries, "condition"):
                fb.add(condition.split()[1])
            for key in ("add", "rename", "copy"):
                for value in values(entries, key):
                    fb.update(value.split()[:2] if key != "add" else value.split()[:1])
            if one(entries, "key_name"):
                fb.add(one(entries, "key_name"))
        if section == "OUTPUT" and one(entries, "time_key"):
            fb.add(one(entries, "time_key"))
    refs["fluent-bit"] = fb
    refs["index template"] = set(index_template()["template"]["mappings"]["properties"])
    kb = set()
    for obj in kibana_objects():
        attrs = obj["attributes"]
        if attrs.get("timeFieldName"):
            kb.add(attrs["timeFieldName"])
        kb.update(attrs.get("columns", []))
        kb.update(s[0] for s in attrs.get("sort", []))
        source = json.loads(attrs.get("kibanaSavedObjectMeta", {}).get("searchSourceJSON", "{}"))
        kb.update(kql_fields(source.get("query", {}).get("query", "")))
        if "visState" in attrs:
            for agg in json.loads(attrs["visState"])["aggs"]:
                if "field" in agg["params"]:
                    kb.add(agg["params"]["field"])
    refs["kibana"] = kb
    return refs


def check_fields_against(fields, samples):
    """fields: {name: set of Python type names} from real log lines; samples: some real records."""
    problems = []
    for where, names in referenced_fields().items():
        for name in sorted(names - set(fields) - set(PIPELINE_FIELDS)):
            problems.append(f"{where} uses {name!r}, which no service wrote")
    properties = index_template()["template"]["mappings"]["properties"]
    for name in REQUIRED:
        if name not in fields:
            problems.append(f"the services wrote no {name!r} field")
        if name not in properties:
            problems.append(f"the index template does not map {name!r}")
    for name, mapping in properties.items():
        accepted = ES_TYPES.get(mapping["type"])
        if name in fields and accepted is not None and not fields[name] <= accepted:
            problems.append(f"{name!r} is mapped as {mapping['type']} but the services wrote {sorted(fields[name])}")
    # Fluent Bit's Time_Format, %L = milliseconds, read the Python way.
    parsers = fluentbit_sections(LOGS / "parsers.conf")
    parser = next(e for s, e in parsers if s == "PARSER" and one(e, "name") == "service_json")
    fmt = one(parser, "time_format").replace("%L", "%f")
    for record in samples:
        try:
            datetime.strptime(record[one(parser, "time_key")], fmt)
        except (KeyError, ValueError) as error:
            problems.append(f"timestamp of {record} does not parse with {one(parser, 'time_format')}: {error}")
            break
    return problems


def check_static(panic_sample):
    problems = []
    template = index_template()
    pattern = template["index_patterns"][0]
    config = fluentbit_sections(LOGS / "fluent-bit.conf")
    parsers = fluentbit_sections(LOGS / "parsers.conf")
    parser_names = {one(e, "name") for s, e in parsers if s == "PARSER"}
    multiline = multiline_rules(parsers)
    for section, entries in config:
        if section == "INPUT" and one(entries, "multiline.parser") not in multiline:
            problems.append(f"input {one(entries, 'tag')} uses an undefined multiline parser")
        if section == "FILTER" and one(entries, "name") == "parser" and one(entries, "parser") not in parser_names:
            problems.append(f"filter uses an undefined parser {one(entries, 'parser')}")
        if section == "OUTPUT":
            prefix = one(entries, "logstash_prefix")
            if not pattern.startswith(prefix + "-"):
                problems.append(f"Fluent Bit writes {prefix}-*, the index template covers {pattern}")
    inputs = [one(e, "tag") for s, e in config if s == "INPUT"]
    for service in ("model-serving", "backend", "frontend", "etl"):
        if f"app.{service}" not in inputs:
            problems.append(f"no tail input for {service}")

    objects = kibana_objects()
    ids = {(o["type"], o["id"]) for o in objects}
    titles = {o["attributes"]["title"] for o in objects}
    for obj in objects:
        for ref in obj.get("references", []):
            if (ref["type"], ref["id"]) not in ids:
                problems.append(f"{obj['id']} refers to missing {ref['type']} {ref['id']}")
        attrs = obj["attributes"]
        for key in ("visState", "panelsJSON", "optionsJSON", "uiStateJSON"):
            if key in attrs:
                json.loads(attrs[key])
        json.loads(attrs.get("kibanaSavedObjectMeta", {}).get("searchSourceJSON", "{}"))
        if obj["type"] == "dashboard":
            names = {r["name"] for r in obj["references"]}
            for panel in json.loads(attrs["panelsJSON"]):
                if panel["panelRefName"] not in names:
                    problems.append(f"dashboard panel {panel['panelIndex']} has no reference")
        if obj["type"] == "index-pattern" and attrs["title"] != pattern:
            problems.append(f"Kibana data view {attrs['title']} != index template pattern {pattern}")
    for wanted in ("Errors by service", "Trace by id"):
        if wanted not in titles:
            problems.append(f"no Kibana saved search {wanted!r}")
    if not any(o["type"] == "dashboard" for o in objects):
        problems.append("no Kibana dashboard")
    if f"index: {pattern}" not in GRAFANA_DATASOURCES.read_text():
        problems.append(f"the Grafana Elasticsearch datasource does not read {pattern}")

    # The multiline parser on a real panic between JSON lines, and on an error from main.
    rules = multiline["rust_panic"]
    json_line = '{"timestamp":"2026-11-21T09:04:45.097Z","level":"INFO","service":"backend","message":"x"}'
    panic = Path(panic_sample).read_text().rstrip("\n").splitlines() if panic_sample else [
        "thread 'main' panicked at src/main.rs:2:5:", "boom",
        "note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace"]
    error = ["Error: cannot load the model", "", "Caused by:", "    0: model.json: No such file or directory (os error 2)"]
    # Rust starts a panic report with an empty line; the tail inputs skip empty lines.
    skip_empty = all(one(e, "skip_empty_lines") == "On" for s, e in config if s == "INPUT")
    if not skip_empty:
        problems.append("tail inputs should set Skip_Empty_Lines On (a panic report starts with an empty line)")
    kept = (lambda ls: [x for x in ls if x.strip()]) if skip_empty else (lambda ls: ls)
    panic, error = kept(panic), kept(error)
    lines = [json_line, *panic, json_line, *error, json_line]
    records = group_lines(rules, lines)
    expected = [[json_line], panic, [json_line], error, [json_line]]
    if records != expected:
        problems.append(f"rust_panic grouped {len(panic)} panic lines and {len(error)} error lines into "
                        f"{[len(r) for r in records]} records, expected {[len(r) for r in expected]}")
    return problems, len(panic)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--panic-sample", help="stderr of a real Rust panic with RUST_BACKTRACE=1")
    args = parser.parse_args()
    problems, panic_lines = check_static(args.panic_sample)
    if problems:
        sys.exit("log configuration problems:\n  " + "\n  ".join(problems))
    refs = referenced_fields()
    print(f"logs config ok: template, {len(kibana_objects())} Kibana objects, Fluent Bit; a {panic_lines}-line "
          f"real panic joined into one record; fields used: " + ", ".join(sorted(set().union(*refs.values()))))


if __name__ == "__main__":
    main()
