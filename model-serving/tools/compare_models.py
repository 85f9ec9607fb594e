#!/usr/bin/env python3
"""Compare model folders (e.g. fp32 and its int8 copy) through onnxruntime: speed and agreement.

  compare_models.py --dataset-dir ../shared/datasets/fashion-product-images-small \
      --model fp32=model-serving/models/fashion-clip-mini --model int8=var/models/fashion-clip-mini-int8

For each folder:
  * vision throughput (images/s) at each --batches size, on real validation photos through the
    server's transform (reference.py);
  * text latency at batch 1 (ms) on short shopper-style queries in the model's prompt;
  * cosine similarity of its embeddings with the first folder's (mean and min), on --samples
    validation photos and their captions (only between folders of the same embedding size).

Timing is interleaved so that every folder sees the same machine: --rounds rounds, each giving
every folder one warm-up run and then timed runs for --seconds / --rounds (at least 2, at most
--max-runs). The fastest run is reported (the least disturbed by other work on a shared machine),
and the median beside it with --median. Sessions use --threads intra-op threads (2: the
deployment's cores) and one inter-op thread.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "training"))
import data  # noqa: E402  (catalogue rows, split, text cleaning)
import reference  # noqa: E402  (the server's transform; data.py put this folder on the path)
from evaluate import Served  # noqa: E402  (a folder run as the server runs it)

QUERIES = ["red dress", "men black casual shoes", "blue denim jeans", "women handbag", "white t-shirt",
           "sports watch", "floral kurta", "brown leather belt"]


def timed(run, seconds: float, max_runs: int) -> list[float]:
    """Seconds of each `run()` after one warm-up: at least 2 runs, then until the budget or count."""
    run()
    times: list[float] = []
    deadline = time.monotonic() + seconds
    while len(times) < max_runs and (len(times) < 2 or time.monotonic() < deadline):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset-dir", type=Path, required=True)
    ap.add_argument("--model", action="append", required=True, metavar="LABEL=FOLDER",
                    help="a model folder (repeatable; the first is the reference for cosine similarity)")
    ap.add_argument("--batches", default="1,8,32", help="vision batch sizes (default: %(default)s)")
    ap.add_argument("--seconds", type=float, default=6.0, help="timing budget per folder and measurement")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    ap.add_argument("--median", action="store_true", help="also report the median run")
    ap.add_argument("--max-runs", type=int, default=200, help="at most this many timed runs per measurement")
    ap.add_argument("--samples", type=int, default=128, help="validation photos and captions for cosine similarity")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()

    batches = [int(b) for b in args.batches.split(",")]
    _, val = data.split(data.load_products(args.dataset_dir))
    sample = val[: max(args.samples, max(batches))]
    photos = [args.dataset_dir / "images" / f"{p.id}.jpg" for p in sample]
    captions = [p.name for p in sample[: args.samples]]

    models = {}
    for spec in args.model:
        label, _, folder = spec.partition("=")
        models[label] = Served(Path(folder), args.threads)

    # The workloads: vision at each batch size, then one text query at a time.
    jobs: dict[str, dict[str, tuple]] = {label: {} for label in models}
    images = [reference.load_rgb(p) for p in photos]
    for label, model in models.items():
        x = model.pixels(images)
        for b in batches:
            jobs[label][f"vision img/s @{b}"] = (b, lambda s=model.vision, x=x[:b]: s.run(None, {"pixel_values": x}))
        prompt = model.meta.get("prompt_template", "{}")
        queries = [model.tokens([prompt.replace("{}", q)]) for q in QUERIES]
        counter = iter(range(1 << 62))
        jobs[label]["text ms @1"] = (None, lambda s=model.text, q=queries, c=counter: s.run(None, q[next(c) % len(q)]))
    times: dict[str, dict[str, list[float]]] = {label: {name: [] for name in jobs[label]} for label in models}
    for _ in range(args.rounds):
        for name in jobs[next(iter(models))]:
            for label in models:
                times[label][name] += timed(jobs[label][name][1], args.seconds / args.rounds, args.max_runs)

    results: dict[str, dict[str, float]] = {}
    ref: tuple[np.ndarray, np.ndarray] | None = None
    for label, model in models.items():
        res: dict[str, float] = {}
        for name, (batch, _) in jobs[label].items():
            runs = times[label][name]
            stats = [("", min(runs))] + ([(" median", statistics.median(runs))] if args.median else [])
            for suffix, t in stats:
                res[name + suffix] = batch / t if batch else 1000 * t
        img, txt = model.encode_images(images[: args.samples]), model.encode_texts(captions)
        if ref is None:
            ref = (img, txt)
        elif ref[0].shape == img.shape:
            for kind, a, b in (("image", ref[0], img), ("text", ref[1], txt)):
                cos = (a * b).sum(axis=1)
                res[f"{kind} cos mean"], res[f"{kind} cos min"] = float(cos.mean()), float(cos.min())
        results[label] = res

    metrics = list(dict.fromkeys(k for r in results.values() for k in r))
    labels = list(results)
    width = max(len(m) for m in metrics)
    cols = [max(len(l), 8) for l in labels]
    print("| " + "metric".ljust(width) + " | " + " | ".join(l.rjust(c) for l, c in zip(labels, cols)) + " |")
    print("|" + "-" * (width + 2) + "|" + "|".join("-" * (c + 1) + ":" for c in cols) + "|")
    for m in metrics:
        cells = [f"{results[l][m]:.4g}" if m in results[l] else "" for l in labels]
        print("| " + m.ljust(width) + " | " + " | ".join(c.rjust(w) for c, w in zip(cells, cols)) + " |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
