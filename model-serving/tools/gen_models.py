#!/usr/bin/env python3
"""Generate CLIP-architecture model folders with random weights.

The graphs follow OpenAI CLIP / Hugging Face CLIPModel (ViT image tower, causal text transformer,
pooling at the end-of-text token, linear projections), with the input and output names of the public
ONNX exports (Xenova/clip-vit-base-patch32):

  vision_model.onnx  pixel_values f32[N,3,H,W]                    -> image_embeds f32[N,D]
  text_model.onnx    input_ids, attention_mask i64[N,L]           -> text_embeds  f32[N,D]

Presets:
  tiny     runs in milliseconds; for tests.
  vit-b32  the exact ViT-B/32 shapes (~350 MB vision, ~250 MB text); for benchmarks.
"""

import argparse
import json
import os
import shutil

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

PRESETS = {
    "tiny": dict(
        image_size=32, patch=8, v_width=32, v_layers=2, v_heads=2,
        t_width=32, t_layers=2, t_heads=2, embed_dim=32,
    ),
    "vit-b32": dict(
        image_size=224, patch=32, v_width=768, v_layers=12, v_heads=12,
        t_width=512, t_layers=12, t_heads=8, embed_dim=512,
    ),
}
VOCAB = 49408
CONTEXT = 77
OPSET = 17
IR_VERSION = 10  # what ONNX Runtime 1.31 reads (onnx 1.23 would write 14)
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


class Graph:
    """A small builder: unique names, initializers, nodes."""

    def __init__(self, rng):
        self.rng = rng
        self.nodes, self.inits, self.n = [], [], 0

    def name(self, hint):
        self.n += 1
        return f"{hint}_{self.n}"

    def const(self, array, hint="c"):
        name = self.name(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def weight(self, shape, hint="w", std=0.02):
        return self.const(self.rng.normal(0.0, std, size=shape).astype(np.float32), hint)

    def op(self, op_type, inputs, hint=None, **attrs):
        out = self.name(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def layer_norm(self, x, width):
        scale = self.const(np.ones(width, np.float32), "ln_scale")
        bias = self.const(np.zeros(width, np.float32), "ln_bias")
        return self.op("LayerNormalization", [x, scale, bias], axis=-1, epsilon=1e-5)

    def linear(self, x, d_in, d_out, bias=True):
        y = self.op("MatMul", [x, self.weight((d_in, d_out))])
        return self.op("Add", [y, self.const(np.zeros(d_out, np.float32), "b")]) if bias else y

    def attention(self, x, width, heads, mask=None):
        hd = width // heads
        shape = self.const(np.array([0, 0, heads, hd], np.int64), "shape")

        def split_heads(t):
            return self.op("Transpose", [self.op("Reshape", [t, shape])], perm=[0, 2, 1, 3])

        q = split_heads(self.linear(x, width, width))
        k = split_heads(self.linear(x, width, width))
        v = split_heads(self.linear(x, width, width))
        kt = self.op("Transpose", [k], perm=[0, 1, 3, 2])
        scores = self.op("Mul", [self.op("MatMul", [q, kt]), self.const(np.float32(hd**-0.5))])
        if mask is not None:
            scores = self.op("Add", [scores, mask])
        probs = self.op("Softmax", [scores], axis=-1)
        ctx = self.op("Transpose", [self.op("MatMul", [probs, v])], perm=[0, 2, 1, 3])
        ctx = self.op("Reshape", [ctx, self.const(np.array([0, 0, width], np.int64), "shape")])
        return self.linear(ctx, width, width)

    def block(self, x, width, heads, mask=None):
        x = self.op("Add", [x, self.attention(self.layer_norm(x, width), width, heads, mask)])
        h = self.linear(self.layer_norm(x, width), width, 4 * width)
        h = self.op("Mul", [h, self.op("Sigmoid", [self.op("Mul", [h, self.const(np.float32(1.702))])])])
        return self.op("Add", [x, self.linear(h, 4 * width, width)])


def vision_model(p, rng):
    g = Graph(rng)
    w, size, patch = p["v_width"], p["image_size"], p["patch"]
    grid = size // patch
    x = g.op("Conv", ["pixel_values", g.weight((w, 3, patch, patch))], kernel_shape=[patch, patch], strides=[patch, patch])
    x = g.op("Reshape", [x, g.const(np.array([0, w, grid * grid], np.int64), "shape")])
    x = g.op("Transpose", [x], perm=[0, 2, 1])
    batch = g.op("Slice", [g.op("Shape", ["pixel_values"]), g.const(np.array([0], np.int64)), g.const(np.array([1], np.int64))])
    cls_shape = g.op("Concat", [batch, g.const(np.array([1, w], np.int64))], axis=0)
    cls = g.op("Expand", [g.weight((1, 1, w), "class_embedding"), cls_shape])
    x = g.op("Concat", [cls, x], axis=1)
    x = g.op("Add", [x, g.weight((grid * grid + 1, w), "position_embedding")])
    x = g.layer_norm(x, w)
    for _ in range(p["v_layers"]):
        x = g.block(x, w, p["v_heads"])
    x = g.op("Gather", [x, g.const(np.int64(0))], axis=1)
    x = g.layer_norm(x, w)
    out = g.op("MatMul", [x, g.weight((w, p["embed_dim"]), "visual_projection")], hint="proj")
    g.nodes.append(helper.make_node("Identity", [out], ["image_embeds"]))
    graph = helper.make_graph(
        g.nodes, "clip_vision", [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("image_embeds", TensorProto.FLOAT, ["batch", p["embed_dim"]])], g.inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)


def text_model(p, rng):
    g = Graph(rng)
    w = p["t_width"]
    seq = g.op("Slice", [g.op("Shape", ["input_ids"]), g.const(np.array([1], np.int64)), g.const(np.array([2], np.int64))])
    zero = g.const(np.array([0], np.int64))
    x = g.op("Gather", [g.weight((VOCAB, w), "token_embedding"), "input_ids"], axis=0)
    pos = g.op("Slice", [g.weight((CONTEXT, w), "position_embedding"), zero, seq, zero])
    x = g.op("Add", [x, pos])
    # Causal mask [L, L] plus the padding mask [N, 1, 1, L], both additive.
    causal = np.triu(np.full((CONTEXT, CONTEXT), -1e4, np.float32), k=1)
    axes = g.const(np.array([0, 1], np.int64))
    causal = g.op("Slice", [g.const(causal, "causal"), g.op("Concat", [zero, zero], axis=0), g.op("Concat", [seq, seq], axis=0), axes])
    keep = g.op("Cast", ["attention_mask"], to=TensorProto.FLOAT)
    pad = g.op("Mul", [g.op("Sub", [g.const(np.float32(1.0)), keep]), g.const(np.float32(-1e4))])
    pad = g.op("Unsqueeze", [pad, g.const(np.array([1, 2], np.int64))])
    mask = g.op("Add", [causal, pad])
    for _ in range(p["t_layers"]):
        x = g.block(x, w, p["t_heads"], mask)
    x = g.layer_norm(x, w)
    # Pool at the end-of-text token: the highest id in each row, as in CLIP.
    eot = g.op("Unsqueeze", [g.op("ArgMax", ["input_ids"], axis=1, keepdims=0), g.const(np.array([1], np.int64))])
    x = g.op("GatherND", [x, eot], batch_dims=1)
    out = g.op("MatMul", [x, g.weight((w, p["embed_dim"]), "text_projection")], hint="proj")
    g.nodes.append(helper.make_node("Identity", [out], ["text_embeds"]))
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"]) for n in ("input_ids", "attention_mask")]
    graph = helper.make_graph(
        g.nodes, "clip_text", inputs, [helper.make_tensor_value_info("text_embeds", TensorProto.FLOAT, ["batch", p["embed_dim"]])], g.inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), required=True)
    ap.add_argument("--tokenizer", required=True, help="path of the CLIP tokenizer.json")
    ap.add_argument("--out", required=True, help="model folder to write")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    p = PRESETS[args.preset]
    rng = np.random.default_rng(args.seed)
    tmp = args.out.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    for name, model in (("vision_model.onnx", vision_model(p, rng)), ("text_model.onnx", text_model(p, rng))):
        onnx.checker.check_model(model)
        onnx.save(model, os.path.join(tmp, name))
    shutil.copyfile(args.tokenizer, os.path.join(tmp, "tokenizer.json"))
    meta = {
        "name": f"clip-{args.preset}-random",
        "embedding_dim": p["embed_dim"],
        "image_size": p["image_size"],
        "image_mean": CLIP_MEAN,
        "image_std": CLIP_STD,
        "resize": "shortest_edge_bicubic",
        "context_length": CONTEXT,
        "pad_token_id": 0,
        "prompt_template": "a photo of {}",
    }
    with open(os.path.join(tmp, "model.json"), "w") as f:
        json.dump(meta, f, indent=2)
    # model.json is written last and the folder renamed into place: a present model.json means a
    # complete folder (make uses it as the target).
    shutil.rmtree(args.out, ignore_errors=True)
    os.rename(tmp, args.out)
    print(f"wrote {args.out} ({args.preset}, dim {p['embed_dim']}, image {p['image_size']})")


if __name__ == "__main__":
    main()
