"""How the prepared images should be stored: bytes on disk against decode cost per image, per core.

    .venv/bin/python -m benchmarks.storage_encoding --size=224 --n=48
    taskset -c 1 .venv/bin/python -m benchmarks.storage_encoding --size=112 --out=enc112.json

Formats compared (all from the same images):
    raw S        uint8 S x S x 3 bytes, what `data/image_folder_tfds.py` stores (decode = a reshape)
    png S        lossless PNG at S x S
    jpeg95 S     PIL JPEG, quality 95, at S x S
    jpeg95 orig  JPEG q95 at the source resolution (1024 x 768 here), decoded and resized to S on every
                 read with `augment.resize_image`: a pipeline that skips the preparation step

For each: bytes per image (and the total for ISIC-2019's 25,331 images), decode images/s on one thread, and
decode + the reference `skin` augmentation (`augment.train_augment`) images/s, so the share of the per-image
cost that decoding takes is visible. Bytes are decoded from memory: disk reads are excluded (they favour
the smaller formats on slow disks). The test images come from the synthetic ISIC generator (skin tone, a
textured lesion, sensor-like noise at the source resolution); compressed sizes depend on content, so the
JPEG/PNG sizes of real dermoscopy differ, while the decode rates mostly scale with the pixel count.
"""
import argparse
import io
import json
import statistics
import sys
import time
import os

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

ISIC_2019_IMAGES = 25331
SOURCE_SIZE = (1024, 768)  # width, height: the common ISIC-2019 resolution


def source_images(n: int, size=SOURCE_SIZE, seed: int = 0) -> list:
    """`n` synthetic lesion images (PIL RGB) at the source resolution."""
    from foprokd_jax.data import synthetic
    rng = np.random.default_rng(seed)
    return [synthetic._draw_lesion(i % synthetic.NUM_CLASSES, size[0], size[1], rng) for i in range(n)]


def _jpeg(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=95)
    return out.getvalue()


def _png(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def encode_all(images: list, size: int) -> dict:
    """format name -> (list of stored bytes, decode function bytes -> uint8 S x S x 3)."""
    from foprokd_jax.data import augment
    small = [augment.resize_image(img, size) for img in images]
    shape = (size, size, 3)

    def decode_raw(b):
        return np.frombuffer(b, np.uint8).reshape(shape)

    def decode_pil(b):
        return np.asarray(Image.open(io.BytesIO(b)).convert("RGB"))

    def decode_and_resize(b):
        return np.asarray(augment.resize_image(Image.open(io.BytesIO(b)).convert("RGB"), size))

    return {
        f"raw {size}": ([np.asarray(s, np.uint8).tobytes() for s in small], decode_raw),
        f"png {size}": ([_png(s) for s in small], decode_pil),
        f"jpeg95 {size}": ([_jpeg(s) for s in small], decode_pil),
        "jpeg95 orig": ([_jpeg(img) for img in images], decode_and_resize),
    }


def _rate(fn, items, reps: int) -> float:
    """Median images/s of `fn` over `items`, `reps` passes after one warm-up pass (thread CPU clock)."""
    for item in items:
        fn(item)
    rates = []
    for _ in range(reps):
        t0 = time.thread_time()
        for item in items:
            fn(item)
        rates.append(len(items) / max(time.thread_time() - t0, 1e-9))
    return statistics.median(rates)


def measure(size: int, n: int, reps: int = 3, seed: int = 0) -> list:
    from benchmarks import cpu_contention
    from foprokd_jax.data import augment
    formats = encode_all(source_images(n, seed=seed), size)
    rows = []
    for name, (stored, decode) in formats.items():
        first = decode(stored[0])
        if first.shape != (size, size, 3) or first.dtype != np.uint8:
            raise AssertionError(f"{name} decodes to {first.shape} {first.dtype}")
        rng = np.random.default_rng(seed)
        before = cpu_contention.snapshot()
        decode_rate = _rate(decode, stored, reps)
        full_rate = _rate(lambda b: augment.train_augment(decode(b), rng), stored, reps)
        after = cpu_contention.snapshot()
        mean_bytes = float(np.mean([len(b) for b in stored]))
        rows.append({"format": name, "image_size": size, "bytes_per_image": round(mean_bytes),
                     "isic2019_total_gb": round(mean_bytes * ISIC_2019_IMAGES / 1e9, 2),
                     "decode_img_per_s": round(decode_rate, 1), "decode_augment_img_per_s": round(full_rate, 1),
                     "decode_share": round((1 / decode_rate) / (1 / full_rate), 3),
                     "foreign_share": cpu_contention.foreign_share(before, after)})
    return rows


def table(rows: list) -> str:
    from benchmarks import report
    body = [[r["format"], f"{r['bytes_per_image'] / 1024:.1f}", f"{r['isic2019_total_gb']:.2f}",
             f"{r['decode_img_per_s']:.0f}", f"{r['decode_augment_img_per_s']:.0f}",
             f"{100 * r['decode_share']:.0f}%",
             "n/a" if r["foreign_share"] is None else f"{100 * r['foreign_share']:.0f}%"] for r in rows]
    return report.markdown_table(["stored as", "KiB/image", "ISIC-2019 GB", "decode img/s (1 thread)",
                                  "decode + skin augment img/s", "decode share", "foreign CPU"], body)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=224, help="model input size S")
    parser.add_argument("--n", type=int, default=48, help="images per format")
    parser.add_argument("--reps", type=int, default=3, help="timed passes (median)")
    parser.add_argument("--out", default="", help="optional JSON file for the rows")
    args = parser.parse_args(argv)
    if args.size < 8 or args.n < 1 or args.reps < 1:
        parser.error("--size >= 8, --n >= 1 and --reps >= 1 are required")
    rows = measure(args.size, args.n, args.reps)
    print(table(rows), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
