#!/usr/bin/env python3
"""Train the project's fashion CLIP model and export it as a model-serving model folder.

Steps, all seeded:
  1. a WordPiece tokenizer (HF `tokenizer.json`) whose vocabulary is the training captions' words;
  2. contrastive image-text training (CLIP's symmetric loss, learned temperature) on the training
     split of Fashion Product Images (Small) -- display names plus attribute templates -- and a
     class-balanced subset of Fashion-MNIST ("a photo of a <class>");
  3. export of both towers to ONNX with the names model-serving expects (pixel_values ->
     image_embeds; input_ids, attention_mask -> text_embeds), weights stored as float16 and cast to
     float32 on load; the ONNX outputs are checked against PyTorch, before and after the float16
     storage (max abs diff printed, asserted);
  4. model.json (preprocessing: size, CLIP mean/std, shortest-edge bicubic + centre crop),
     tokenizer.json and training.json (recipe, per-epoch log, timings) written beside them.

The validation split (FNV-1a(id) % 10 == 0, see data.py) is never trained on; its figures here are
only a progress signal -- `make eval` measures the exported model.

Example (the `make train` recipe):
  python train.py --dataset-dir ../shared/datasets/fashion-product-images-small \
      --out model-serving/models/fashion-clip-mini --init-out var/models/fashion-clip-mini-init
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

import data
from model import FashionClip, ModelConfig, clip_loss

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
OPSET = 17
IR_VERSION = 10  # what ONNX Runtime 1.31 reads (as model-serving/tools/gen_models.py)


def log(message: str) -> None:
    print(message, flush=True)


# ---------------------------------------------------------------------------------------- tokenizer

def build_tokenizer(corpus: list[str], vocab_size: int, context_length: int) -> Tokenizer:
    """WordPiece over lower-cased, accent-stripped words; [CLS] text [SEP]; [PAD] is id 0.

    The vocabulary is chosen here rather than by the library's trainer (whose tie-breaking between
    equally frequent pieces changes from run to run): every character seen, alone and as a
    continuation ("##x"), so any word still tokenizes, then whole words by falling frequency, ties
    by spelling, while they occur at least twice and fit in `vocab_size`."""
    normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=True, lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for text in corpus:
        counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = sorted({c for word in counts for c in word})
    vocab = SPECIAL_TOKENS + chars + ["##" + c for c in chars]
    words = sorted((w for w, n in counts.items() if n >= 2 and len(w) > 1), key=lambda w: (-counts[w], w))
    vocab += words[: max(0, vocab_size - len(vocab))]
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.decoder = decoders.WordPiece()
    tok.enable_truncation(max_length=context_length)
    return tok


def encode_texts(tok: Tokenizer, texts: list[str]) -> list[list[int]]:
    """As model-serving tokenizes: HTML entities unescaped twice, truncated at the context length."""
    return [e.ids for e in tok.encode_batch([data.clean_text(t) for t in texts])]


def pad_batch(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pads to the longest row with id 0, as the server does; returns (input_ids, attention_mask)."""
    length = max(len(r) for r in rows)
    ids = torch.zeros((len(rows), length), dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


# ---------------------------------------------------------------------------------------- images

def normalise(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 [N,H,W,3] -> CLIP-normalised f32 [N,3,H,W] (reference.py's arithmetic)."""
    x = pixels.permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def augment(pixels: torch.Tensor, gen: torch.Generator, shift: int) -> torch.Tensor:
    """Random horizontal flip and a small random shift (edge-replicated). No colour jitter: colour is
    an attribute the model must keep."""
    n, h, w, _ = pixels.shape
    x = pixels.permute(0, 3, 1, 2).float()
    flip = torch.rand(n, generator=gen) < 0.5
    x[flip] = x[flip].flip(-1)
    if shift > 0:
        padded = F.pad(x, (shift, shift, shift, shift), mode="replicate")
        offsets = torch.randint(0, 2 * shift + 1, (n, 2), generator=gen)
        x = torch.stack([padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets.tolist())])
    return x.permute(0, 2, 3, 1)


# ---------------------------------------------------------------------------------------- progress signal

@torch.no_grad()
def quick_validation(model: FashionClip, val_pixels: torch.Tensor, val_names: list[list[int]], val_types: list[str]) -> dict:
    """Caption -> image R@10 and image -> image article-type P@10 on the validation split."""
    model.eval()
    img = torch.cat([model.encode_image(normalise(val_pixels[i : i + 256])) for i in range(0, len(val_pixels), 256)])
    txt = torch.cat([model.encode_text(*pad_batch(val_names[i : i + 256])) for i in range(0, len(val_names), 256)])
    model.train()
    top = (txt @ img.t()).topk(10, dim=1).indices
    r10 = (top == torch.arange(len(img))[:, None]).any(dim=1).float().mean().item()
    sim = img @ img.t()
    sim.fill_diagonal_(-2.0)
    nn_idx = sim.topk(10, dim=1).indices
    types = np.array(val_types)
    p10 = float((types[nn_idx.numpy()] == types[:, None]).mean())
    return {"caption_r10": round(r10, 4), "image_type_p10": round(p10, 4)}


# ---------------------------------------------------------------------------------------- export

class VisionTower(torch.nn.Module):
    def __init__(self, model: FashionClip) -> None:
        super().__init__()
        self.image = model.image

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.image(pixel_values)


class TextTower(torch.nn.Module):
    def __init__(self, model: FashionClip) -> None:
        super().__init__()
        self.text = model.text

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.text(input_ids, attention_mask)


def store_weights_fp16(model: onnx.ModelProto, min_elements: int = 1024) -> onnx.ModelProto:
    """Large float initializers stored as float16, each followed by a Cast to float: the file halves,
    ONNX Runtime folds the casts at load and computes in float32 as before."""
    graph = model.graph
    casts = []
    for init in graph.initializer:
        if init.data_type != TensorProto.FLOAT:
            continue
        array = numpy_helper.to_array(init)
        if array.size < min_elements:
            continue
        name = init.name
        init.CopyFrom(numpy_helper.from_array(array.astype(np.float16), name + "_fp16"))
        casts.append(helper.make_node("Cast", [name + "_fp16"], [name], to=TensorProto.FLOAT, name="cast_" + name))
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    return model


def export_onnx(module: torch.nn.Module, args: tuple, path: Path, input_names: list[str], output_name: str,
                dynamic_axes: dict) -> None:
    """float32 ONNX (opset 17, IR 10) with the given input and output names."""
    tmp = path.with_suffix(".raw.onnx")
    torch.onnx.export(module, args, str(tmp), input_names=input_names, output_names=[output_name],
                      dynamic_axes=dynamic_axes, opset_version=OPSET, do_constant_folding=True, dynamo=False)
    model = onnx.load(str(tmp))
    tmp.unlink()
    model.ir_version = min(model.ir_version, IR_VERSION)
    model.producer_name = "fashion-search model-serving/training"
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def ort_session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def export_folder(model: FashionClip, tok: Tokenizer, out: Path, name: str, check_pixels: torch.Tensor,
                  check_texts: list[list[int]], fp16: bool, extra: dict) -> dict:
    """Writes a complete model folder (renamed into place; model.json last) and returns the checks."""
    cfg = model.cfg
    model = copy.deepcopy(model).eval()
    tmp = Path(str(out).rstrip("/") + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    vision, text = VisionTower(model).eval(), TextTower(model).eval()
    pixels = normalise(check_pixels)
    vpath, tpath = tmp / "vision_model.onnx", tmp / "text_model.onnx"
    with torch.no_grad():
        export_onnx(vision, (pixels[:2],), vpath, ["pixel_values"], "image_embeds",
                    {"pixel_values": {0: "batch"}, "image_embeds": {0: "batch"}})
        ids, mask = pad_batch(check_texts[:3])
        export_onnx(text, (ids, mask), tpath, ["input_ids", "attention_mask"], "text_embeds",
                    {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
                     "text_embeds": {0: "batch"}})

        # ONNX Runtime against PyTorch on real inputs: several batch sizes and sequence lengths.
        text_batches = [pad_batch(rows) for rows in (check_texts[:1], check_texts[:5], check_texts)]
        want_v = vision(pixels).numpy()
        want_t = [text(ids, mask).numpy() for ids, mask in text_batches]

        def compare(stage: str) -> None:
            vsess, tsess = ort_session(vpath), ort_session(tpath)
            got_v = vsess.run(["image_embeds"], {"pixel_values": pixels.numpy()})[0]
            got_t = [tsess.run(["text_embeds"], {"input_ids": i.numpy(), "attention_mask": m.numpy()})[0] for i, m in text_batches]
            checks[f"{stage}_vision_max_abs_diff"] = float(np.abs(got_v - want_v).max())
            checks[f"{stage}_vision_max_abs_diff_normalised"] = float(np.abs(unit(got_v) - unit(want_v)).max())
            checks[f"{stage}_text_max_abs_diff"] = max(float(np.abs(g - w).max()) for g, w in zip(got_t, want_t))
            checks[f"{stage}_text_max_abs_diff_normalised"] = max(float(np.abs(unit(g) - unit(w)).max()) for g, w in zip(got_t, want_t))
            # Padding must not move an embedding: the first text alone vs. padded among longer ones.
            checks[f"{stage}_text_padding_max_abs_diff"] = float(np.abs(got_t[0][0] - got_t[-1][0]).max())

        checks: dict[str, float] = {}
        compare("fp32")
        if fp16:
            for path in (vpath, tpath):
                onnx.save(store_weights_fp16(onnx.load(str(path))), str(path))
            compare("fp16_weights")
    for key, value in checks.items():
        log(f"  export check {key}: {value:.3g}")
    # The export itself is exact to float rounding; float16 storage moves unit vectors by < 1e-2.
    assert checks["fp32_vision_max_abs_diff_normalised"] < 1e-4 and checks["fp32_text_max_abs_diff_normalised"] < 1e-4, checks
    assert all(v < 1e-2 for k, v in checks.items() if k.endswith("normalised")), checks
    assert all(v < 1e-4 for k, v in checks.items() if "padding" in k), checks

    tok.save(str(tmp / "tokenizer.json"))
    (tmp / "training.json").write_text(json.dumps({**extra, "export_checks": checks}, indent=2) + "\n")
    meta = {
        "name": name,
        "embedding_dim": cfg.embed_dim,
        "image_size": cfg.image_size,
        "image_mean": CLIP_MEAN,
        "image_std": CLIP_STD,
        "resize": "shortest_edge_bicubic",
        "context_length": cfg.context_length,
        "pad_token_id": 0,
        "prompt_template": "a photo of {}",
    }
    (tmp / "model.json").write_text(json.dumps(meta, indent=2) + "\n")
    # Keep files the model folder holds beside the generated ones (the model card).
    if out.is_dir():
        for keep in ("MODEL_CARD.md",):
            if (out / keep).is_file():
                shutil.copyfile(out / keep, tmp / keep)
    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    os.rename(tmp, out)
    log(f"wrote {out}")
    return checks


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# ---------------------------------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset-dir", type=Path, required=True, help="fashion-product-images-small folder")
    ap.add_argument("--fashion-mnist-dir", type=Path, default=None, help="idx .gz folder (default: the Debian package's)")
    ap.add_argument("--out", type=Path, required=True, help="model folder to write")
    ap.add_argument("--init-out", type=Path, default=None, help="also export the untrained (seeded, random) model here")
    ap.add_argument("--name", default="fashion-clip-mini")
    ap.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache/fashion-search/training")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--fmnist-per-class", type=int, default=300, help="Fashion-MNIST training images per class")
    ap.add_argument("--limit", type=int, default=0, help="use only the first N training products (quick runs)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("TRAIN_THREADS", "2")))
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--no-fp16-weights", action="store_true", help="store ONNX weights as float32")
    args = ap.parse_args()

    started = time.time()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    np_rng = np.random.default_rng(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    # ---- data
    products = data.load_products(args.dataset_dir)
    train, val = data.split(products)
    if args.limit:
        train = train[: args.limit]
    fm_dir = args.fashion_mnist_dir or data.find_fashion_mnist()
    if fm_dir is None:
        sys.exit("Fashion-MNIST not found: install the Debian package dataset-fashion-mnist (make system-deps)")
    fm_images, fm_labels = data.fashion_mnist(fm_dir, "train", args.fmnist_per_class, args.seed)
    log(f"data: {len(train)} training products, {len(val)} validation products, {len(fm_images)} Fashion-MNIST images")

    t0 = time.time()
    size = args.image_size
    train_pixels = data.cached_catalogue_pixels(args.dataset_dir, train, size, args.cache_dir)
    val_pixels = data.cached_catalogue_pixels(args.dataset_dir, val, size, args.cache_dir)
    fm_pixels = data.fashion_mnist_pixels(fm_images, size)
    pixels = torch.from_numpy(np.concatenate([train_pixels, fm_pixels]))
    val_pixels_t = torch.from_numpy(val_pixels)
    log(f"images preprocessed at {size}px in {time.time() - t0:.0f}s")

    captions = [data.product_captions(p) for p in train] + [data.fashion_mnist_captions(int(l)) for l in fm_labels]

    # ---- tokenizer (training captions only)
    cfg0 = ModelConfig(image_size=size, vocab_size=args.vocab_size)
    corpus = [c for caps in captions for c in caps]
    tok = build_tokenizer(corpus, args.vocab_size, cfg0.context_length)
    unique = sorted(set(corpus))
    ids_of = dict(zip(unique, encode_texts(tok, unique)))
    val_names = encode_texts(tok, [p.name for p in val])
    cfg = ModelConfig(image_size=size, vocab_size=tok.get_vocab_size())
    log(f"tokenizer: WordPiece, {tok.get_vocab_size()} tokens, context {cfg.context_length}; {len(unique)} distinct captions")

    # ---- model
    model = FashionClip(cfg)
    initial = copy.deepcopy(model)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
    n = len(pixels)
    steps_per_epoch = n // args.batch_size  # drop the last partial batch: a full batch of negatives
    total = steps_per_epoch * args.epochs
    warmup = min(steps_per_epoch, total // 10 + 1)

    def lr_at(step: int) -> float:
        if step < warmup:
            return args.lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return args.lr * 0.5 * (1 + np.cos(np.pi * progress))

    log(f"model: image {sum(p.numel() for p in model.image.parameters()):,} params, "
        f"text {sum(p.numel() for p in model.text.parameters()):,} params; {args.epochs} epochs x {steps_per_epoch} steps "
        f"of {args.batch_size}, {args.threads} threads")
    history = []
    step = 0
    train_started = time.time()
    for epoch in range(args.epochs):
        t_epoch = time.time()
        order = np_rng.permutation(n)
        losses = []
        model.train()
        for b in range(steps_per_epoch):
            idx = order[b * args.batch_size : (b + 1) * args.batch_size]
            texts = [data.sample_caption(captions[i], rng) for i in idx]
            same = torch.tensor([[a == c for c in texts] for a in texts])
            ids, mask = pad_batch([ids_of[t] for t in texts])
            images = normalise(augment(pixels[torch.from_numpy(idx)], gen, shift=max(1, size // 16)))
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            loss = clip_loss(model.encode_image(images), model.encode_text(ids, mask), model.logit_scale, same)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, np.log(100.0))
            losses.append(loss.item())
            step += 1
        signal = quick_validation(model, val_pixels_t, val_names, [p.article_type for p in val])
        entry = {"epoch": epoch + 1, "loss": round(float(np.mean(losses)), 4), "temperature": round(1 / model.logit_scale.exp().item(), 4),
                 "seconds": round(time.time() - t_epoch, 1), **signal}
        history.append(entry)
        log(json.dumps(entry))
    train_seconds = time.time() - train_started

    # ---- export
    check_texts = encode_texts(tok, ["a photo of a watch", "black casual shoes for men", val[0].name if val else "dress",
                                     "a photo of a red dress for women", "blue jeans", "sunglasses", "a photo of a handbag",
                                     "Puma Men Black Sports Shoes with a very long description " * 3])
    check_pixels = val_pixels_t[:16] if len(val_pixels_t) else pixels[:16]
    recipe = {
        "name": args.name, "config": cfg.to_dict(), "seed": args.seed, "threads": args.threads, "epochs": args.epochs,
        "batch_size": args.batch_size, "lr": args.lr, "weight_decay": args.weight_decay, "fmnist_per_class": args.fmnist_per_class,
        "train_products": len(train), "val_products": len(val), "fashion_mnist_images": int(len(fm_images)),
        "split": "validation = FNV-1a-32(id) % 10 == 0", "torch": torch.__version__,
        "train_seconds": round(train_seconds, 1), "history": history,
    }
    log("export: trained model")
    export_folder(model, tok, args.out, args.name, check_pixels, check_texts, not args.no_fp16_weights,
                  {**recipe, "total_seconds": round(time.time() - started, 1)})
    if args.init_out:
        log("export: untrained model (same seed and architecture, random weights)")
        export_folder(initial, tok, args.init_out, args.name + "-init", check_pixels, check_texts, not args.no_fp16_weights,
                      {"name": args.name + "-init", "config": cfg.to_dict(), "seed": args.seed, "note": "untrained weights"})
    log(f"done in {time.time() - started:.0f}s")


if __name__ == "__main__":
    main()
