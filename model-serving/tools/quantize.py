#!/usr/bin/env python3
"""Write an int8 copy of a model folder (ONNX Runtime quantization), servable unchanged.

  quantize.py --src model-serving/models/fashion-clip-mini --out var/models/fashion-clip-mini-int8 \
      --dataset-dir ../shared/datasets/fashion-product-images-small

The copy keeps the folder's contract: vision_model.onnx still takes pixel_values f32[N,3,S,S] and
text_model.onnx input_ids/attention_mask i64[N,L], both still return f32 embeddings, so
model-serving loads it like any other folder. Inside, the chosen op types (MatMul/Gemm/Conv/Relu
by default: the arithmetic, not LayerNorm/Softmax/GELU/Add, which int8 hurts most and speeds
least) run in int8, weights per output channel, in a 7-bit range (--reduce-range, the default):
on a CPU without VNNI (AVX2 only) ONNX Runtime multiplies uint8 activations by int8 weights with
VPMADDUBSW, whose int16 sums saturate with full-range weights: there the trained model's int8
embeddings fell to cosine 0.23 of fp32's; with 7-bit weights they agree on either kind of CPU.

Steps, per ONNX file:
  1. fold constant Casts (a torch export that stored weights as fp16 feeds them through Cast
     nodes; the quantizer only sees weights that are initializers);
  2. onnxruntime's quant_pre_process: ONNX shape inference and basic graph optimisation;
  3. quantize:
       static   (default) activations' scales calibrated on development photos and captions:
                products of the training split only (FNV-1a(id) % 10 != 0, data.py), photos through
                reference.py's transform (the server's), captions through the folder's tokenizer
                as evaluate.py and the server encode them; QDQ format, which ORT fuses into int8
                kernels (VNNI/AMX on this hardware);
       dynamic  activations quantized per batch at run time (no calibration): int8 weights, and
                MatMulInteger/ConvInteger kernels that requantize on every call. Slower than
                static on both models here, and ORT's ConvInteger makes the trained model's CNN
                ~7x slower than fp32: kept for models without a dataset to calibrate on.

Measured on this project's 2-core AVX512-VNNI/AMX machine (compare_models.py, onnxruntime 1.31,
2 threads), static against fp32: fashion-clip-mini 2.3-2.9x images/s at batch 1-32 with caption
R@10 0.835 vs 0.839 and type P@10 0.848 vs 0.843 (evaluate.py); ViT-B/32 shapes 3.7-5.1x images/s
and 3.4x faster text queries; embeddings' cosine with fp32 >= 0.998.

Then model.json is copied with "precision": "int8" and a "quantization" object recording how, and
tokenizer.json is copied. Everything is written into a temporary folder beside --out, renamed into
place at the end: a crash leaves no half folder, and a present model.json means a complete one.

Memory stays bounded: calibration streams batches (--calib-batch), decoding photos as it goes,
and MinMax calibration keeps only two scalars per tensor and batch.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process
from tokenizers import Tokenizer

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "training"))
import data  # noqa: E402  (model-serving/training/data.py: catalogue rows, split, text cleaning)
import reference  # noqa: E402  (data.py put model-serving/tools on the path: the server's transform)

MODEL_FILES = ("model.json", "vision_model.onnx", "text_model.onnx", "tokenizer.json")
META_KEYS = ("name", "image_size", "image_mean", "image_std", "context_length")
IR_VERSION_MAX = 10  # what ONNX Runtime 1.31 reads; onnx 1.23 would write newer (see gen_models.py)
# The arithmetic, and Relu so that Conv+Relu fuse into one int8 kernel whose output range is the
# non-negative half (twice the resolution). Not Add/LayerNormalization/Softmax/GELU: int8 hurts
# them most (quantizing Add wrecks the text tower's attention mask) and speeds them least.
DEFAULT_OP_TYPES = ("MatMul", "Gemm", "Conv", "Relu")
SEED = 0


class Failure(Exception):
    """A problem with the inputs, reported as one line (no traceback)."""


def check_folder(folder: Path) -> dict:
    """The folder's model.json, after checking that it is a complete model folder."""
    if not folder.is_dir():
        raise Failure(f"{folder}: not a folder")
    missing = [f for f in MODEL_FILES if not (folder / f).is_file()]
    if missing:
        raise Failure(f"{folder}: not a model folder (missing {', '.join(missing)})")
    try:
        meta = json.loads((folder / "model.json").read_text())
    except json.JSONDecodeError as e:
        raise Failure(f"{folder}/model.json: {e}") from None
    absent = [k for k in META_KEYS if k not in meta]
    if absent:
        raise Failure(f"{folder}/model.json: missing {', '.join(absent)}")
    if meta.get("precision") == "int8":
        raise Failure(f"{folder} is already int8 (quantize the fp32 source instead)")
    return meta


# ---------------------------------------------------------------------------- graph preparation

def fold_constant_casts(model: onnx.ModelProto) -> int:
    """Replace Cast(initializer) nodes by initializers of the cast type; returns how many.

    The trained model's export keeps weights as fp16 initializers cast to fp32 at run time; the
    quantizer recognises a weight only when it is an initializer, so fold those casts first."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    kept, folded = [], 0
    for node in graph.node:
        if node.op_type == "Cast" and len(node.input) == 1 and node.input[0] in inits:
            to = next(a.i for a in node.attribute if a.name == "to")
            source = numpy_helper.to_array(inits[node.input[0]])
            target = onnx.helper.tensor_dtype_to_np_dtype(to)
            graph.initializer.append(numpy_helper.from_array(source.astype(target), node.output[0]))
            consumers[node.input[0]] -= 1
            folded += 1
            continue
        kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    unused = [i for i in graph.initializer if consumers.get(i.name, 0) == 0 and i.name in inits]
    for init in unused:
        graph.initializer.remove(init)
    return folded


def prepare(src: Path, dst: Path) -> None:
    """Steps 1 and 2: folded casts, then ORT's shape inference and basic optimisation."""
    model = onnx.load(str(src))
    folded = fold_constant_casts(model)
    folded_path = dst.with_suffix(".folded.onnx")
    onnx.save(model, str(folded_path))
    del model
    # ONNX shape inference only: the symbolic pass needs sympy, and the exports already carry
    # named dynamic axes that ONNX inference propagates.
    quant_pre_process(str(folded_path), str(dst), skip_symbolic_shape=True)
    folded_path.unlink()
    if folded:
        print(f"  {src.name}: folded {folded} constant Cast nodes", flush=True)


def finish(path: Path, src: Path) -> None:
    """Keep the source's IR version (capped at what the runtime reads) and check the result."""
    model = onnx.load(str(path))
    model.ir_version = min(onnx.load(str(src), load_external_data=False).ir_version, IR_VERSION_MAX)
    model.producer_name = "fashion-search model-serving/tools/quantize.py"
    onnx.save(model, str(path))
    onnx.checker.check_model(str(path))


# ---------------------------------------------------------------------------- calibration data

class Batches(CalibrationDataReader):
    """Feeds the calibrator one input dict at a time, built lazily (bounded memory)."""

    def __init__(self, make_batches):
        self.make_batches = make_batches
        self.it = None

    def get_next(self):
        if self.it is None:
            self.it = iter(self.make_batches())
        return next(self.it, None)

    def rewind(self):
        self.it = None


def development_products(dataset_dir: Path | None, count: int) -> list[data.Product]:
    """A seeded sample of training-split products (never validation ones: evaluate.py's)."""
    if dataset_dir is None:
        raise Failure("static quantization calibrates on the dataset: pass --dataset-dir (or set DATASET_DIR), "
                      "or use --mode dynamic")
    dataset_dir = Path(dataset_dir)
    if not (dataset_dir / "styles.csv").is_file():
        raise Failure(f"{dataset_dir}: no styles.csv (set --dataset-dir to Fashion Product Images (Small))")
    train, _ = data.split(data.load_products(dataset_dir))
    if not train:
        raise Failure(f"{dataset_dir}: no products with photos")
    return random.Random(SEED).sample(train, min(count, len(train)))


def image_batches(meta: dict, dataset_dir: Path, products: list[data.Product], batch: int):
    """pixel_values batches: development photos through the server's CLIP transform."""
    size, mean, std = meta["image_size"], meta["image_mean"], meta["image_std"]

    def make():
        for i in range(0, len(products), batch):
            x = [reference.clip_transform(reference.load_rgb(dataset_dir / "images" / f"{p.id}.jpg"), size, mean, std)
                 for p in products[i : i + batch]]
            yield {"pixel_values": np.stack(x)}
    return make


def calibration_texts(meta: dict, products: list[data.Product]) -> list[str]:
    """Captions as both callers send them: the display name bare (evaluate.py's caption queries)
    and wrapped in the model's prompt template (the backend's search queries)."""
    template = meta.get("prompt_template", "{}")
    return [p.name if i % 2 == 0 else template.replace("{}", p.name.lower()) for i, p in enumerate(products)]


def text_batches(meta: dict, folder: Path, texts: list[str], batch: int):
    """input_ids / attention_mask batches, tokenized and padded as evaluate.py and the server do."""
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=meta["context_length"])
    pad, limit = meta.get("pad_token_id", 0), meta["context_length"]

    def make():
        for i in range(0, len(texts), batch):
            rows = [e.ids[:limit] for e in tokenizer.encode_batch([data.clean_text(t) for t in texts[i : i + batch]])]
            length = max(len(r) for r in rows)
            ids = np.array([r + [pad] * (length - len(r)) for r in rows], np.int64)
            mask = np.array([[1] * len(r) + [0] * (length - len(r)) for r in rows], np.int64)
            yield {"input_ids": ids, "attention_mask": mask}
    return make


# ---------------------------------------------------------------------------- quantization

def quantize_file(src: Path, dst: Path, args, batches) -> None:
    """One ONNX file: prepare, quantize (static with `batches`, or dynamic), finish."""
    started = time.monotonic()
    prepared = dst.with_suffix(".prepared.onnx")
    prepare(src, prepared)
    op_types = list(args.op_types)
    if args.mode == "static":
        quantize_static(
            str(prepared), str(dst), Batches(batches),
            quant_format=QuantFormat.QDQ if args.format == "qdq" else QuantFormat.QOperator,
            op_types_to_quantize=op_types, per_channel=args.per_channel, reduce_range=args.reduce_range,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            # MinMax: the calibrator adds ReduceMin/ReduceMax after every tensor, so each batch
            # leaves two scalars per tensor behind, not the activations. (Its
            # CalibMaxIntermediateOutputs option is no help: in ORT 1.31 it drops the batches.)
            calibrate_method=CalibrationMethod.MinMax,
            # Only MatMuls by a weight: attention's activation-by-activation products (Q·Kᵀ,
            # softmax·V) lose the most precision and gain little (as quantize_dynamic does).
            # MatMul outputs stay float (DequantizeLinear inputs, float output: ORT fuses that into
            # MatMulIntegerToFloat); what follows them (bias Add, residual Add, the embedding) is
            # float anyway, and a quantized embedding would be rounded to 256 levels. Conv keeps
            # its quantized output: QLinearConv chains need it.
            extra_options={"MatMulConstBOnly": True, "OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm"]},
        )
    else:
        quantize_dynamic(str(prepared), str(dst), op_types_to_quantize=op_types, per_channel=args.per_channel,
                         reduce_range=args.reduce_range,
                         weight_type=QuantType.QInt8)
    prepared.unlink()
    finish(dst, src)
    mb = lambda p: p.stat().st_size / 1e6  # noqa: E731
    print(f"  {src.name}: {mb(src):.1f} MB -> {mb(dst):.1f} MB ({time.monotonic() - started:.0f} s)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", type=Path, required=True, help="fp32 model folder")
    ap.add_argument("--out", type=Path, required=True, help="int8 model folder to write (replaced if present)")
    ap.add_argument("--mode", choices=("static", "dynamic"), default="static")
    ap.add_argument("--format", choices=("qdq", "qoperator"), default="qdq", help="static only: graph format")
    ap.add_argument("--per-channel", action=argparse.BooleanOptionalAction, default=True,
                    help="one weight scale per output channel (default) or per tensor")
    ap.add_argument("--reduce-range", action=argparse.BooleanOptionalAction, default=True,
                    help="7-bit weights (default): exact on CPUs without VNNI, whose uint8 x int8 kernel "
                         "(VPMADDUBSW) saturates with 8-bit weights")
    ap.add_argument("--op-types", type=lambda s: tuple(s.split(",")), default=DEFAULT_OP_TYPES,
                    help="comma-separated op types to quantize (default: %(default)s)")
    ap.add_argument("--dataset-dir", type=Path, default=os.environ.get("DATASET_DIR") or None,
                    help="Fashion Product Images (Small), for static calibration (default: $DATASET_DIR)")
    ap.add_argument("--calibration-images", type=int, default=256, help="development photos (static)")
    ap.add_argument("--calibration-texts", type=int, default=512, help="development captions (static)")
    ap.add_argument("--calib-batch", type=int, default=8, help="calibration batch size")
    args = ap.parse_args()

    try:
        meta = check_folder(args.src)
        if args.out.resolve() == args.src.resolve():
            raise Failure("--out must differ from --src")
        image_feed = text_feed = None
        if args.mode == "static":
            if args.calibration_images < 1 or args.calibration_texts < 1:
                raise Failure("static quantization needs --calibration-images and --calibration-texts >= 1")
            products = development_products(args.dataset_dir, max(args.calibration_images, args.calibration_texts))
            # (fewer when the catalogue is smaller than asked for; model.json records what was used)
            args.calibration_images = min(args.calibration_images, len(products))
            args.calibration_texts = min(args.calibration_texts, len(products))
            image_feed = image_batches(meta, Path(args.dataset_dir), products[: args.calibration_images], args.calib_batch)
            texts = calibration_texts(meta, products[: args.calibration_texts])
            text_feed = text_batches(meta, args.src, texts, args.calib_batch)
    except Failure as e:
        sys.exit(f"quantize.py: {e}")

    how = args.mode
    if args.mode == "static":
        how += f", {args.format}, {args.calibration_images} images + {args.calibration_texts} captions"
    print(f"quantizing {args.src} -> {args.out} ({how})", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # Leftovers of a killed run (SIGKILL, power loss) beside --out: hidden, never read; remove them.
    for stale in args.out.parent.glob(f".{args.out.name}.*"):
        shutil.rmtree(stale, ignore_errors=True)
    # SIGTERM (make killed, a CI timeout) unwinds like Ctrl-C, so the temporary folder goes too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tmp = Path(tempfile.mkdtemp(prefix=f".{args.out.name}.", dir=args.out.parent))
    try:
        quantize_file(args.src / "vision_model.onnx", tmp / "vision_model.onnx", args, image_feed)
        quantize_file(args.src / "text_model.onnx", tmp / "text_model.onnx", args, text_feed)
        shutil.copyfile(args.src / "tokenizer.json", tmp / "tokenizer.json")
        # A name of its own: the backend caches query embeddings per model name, and int8
        # vectors, close as they are, are not the fp32 model's.
        source_name = meta["name"]
        meta["name"] = f"{source_name}-int8"
        meta["precision"] = "int8"
        meta["quantization"] = {
            "tool": "onnxruntime.quantization",
            "mode": args.mode,
            "format": args.format if args.mode == "static" else "qoperator",
            "per_channel": args.per_channel,
            "op_types": list(args.op_types),
            "weights": "int8 (symmetric, 7-bit range)" if args.reduce_range else "int8 (symmetric)",
            "activations": "uint8, calibrated min/max" if args.mode == "static" else "uint8, per batch at run time",
            "calibration_images": args.calibration_images if args.mode == "static" else 0,
            "calibration_texts": args.calibration_texts if args.mode == "static" else 0,
            "calibration_split": "training (FNV-1a(id) % 10 != 0)" if args.mode == "static" else None,
            "source_model": source_name,
        }
        # model.json last: its presence marks a complete folder (make's target).
        (tmp / "model.json").write_text(json.dumps(meta, indent=2) + "\n")
        os.chmod(tmp, 0o755)
        if args.out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{args.out.name}.old.", dir=args.out.parent))
            os.rename(args.out, old / "folder")
            os.rename(tmp, args.out)
            shutil.rmtree(old)
        else:
            os.rename(tmp, args.out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
