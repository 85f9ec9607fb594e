#!/usr/bin/env python3
"""Evaluate model folders on the validation split, through ONNX Runtime (what model-serving serves).

No PyTorch: runs in the project's reference venv (numpy, Pillow, onnxruntime, tokenizers).
Images are preprocessed with model-serving/tools/reference.py's transform (the one the Rust tests
prove bit-exact with the server); texts are tokenized from the folder's tokenizer.json as the
server does (HTML entities unescaped twice, truncated at context_length, padded with pad_token_id).

Metrics, on the validation products (FNV-1a(id) % 10 == 0, never trained on):
  (a) caption -> image: each product's productDisplayName as the query; R@1, R@5, R@10 and MRR of
      that exact product among all validation images (Marqo's fashion-benchmark protocol);
  (b) attribute queries, precision@10 (share of the top 10 whose attributes match), averaged over
      every article type / colour+type / gender+type with at least --min-relevant validation items:
        "a photo of a <type>", "<colour> <types>", "<gender> <types>";
  (c) image -> image precision@10 by article type (the query image left out);
  (d) Fashion-MNIST zero-shot accuracy on test images ("a photo of a <class>"), when installed.

Example:
  python evaluate.py --dataset-dir ../shared/datasets/fashion-product-images-small \
      --model trained=model-serving/models/fashion-clip-mini --model tiny=var/models/tiny
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image
from tokenizers import Tokenizer

import data
import reference


class Served:
    """A model folder run the way model-serving runs it."""

    def __init__(self, folder: Path, threads: int) -> None:
        self.folder = folder
        self.meta = json.loads((folder / "model.json").read_text())
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.vision = ort.InferenceSession(str(folder / "vision_model.onnx"), opts, providers=["CPUExecutionProvider"])
        self.text = ort.InferenceSession(str(folder / "text_model.onnx"), opts, providers=["CPUExecutionProvider"])
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=self.meta["context_length"])

    def transform(self, im: Image.Image) -> np.ndarray:
        return reference.clip_transform(im, self.meta["image_size"], self.meta["image_mean"], self.meta["image_std"])

    def pixels(self, images: list[Image.Image]) -> np.ndarray:
        """The vision tower's input for `images`, as the server makes it."""
        return np.stack([self.transform(im) for im in images])

    def tokens(self, texts: list[str]) -> dict[str, np.ndarray]:
        """The text tower's inputs for `texts`: cleaned, tokenized, cut, padded as the server does."""
        pad = self.meta.get("pad_token_id", 0)
        limit = self.meta["context_length"]
        rows = [e.ids[:limit] for e in self.tokenizer.encode_batch([data.clean_text(t) for t in texts])]
        length = max(len(r) for r in rows)
        return {"input_ids": np.array([r + [pad] * (length - len(r)) for r in rows], np.int64),
                "attention_mask": np.array([[1] * len(r) + [0] * (length - len(r)) for r in rows], np.int64)}

    def encode_images(self, images: list[Image.Image], batch: int = 64) -> np.ndarray:
        out = [self.vision.run(["image_embeds"], {"pixel_values": self.pixels(images[i : i + batch])})[0]
               for i in range(0, len(images), batch)]
        return reference.normalise(np.concatenate(out))

    def encode_texts(self, texts: list[str], batch: int = 64) -> np.ndarray:
        out = [self.text.run(["text_embeds"], self.tokens(texts[i : i + batch]))[0] for i in range(0, len(texts), batch)]
        return reference.normalise(np.concatenate(out))


def precision_at_10(sim: np.ndarray, relevant: np.ndarray) -> float:
    """Mean over query rows of the share of the 10 best-scored items that are relevant."""
    top = np.argsort(-sim, axis=1, kind="stable")[:, :10]
    return float(np.take_along_axis(relevant, top, axis=1).mean())


def attribute_queries(val: list[data.Product], min_relevant: int) -> dict[str, tuple[list[str], np.ndarray]]:
    """Query texts and their relevance rows [Q, N] for the three attribute families."""
    families = {
        "type": (lambda p: p.article_type, lambda p: f"a photo of a {p.type_name}"),
        "colour+type": (lambda p: (p.colour, p.article_type), lambda p: f"{p.colour_name} {p.article_type.lower()}"),
        "gender+type": (lambda p: (p.gender, p.article_type), lambda p: f"{p.gender_name} {p.article_type.lower()}"),
    }
    out = {}
    for family, (key, text) in families.items():
        counts = Counter(key(p) for p in val)
        keys = sorted(k for k, n in counts.items() if n >= min_relevant and all(k if isinstance(k, tuple) else (k,)))
        example = {key(p): p for p in val}
        queries = [text(example[k]) for k in keys]
        relevant = np.array([[key(p) == k for p in val] for k in keys])
        out[family] = (queries, relevant)
    return out


def evaluate(model: Served, val: list[data.Product], images: list[Image.Image], min_relevant: int,
             fmnist: tuple[list[Image.Image], np.ndarray] | None) -> dict[str, float]:
    img = model.encode_images(images)
    res: dict[str, float] = {}

    # (a) caption -> image, exact product
    txt = model.encode_texts([p.name for p in val])
    sim = txt @ img.T
    own = np.diag(sim)[:, None]
    ranks = (sim > own).sum(axis=1) + 1  # ties count in the query's favour... none occur with real floats
    for k in (1, 5, 10):
        res[f"caption->image R@{k}"] = float((ranks <= k).mean())
    res["caption->image MRR"] = float((1.0 / ranks).mean())

    # (b) attribute queries
    for family, (queries, relevant) in attribute_queries(val, min_relevant).items():
        q = model.encode_texts(queries)
        res[f"'{family}' text P@10 ({len(queries)} queries)"] = precision_at_10(q @ img.T, relevant)

    # (c) image -> image by article type
    sim = img @ img.T
    np.fill_diagonal(sim, -np.inf)
    types = np.array([p.article_type for p in val])
    res["image->image type P@10"] = precision_at_10(sim, types[None, :] == types[:, None])

    # (d) Fashion-MNIST zero-shot
    if fmnist is not None:
        fm_images, labels = fmnist
        classes = model.encode_texts([f"a photo of a {c}" for c in data.FASHION_MNIST_CLASSES])
        predicted = (model.encode_images(fm_images) @ classes.T).argmax(axis=1)
        res["Fashion-MNIST zero-shot acc"] = float((predicted == labels).mean())
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset-dir", type=Path, required=True)
    ap.add_argument("--model", action="append", required=True, metavar="LABEL=FOLDER",
                    help="a model folder to evaluate (repeatable; the first is the one under test)")
    ap.add_argument("--min-relevant", type=int, default=10, help="attribute queries need this many relevant validation items")
    ap.add_argument("--fmnist-per-class", type=int, default=100, help="Fashion-MNIST test images per class (0: skip)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()

    _, val = data.split(data.load_products(args.dataset_dir))
    images = [reference.load_rgb(args.dataset_dir / "images" / f"{p.id}.jpg") for p in val]
    fmnist = None
    fm_dir = data.find_fashion_mnist()
    if fm_dir is not None and args.fmnist_per_class > 0:
        fm, labels = data.fashion_mnist(fm_dir, "test", args.fmnist_per_class, seed=0)
        fmnist = ([Image.fromarray(x, "L").convert("RGB") for x in fm], labels)
    print(f"validation split: {len(val)} products (FNV-1a(id) % 10 == 0), {len(set(p.article_type for p in val))} article types"
          + (f"; Fashion-MNIST test: {len(fmnist[1])} images" if fmnist else ""), flush=True)

    results: dict[str, dict[str, float]] = {}
    for spec in args.model:
        label, _, folder = spec.partition("=")
        folder_path = Path(folder)
        if not (folder_path / "model.json").is_file():
            print(f"skipping {label}: no model at {folder}", file=sys.stderr)
            continue
        model = Served(folder_path, args.threads)
        results[f"{label} ({model.meta['name']})"] = evaluate(model, val, images, args.min_relevant, fmnist)

    labels = list(results)
    metrics = list(next(iter(results.values())))
    width = max(len(m) for m in metrics)
    cols = [max(len(l), 8) for l in labels]
    print("| " + "metric".ljust(width) + " | " + " | ".join(l.rjust(c) for l, c in zip(labels, cols)) + " |")
    print("|" + "-" * (width + 2) + "|" + "|".join("-" * (c + 1) + ":" for c in cols) + "|")
    for m in metrics:
        print("| " + m.ljust(width) + " | " + " | ".join(f"{results[l][m]:.3f}".rjust(c) for l, c in zip(labels, cols)) + " |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
