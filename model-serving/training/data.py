"""Training and evaluation data for the fashion CLIP model (numpy + Pillow only, no PyTorch).

Owns:
  * the catalogue rows of Fashion Product Images (Small) (`styles.csv` + `images/<id>.jpg`),
  * the deterministic train / validation split (FNV-1a of the product id, so the Rust test can
    pick validation photos with the same rule),
  * the captions a product is trained on (its display name plus attribute templates),
  * Fashion-MNIST from the Debian package's idx files,
  * images preprocessed exactly as model-serving does (model-serving/tools/reference.py's
    PIL transform), cached as uint8 so that training reads them once.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import html
import os
import random
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tools"))
import reference  # noqa: E402  (model-serving/tools/reference.py: the server's PIL-exact transform)

VAL_BUCKETS = 10  # one product in ten is held out

FASHION_MNIST_CLASSES = [
    "t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot",
]

# Natural singular names for the catalogue's article types (the rest are derived by `singular`).
SINGULAR = {
    "Tshirts": "t-shirt", "Shirts": "shirt", "Casual Shoes": "casual shoe", "Tops": "top", "Kurtas": "kurta",
    "Sports Shoes": "sports shoe", "Watches": "watch", "Handbags": "handbag", "Heels": "heel",
    "Sunglasses": "sunglasses", "Sweaters": "sweater", "Sandals": "sandal", "Flip Flops": "flip flop",
    "Wallets": "wallet", "Sweatshirts": "sweatshirt", "Belts": "belt", "Trousers": "trouser",
    "Formal Shoes": "formal shoe", "Jeans": "jeans", "Socks": "socks", "Jackets": "jacket", "Flats": "flat",
    "Backpacks": "backpack", "Briefs": "briefs", "Shorts": "shorts", "Dresses": "dress", "Clutches": "clutch",
    "Track Pants": "track pants", "Caps": "cap", "Ties": "tie", "Kurtis": "kurti", "Earrings": "earring",
    "Bra": "bra", "Innerwear Vests": "innerwear vest", "Leggings": "leggings", "Skirts": "skirt",
    "Capris": "capris", "Tunics": "tunic", "Perfume and Body Mist": "perfume", "Scarves": "scarf",
    "Mufflers": "muffler", "Cufflinks": "cufflinks", "Sarees": "saree", "Dupatta": "dupatta",
    "Trunk": "trunk", "Pendant": "pendant", "Necklace and Chains": "necklace", "Ring": "ring",
    "Bracelet": "bracelet", "Jewellery Set": "jewellery set", "Tracksuits": "tracksuit",
    "Night suits": "night suit", "Nightdress": "nightdress", "Bangle": "bangle", "Laptop Bag": "laptop bag",
    "Duffel Bag": "duffel bag", "Messenger Bag": "messenger bag", "Mobile Pouch": "mobile pouch",
    "Stoles": "stole", "Waistcoat": "waistcoat", "Blazers": "blazer", "Rain Jacket": "rain jacket",
    "Boxers": "boxers", "Camisoles": "camisole", "Lounge Pants": "lounge pants", "Gloves": "gloves",
    "Umbrellas": "umbrella", "Deodorant": "deodorant", "Lip Gloss": "lip gloss", "Jumpsuit": "jumpsuit",
    "Suspenders": "suspenders", "Shapewear": "shapewear", "Sports Sandals": "sports sandal",
    "Rucksacks": "rucksack", "Tights": "tights", "Water Bottle": "water bottle", "Free Gifts": "free gift",
}

GENDER_WORDS = {"Men": "men", "Women": "women", "Boys": "boys", "Girls": "girls", "Unisex": "unisex"}


def fnv1a32(text: str) -> int:
    """32-bit FNV-1a of the UTF-8 bytes (a split rule that is one loop in any language)."""
    h = 0x811C9DC5
    for b in text.encode("utf-8"):
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


def is_validation(product_id: str) -> bool:
    """The held-out split: FNV-1a(id) % 10 == 0."""
    return fnv1a32(product_id) % VAL_BUCKETS == 0


def clean_text(text: str) -> str:
    """As the server does before tokenizing: HTML entities unescaped twice, spaces collapsed."""
    return " ".join(html.unescape(html.unescape(text)).split())


def singular(article_type: str) -> str:
    """A natural lower-case singular name for an article type ("Watches" -> "watch")."""
    if article_type in SINGULAR:
        return SINGULAR[article_type]
    word = article_type.lower()
    if word.endswith("ies"):
        return word[:-3] + "y"
    return word[:-1] if word.endswith("s") and not word.endswith("ss") else word


@dataclass(frozen=True)
class Product:
    id: str
    gender: str
    master_category: str
    sub_category: str
    article_type: str
    colour: str
    season: str
    usage: str
    name: str

    @property
    def type_name(self) -> str:
        return singular(self.article_type)

    @property
    def colour_name(self) -> str:
        return self.colour.lower()

    @property
    def gender_name(self) -> str:
        return GENDER_WORDS.get(self.gender, self.gender.lower())


def load_products(dataset_dir: Path) -> list[Product]:
    """Rows of styles.csv that have a photo and the fields the captions need, in file order."""
    products = []
    with open(dataset_dir / "styles.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            pid = row["id"].strip()
            if not pid or not (dataset_dir / "images" / f"{pid}.jpg").is_file():
                continue
            if not row.get("articleType") or not row.get("productDisplayName"):
                continue
            products.append(Product(
                id=pid, gender=row["gender"].strip(), master_category=row["masterCategory"].strip(),
                sub_category=row["subCategory"].strip(), article_type=row["articleType"].strip(),
                colour=(row.get("baseColour") or "").strip(), season=(row.get("season") or "").strip(),
                usage=(row.get("usage") or "").strip(), name=clean_text(row["productDisplayName"]),
            ))
    return products


def split(products: list[Product]) -> tuple[list[Product], list[Product]]:
    train = [p for p in products if not is_validation(p.id)]
    val = [p for p in products if is_validation(p.id)]
    return train, val


def product_captions(p: Product) -> list[str]:
    """Every caption a product may be trained with: its display name and attribute templates.

    Templates cover the forms shoppers' queries take once the backend wraps them in the model's
    prompt ("a photo of {query}"): bare attributes, "a photo of a ...", gender phrasings."""
    t, c, g = p.type_name, p.colour_name, p.gender_name
    plural = p.article_type.lower()
    caps = [
        p.name,
        p.name,  # twice: the display name carries the brand and details, half the samples
        f"a photo of {p.name.lower()}",
        f"a photo of a {t}",
        f"a photo of {plural}",
        f"{t}",
        f"a photo of a {c} {t}" if c else f"a photo of a {t}",
        f"{c} {t}" if c else t,
        f"{c} {plural}" if c else plural,
        f"a photo of a {c} {t} for {g}" if c else f"a photo of a {t} for {g}",
        f"{g} {t}",
        f"{g} {plural}",
        f"a photo of a {t} for {g}",
        f"{c} {t} for {g}" if c else f"{t} for {g}",
    ]
    if p.usage and p.usage != "NA":
        caps.append(f"{p.usage.lower()} {c} {t}".replace("  ", " "))
    if p.season:
        caps.append(f"{p.season.lower()} {t}")
    return caps


def fashion_mnist_captions(label: int) -> list[str]:
    name = FASHION_MNIST_CLASSES[label]
    return [f"a photo of a {name}", name, f"a black and white photo of a {name}"]


def find_fashion_mnist() -> Path | None:
    """The Debian package's folder (dataset-fashion-mnist), if installed."""
    for d in ("/usr/share/datasets/fashion-mnist", "/usr/share/fashion-mnist"):
        if Path(d, "train-images-idx3-ubyte.gz").is_file():
            return Path(d)
    return None


def read_idx(path: Path) -> np.ndarray:
    """An idx file (gzip), as uint8 [N] labels or [N, rows, cols] images."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic = struct.unpack(">I", data[:4])[0]
    dims = magic & 0xFF
    shape = struct.unpack(">" + "I" * dims, data[4 : 4 + 4 * dims])
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)


def fashion_mnist(folder: Path, part: str, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A class-balanced, seeded subset: (images uint8 [N,28,28], labels [N])."""
    prefix = "train" if part == "train" else "t10k"
    images = read_idx(folder / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz")
    rng = np.random.default_rng(seed)
    picked = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in range(10)])
    picked.sort()
    return images[picked], labels[picked]


def to_uint8_hwc(im: Image.Image, size: int) -> np.ndarray:
    """The server's transform (shortest edge, PIL bicubic, centre crop) before normalisation."""
    x = reference.clip_transform(im, size, [0.0, 0.0, 0.0], [1.0, 1.0, 1.0])  # CHW in [0, 1]
    return np.rint(x.transpose(1, 2, 0) * 255.0).astype(np.uint8)


def cached_catalogue_pixels(dataset_dir: Path, products: list[Product], size: int, cache_dir: Path) -> np.ndarray:
    """uint8 [N, size, size, 3] for `products`, cached by the id list, size and folder."""
    key = hashlib.sha256(("|".join(p.id for p in products) + f"|{size}|{dataset_dir.resolve()}").encode()).hexdigest()[:16]
    path = cache_dir / f"catalogue-{size}-{key}.npy"
    if path.is_file():
        return np.load(path)
    cache_dir.mkdir(parents=True, exist_ok=True)
    out = np.empty((len(products), size, size, 3), np.uint8)
    for i, p in enumerate(products):
        out[i] = to_uint8_hwc(reference.load_rgb(dataset_dir / "images" / f"{p.id}.jpg"), size)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, out)
    os.replace(tmp, path)
    return out


def fashion_mnist_pixels(images: np.ndarray, size: int) -> np.ndarray:
    """Grey 28x28 digits-style images as RGB at the model size, via the same transform."""
    out = np.empty((len(images), size, size, 3), np.uint8)
    for i, im in enumerate(images):
        out[i] = to_uint8_hwc(Image.fromarray(im, "L").convert("RGB"), size)
    return out


def sample_caption(captions: list[str], rng: random.Random) -> str:
    return captions[rng.randrange(len(captions))]
