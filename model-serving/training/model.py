"""The fashion CLIP model in PyTorch: a compact CNN image tower, a small transformer text tower, and
CLIP's learned temperature. Written with plain ops (no fused attention) so that the TorchScript ONNX
exporter produces graphs ONNX Runtime 1.31 runs as model-serving expects:

  image tower  pixel_values f32[N,3,S,S]          -> image_embeds f32[N,D]
  text tower   input_ids, attention_mask i64[N,L] -> text_embeds  f32[N,D]

The text tower pools by the attention mask (mean of the real tokens), so the padding model-serving
adds to a batch does not change a text's embedding.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ModelConfig:
    image_size: int = 96
    widths: tuple[int, ...] = (32, 64, 128, 256)
    vocab_size: int = 4096
    context_length: int = 32
    text_width: int = 192
    text_layers: int = 2
    text_heads: int = 4
    embed_dim: int = 256

    def to_dict(self) -> dict:
        return asdict(self)


def conv_bn(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with a skip connection (ResNet's basic block)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        nn.init.zeros_(self.bn2.weight)  # start as identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)), inplace=True)
        return F.relu(x + self.bn2(self.conv2(h)), inplace=True)


class ImageEncoder(nn.Module):
    """Stem (stride 2), then per stage a strided conv and a residual block; global average pool."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv_bn(3, cfg.widths[0], 2), ResidualBlock(cfg.widths[0])]
        for c_in, c_out in zip(cfg.widths[:-1], cfg.widths[1:]):
            layers += [conv_bn(c_in, c_out, 2), ResidualBlock(c_out)]
        self.features = nn.Sequential(*layers)
        self.proj = nn.Linear(cfg.widths[-1], cfg.embed_dim, bias=False)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.features(pixel_values)
        return self.proj(x.mean(dim=(2, 3)))


class Attention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        n, length, width = x.shape
        hd = width // self.heads
        q, k, v = self.qkv(x).reshape(n, length, 3, self.heads, hd).permute(2, 0, 3, 1, 4)
        scores = torch.matmul(q, k.transpose(-1, -2)) * (hd**-0.5) + bias
        ctx = torch.matmul(scores.softmax(dim=-1), v)
        return self.out(ctx.transpose(1, 2).reshape(n, length, width))


class Block(nn.Module):
    """Pre-norm transformer block (CLIP's), GELU MLP."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), bias)
        return x + self.mlp(self.ln2(x))


class TextEncoder(nn.Module):
    """Token + position embeddings, bidirectional transformer over the real tokens, masked mean."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.token = nn.Embedding(cfg.vocab_size, cfg.text_width)
        self.position = nn.Parameter(torch.randn(cfg.context_length, cfg.text_width) * 0.01)
        self.blocks = nn.ModuleList(Block(cfg.text_width, cfg.text_heads) for _ in range(cfg.text_layers))
        self.ln = nn.LayerNorm(cfg.text_width)
        self.proj = nn.Linear(cfg.text_width, cfg.embed_dim, bias=False)
        nn.init.normal_(self.token.weight, std=0.02)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        length = input_ids.shape[1]
        x = self.token(input_ids) + self.position[:length]
        keep = attention_mask.to(x.dtype)
        bias = ((1.0 - keep) * -1e4)[:, None, None, :]  # padding keys get no attention
        for block in self.blocks:
            x = block(x, bias)
        x = self.ln(x)
        pooled = (x * keep[:, :, None]).sum(dim=1) / keep.sum(dim=1, keepdim=True).clamp(min=1.0)
        return self.proj(pooled)


class FashionClip(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.image = ImageEncoder(cfg)
        self.text = TextEncoder(cfg)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image(pixel_values), dim=-1)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text(input_ids, attention_mask), dim=-1)


def clip_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over a batch of unit vectors. `same[i, j]` marks pairs whose captions are
    the same string (template captions repeat within a batch): they share the target mass instead of
    being pushed apart as false negatives."""
    logits = logit_scale.exp().clamp(max=100.0) * image @ text.t()
    target = same.float() / same.float().sum(dim=1, keepdim=True)
    loss_i = torch.sum(-target * logits.log_softmax(dim=1), dim=1).mean()
    loss_t = torch.sum(-target * logits.t().log_softmax(dim=1), dim=1).mean()
    return (loss_i + loss_t) / 2
