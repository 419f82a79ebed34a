"""Small synthetic HAM10000, APTOS 2019 and Hyper-Kvasir downloads in exactly the real on-disk layouts.

    HAM10000:     <out>/HAM10000_metadata.csv, <out>/HAM10000_images_part_{1,2}/<image_id>.jpg
    APTOS 2019:   <out>/train.csv (id_code,diagnosis), <out>/train_images/<id_code>.png
    Hyper-Kvasir: <out>/labeled-images/<tract>/<category>/<class>/<uuid>.jpg

so that the real loaders, the preparation and the launchers run end to end without the downloads (tests,
demos). Class sizes follow the real ones scaled down (at least `min_per_class`, enough for 5 folds).
Each class has its own blob colour, shape and stripe frequency over a dataset-like background, so a small
CNN can learn it; HAM10000 lesions get 1-3 images that share the lesion's geometry, as in the real data.
Deterministic for a seed. ISIC-2019-LT lives in `synthetic.py`.
"""

from __future__ import annotations

import csv
import math
import os
import uuid
from typing import Sequence

import numpy as np
from PIL import Image

from foprokd_jax.data import aptos, ham10000, hyperkvasir

# Real class sizes in each module's class order.
HAM_COUNTS = dict(MEL=1113, NV=6705, BCC=514, AKIEC=327, BKL=1099, DF=115, VASC=142)
BACKGROUNDS = {"skin": (224, 180, 150), "fundus": (150, 60, 30), "endoscopy": (200, 110, 100)}


def scaled_counts(real: Sequence[int], scale: float, min_per_class: int) -> list:
    return [max(min_per_class, int(round(n * scale))) for n in real]


def draw_class_image(
    label: int,
    num_classes: int,
    width: int,
    height: int,
    background: str,
    shape_rng: np.random.Generator,
    noise_rng: np.random.Generator,
) -> Image.Image:
    """Background + a textured ellipse whose hue (label / num_classes), aspect and stripes encode the class."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.array(BACKGROUNDS[background], np.float32) + shape_rng.normal(0, 8, 3)
    hue = label / num_classes
    colour = 127.5 + 110 * np.array([math.cos(2 * math.pi * (hue + k / 3)) for k in range(3)])
    cx = width * (0.5 + shape_rng.uniform(-0.08, 0.08))
    cy = height * (0.5 + shape_rng.uniform(-0.08, 0.08))
    rx = min(width, height) * shape_rng.uniform(0.25, 0.35)
    ry = rx * (0.6 + 0.2 * (label % 3))
    inside = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0
    period = min(width, height) / (2 + 1.5 * (label % 4))
    stripes = 0.5 + 0.5 * np.sin(2 * math.pi * (xx + yy) / period)
    img = np.broadcast_to(base, (height, width, 3)).copy()
    img[inside] = colour * (0.7 + 0.3 * stripes[inside, None])
    img += noise_rng.normal(0, 6, img.shape).astype(np.float32)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def write_synthetic_ham10000(
    out_dir: str,
    scale: float = 0.01,
    min_per_class: int = 10,
    image_size: tuple = (60, 45),
    seed: int = 0,
    jpeg_quality: int = 90,
) -> dict:
    """HAM10000 layout; lesions of 1-3 images; images alternate between the two part folders."""
    rng = np.random.default_rng([seed, 10])
    counts = scaled_counts([HAM_COUNTS[c] for c in ham10000.CLASS_NAMES], scale, min_per_class)
    lesions = []  # (label, number of images)
    for label, count in enumerate(counts):
        left = count
        while left > 0:
            size = min(left, int(rng.integers(1, 4)))
            lesions.append((label, size))
            left -= size
    lesions = [lesions[i] for i in rng.permutation(len(lesions))]
    dirs = [os.path.join(out_dir, d) for d in ham10000.IMAGE_DIRS]
    for d in dirs:
        os.makedirs(d, exist_ok=True)
    records, image_index = [], 0
    width, height = image_size
    for lesion_number, (label, size) in enumerate(lesions):
        lesion_id = f"HAM_{lesion_number:07d}"
        for _ in range(size):
            image_id = f"ISIC_{image_index:07d}"
            shape_rng = np.random.default_rng([seed, 11, lesion_number])  # shared by the lesion's images
            draw_class_image(
                label, len(counts), width, height, "skin", shape_rng, np.random.default_rng([seed, 12, image_index])
            ).save(os.path.join(dirs[image_index % 2], f"{image_id}.jpg"), quality=jpeg_quality)
            records.append(
                [
                    lesion_id,
                    image_id,
                    ham10000.DX_CODES[label],
                    "histo",
                    str(30 + image_index % 50),
                    ("male", "female")[image_index % 2],
                    "back",
                    "synthetic",
                ]
            )
            image_index += 1
    metadata = os.path.join(out_dir, ham10000.METADATA_CSV)
    with open(metadata, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization", "dataset"])
        writer.writerows(records)
    return {
        "dataset": "ham10000",
        "image_root": out_dir,
        "label_csv": metadata,
        "num_images": len(records),
        "num_lesions": len(lesions),
        "class_names": ham10000.CLASS_NAMES,
        "class_counts": counts,
    }


def write_synthetic_aptos(
    out_dir: str, scale: float = 0.02, min_per_class: int = 10, image_size: tuple = (64, 48), seed: int = 0
) -> dict:
    """APTOS layout: train.csv rows in a random class order, PNGs named by a 12-hex-digit id_code."""
    rng = np.random.default_rng([seed, 20])
    counts = scaled_counts(aptos.REFERENCE_CLASS_COUNTS, scale, min_per_class)
    labels = np.concatenate([np.full(n, c, np.int32) for c, n in enumerate(counts)])
    labels = labels[rng.permutation(labels.size)]
    image_dir = os.path.join(out_dir, aptos.IMAGE_DIR)
    os.makedirs(image_dir, exist_ok=True)
    id_codes = [f"{int(v):012x}" for v in rng.choice(16**12 - 1, size=labels.size, replace=False)]
    width, height = image_size
    for k, (id_code, label) in enumerate(zip(id_codes, labels)):
        draw_class_image(
            int(label),
            len(counts),
            width,
            height,
            "fundus",
            np.random.default_rng([seed, 21, k]),
            np.random.default_rng([seed, 22, k]),
        ).save(os.path.join(image_dir, f"{id_code}.png"))
    label_csv = os.path.join(out_dir, aptos.LABEL_CSV)
    with open(label_csv, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id_code", "diagnosis"])
        writer.writerows([[i, int(y)] for i, y in zip(id_codes, labels)])
    return {
        "dataset": "aptos",
        "image_root": out_dir,
        "label_csv": label_csv,
        "num_images": int(labels.size),
        "class_names": aptos.CLASS_NAMES,
        "class_counts": counts,
    }


def write_synthetic_hyperkvasir(
    out_dir: str,
    scale: float = 0.01,
    min_per_class: int = 5,
    image_size: tuple = (64, 52),
    seed: int = 0,
    jpeg_quality: int = 90,
) -> dict:
    """Hyper-Kvasir `labeled-images` tree with all 23 class folders and uuid-named JPEGs."""
    rng = np.random.default_rng([seed, 30])
    names = hyperkvasir.CLASS_NAMES
    counts = scaled_counts([hyperkvasir.CLASS_TREE[c][2] for c in names], scale, min_per_class)
    tree = os.path.join(out_dir, hyperkvasir.TREE_NAME)
    width, height = image_size
    k = 0
    for label, (name, count) in enumerate(zip(names, counts)):
        tract, category, _ = hyperkvasir.CLASS_TREE[name]
        class_dir = os.path.join(tree, tract, category, name)
        os.makedirs(class_dir, exist_ok=True)
        for _ in range(count):
            image_id = str(uuid.UUID(bytes=rng.bytes(16), version=4))
            draw_class_image(
                label,
                len(names),
                width,
                height,
                "endoscopy",
                np.random.default_rng([seed, 31, k]),
                np.random.default_rng([seed, 32, k]),
            ).save(os.path.join(class_dir, f"{image_id}.jpg"), quality=jpeg_quality)
            k += 1
    return {
        "dataset": "hyperkvasir",
        "image_root": out_dir,
        "num_images": k,
        "class_names": names,
        "class_counts": counts,
    }


def write_synthetic(dataset: str, out_dir: str, **kwargs) -> dict:
    """Dispatch by registry name (see foprokd_jax.data.registry.DATASETS)."""
    from foprokd_jax.data import synthetic

    writers = {
        "ham10000": write_synthetic_ham10000,
        "aptos": write_synthetic_aptos,
        "hyperkvasir": write_synthetic_hyperkvasir,
        "isic2019_lt": synthetic.write_synthetic_isic,
    }
    if dataset not in writers:
        raise ValueError(f"no synthetic writer for dataset {dataset!r}; known: {sorted(writers)}")
    return writers[dataset](out_dir, **kwargs)
