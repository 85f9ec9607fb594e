#!/usr/bin/env python3
"""Reference implementations that the Rust tests compare against.

  preprocess  CLIP's transform as OpenAI CLIP runs it (PIL + numpy): EXIF transpose, RGB,
              resize shortest edge (PIL bicubic), center crop (Python round), /255, normalise.
              Writes float32 little-endian CHW tensors, one per image, to --out.
  decode      PIL-decoded RGB pixels re-saved as PNG (lossless), to compare the transform alone.
  tokenize    OpenAI CLIP's SimpleTokenizer, written from the BPE vocabulary (independent of the
              tokenizers library), with tokenize()'s truncation; texts on stdin (JSON list),
              ids as JSON on stdout.
  embed       onnxruntime run of a model folder on the preprocessed images or tokenized texts;
              L2-normalised embeddings as JSON.
  timing      seconds per image for the preprocess path (decode + transform), for the benchmark.
  ceiling     the most images a second this machine could encode with a vision model in ONNX
              Runtime: the model's multiply-add work per image (counted from a profiled run of
              its MatMul, Gemm and Conv nodes) at the rate ONNX Runtime itself reaches on its
              biggest MatMul alone, with every other operator taken as free. An upper bound.
"""

import argparse
import gzip
import html
import json
import sys
import time
import unicodedata
from functools import lru_cache

import numpy as np
import regex
from PIL import Image, ImageOps


def load_rgb(path):
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        return im.convert("RGB")


def clip_transform(im, size, mean, std):
    w, h = im.size
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(size * long / short)
    new = (size, new_long) if w <= h else (new_long, size)
    im = im.resize(new, Image.BICUBIC)
    left = int(round((new[0] - size) / 2.0))
    top = int(round((new[1] - size) / 2.0))
    im = im.crop((left, top, left + size, top + size))
    x = np.asarray(im, dtype=np.float32) / np.float32(255.0)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)


def model_meta(folder):
    with open(f"{folder}/model.json") as f:
        return json.load(f)


@lru_cache()
def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


class SimpleTokenizer:
    SOT, EOT = "<|startoftext|>", "<|endoftext|>"

    def __init__(self, bpe_path):
        merges = gzip.open(bpe_path).read().decode("utf-8").split("\n")
        merges = [tuple(m.split()) for m in merges[1 : 49152 - 256 - 2 + 1]]
        vocab = list(bytes_to_unicode().values())
        vocab = vocab + [v + "</w>" for v in vocab]
        vocab += ["".join(m) for m in merges]
        vocab += [self.SOT, self.EOT]
        self.encoder = {v: i for i, v in enumerate(vocab)}
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.pat = regex.compile(
            r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE,
        )

    def bpe(self, token):
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        while len(word) > 1:
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        return word

    def encode(self, text):
        text = html.unescape(html.unescape(unicodedata.normalize("NFC", text))).strip()
        text = regex.sub(r"\s+", " ", text).strip().lower()
        ids = []
        for token in self.pat.findall(text):
            token = "".join(bytes_to_unicode()[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self.bpe(token))
        return ids

    def tokenize(self, text, context_length):
        ids = [self.encoder[self.SOT]] + self.encode(text) + [self.encoder[self.EOT]]
        if len(ids) > context_length:
            ids = ids[:context_length]
            ids[-1] = self.encoder[self.EOT]
        return ids


def normalise(x):
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def node_flops(args):
    """Multiply-adds x 2 of one profiled node, from the shapes ONNX Runtime recorded; 0 for
    operators that are not products. MatMul lists only its left input once its weights are
    pre-packed, so the inner size is that input's last axis."""
    op, out = args["op_name"], args["output_type_shape"][0]
    inputs = [next(iter(t.values())) for t in args["input_type_shape"]]
    outputs = int(np.prod(next(iter(out.values()))))
    if op in ("MatMul", "FusedMatMul"):
        return 2 * outputs * inputs[0][-1]
    if op == "Gemm":  # A is [M, K] or, transposed, [K, M]: K either way
        return 2 * outputs * int(np.prod(inputs[0])) // next(iter(out.values()))[0]
    if op == "Conv":
        return 2 * outputs * int(np.prod(inputs[1][1:]))
    return 0


def ceiling(folder, threads, batch, seconds):
    import os
    import tempfile

    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.enable_profiling = True
    meta = model_meta(folder)
    x = np.zeros((batch, 3, meta["image_size"], meta["image_size"]), np.float32)
    with tempfile.TemporaryDirectory() as scratch:
        opts.profile_file_prefix = os.path.join(scratch, "profile")
        sess = ort.InferenceSession(f"{folder}/vision_model.onnx", opts)
        sess.run(None, {"pixel_values": x})
        with open(sess.end_profiling()) as f:
            events = json.load(f)
    nodes = [e["args"] for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    flops = sum(node_flops(a) for a in nodes)
    # ONNX Runtime's own rate on the model's biggest product, alone: same shape, same threads.
    top = max((a for a in nodes if a["op_name"] == "MatMul"), key=node_flops)
    a_shape = next(iter(top["input_type_shape"][0].values()))
    m, k = int(np.prod(a_shape[:-1])), a_shape[-1]
    n = next(iter(top["output_type_shape"][0].values()))[-1]
    w = numpy_helper.from_array(np.random.default_rng(0).random((k, n), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "w"], ["y"])], "gemm",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    gemm = ort.InferenceSession(model.SerializeToString(), opts)
    a = np.random.default_rng(1).random((m, k), np.float32)
    for _ in range(5):
        gemm.run(None, {"a": a})
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        gemm.run(None, {"a": a})
        runs += 1
    rate = 2 * m * k * n * runs / (time.perf_counter() - start)
    per_image = flops / batch
    return {
        "gflop_per_image": per_image / 1e9,
        "gemm_gflops": rate / 1e9,
        "gemm_shape": [m, k, n],
        "threads": threads,
        "images_per_second": rate / per_image,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("preprocess")
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("images", nargs="+")
    p = sub.add_parser("decode")
    p.add_argument("--out-dir", required=True)
    p.add_argument("images", nargs="+")
    p = sub.add_parser("tokenize")
    p.add_argument("--bpe", required=True)
    p.add_argument("--context-length", type=int, default=77)
    p = sub.add_parser("embed")
    p.add_argument("--model", required=True)
    p.add_argument("--ort-threads", type=int, default=1)
    p.add_argument("--images", nargs="*", default=[])
    p.add_argument("--texts-json", help="JSON list of token id lists")
    p = sub.add_parser("timing")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("images", nargs="+")
    p = sub.add_parser("ceiling")
    p.add_argument("--model", required=True)
    p.add_argument("--ort-threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()

    if args.cmd == "preprocess":
        meta = model_meta(args.model)
        with open(args.out, "wb") as f:
            for path in args.images:
                x = clip_transform(load_rgb(path), meta["image_size"], meta["image_mean"], meta["image_std"])
                f.write(x.astype("<f4").tobytes())
    elif args.cmd == "decode":
        import os
        for path in args.images:
            load_rgb(path).save(os.path.join(args.out_dir, os.path.basename(path) + ".png"))
    elif args.cmd == "tokenize":
        tok = SimpleTokenizer(args.bpe)
        texts = json.load(sys.stdin)
        json.dump([tok.tokenize(t, args.context_length) for t in texts], sys.stdout)
    elif args.cmd == "embed":
        import onnxruntime as ort

        meta = model_meta(args.model)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = args.ort_threads
        out = {}
        if args.images:
            sess = ort.InferenceSession(f"{args.model}/vision_model.onnx", opts)
            x = np.stack([clip_transform(load_rgb(p), meta["image_size"], meta["image_mean"], meta["image_std"]) for p in args.images])
            out["images"] = normalise(sess.run(["image_embeds"], {"pixel_values": x})[0]).tolist()
        if args.texts_json:
            rows = json.loads(args.texts_json)
            sess = ort.InferenceSession(f"{args.model}/text_model.onnx", opts)
            length = max(len(r) for r in rows)
            ids = np.array([r + [meta.get("pad_token_id", 0)] * (length - len(r)) for r in rows], np.int64)
            mask = np.array([[1] * len(r) + [0] * (length - len(r)) for r in rows], np.int64)
            out["texts"] = normalise(sess.run(["text_embeds"], {"input_ids": ids, "attention_mask": mask})[0]).tolist()
        json.dump(out, sys.stdout)
    elif args.cmd == "ceiling":
        json.dump(ceiling(args.model, args.ort_threads, args.batch, args.seconds), sys.stdout)
    elif args.cmd == "timing":
        mean, std = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
        best = float("inf")
        for _ in range(args.rounds):
            start = time.perf_counter()
            for path in args.images:
                clip_transform(load_rgb(path), args.size, mean, std)
            best = min(best, (time.perf_counter() - start) / len(args.images))
        print(json.dumps({"seconds_per_image": best, "images": len(args.images)}))


if __name__ == "__main__":
    main()
