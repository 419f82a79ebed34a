"""How prepared images should be stored: bytes on disk vs read + decode cost, per stored format.

    taskset -c 1 .venv/bin/python -m benchmarks.storage_encoding --size=224 --n=64
    taskset -c 1 .venv/bin/python -m benchmarks.storage_encoding --size=224,112 --n=64 --reps=3 --out=enc.json

The datasets are prepared once into tfds array_record files holding raw uint8 (S, S, 3) arrays at the
model's input size (foprokd_jax/data/image_folder_tfds.py). This measures that choice against the
alternatives, on the same images:

    raw      raw uint8 at S                       (what the project stores)
    png      PNG at S (PIL, compress_level 6)
    jpeg     JPEG at S (PIL, quality 95, 4:2:0 chroma: PIL's default)
    orig     the original-resolution JPEG, decoded and resized to S on every read with
             `augment.resize_image` (a pipeline without a preparation step)
    draft    as `orig` but with libjpeg's DCT-domain downscaling first (`Image.draft`): the fastest
             on-the-fly variant, no longer pixel-identical to the prepared image
    tfds     raw at S read through the project's own `ImageStore` (tfds `as_data_source`)
    memory   the prepared arrays already in memory: the cost of the augmentation alone, for reference

Every format's payloads are written to an array_record file in a temporary folder with the writer options
TFDS uses ('group_size:1', so each record is zstd-compressed on its own) and read back by random access
(`readahead_buffer_size:0`, as TFDS's data source does). The files are then in the page cache: the cost of
reading a cold disk is NOT included. Per format this reports the bytes per image (payload and on disk), the
implied size of ISIC-2019's 25,331 images, and CPU ms per image for: the record read alone; read + decode
(+ resize); read + decode + the 'skin' train augmentation (`augment.train_augment`). The process is single
threaded, so CPU ms per image is also the cost per core; run it pinned to one core (`taskset -c 1`) on a
shared machine. Medians over `--reps` passes after one warm-up pass; each row's foreign CPU share
(benchmarks/cpu_contention.py) is printed with it.

The images are synthetic (real ISIC data is not available where this was written): a skin-coloured smooth
field, an irregular pigmented lesion with network-like texture, hairs, a dermoscope vignette and sensor
noise, stored first as a JPEG (quality 95) at the original resolution, like ISIC's. Compressed sizes depend
strongly on the content (noise, hair, texture): treat the PNG/JPEG byte counts as indicative only; the raw
size and the decode costs depend on it much less.
"""

import argparse
import glob
import io
import json
import math
import os
import statistics
import tempfile

import numpy as np
from PIL import Image, ImageDraw

from benchmarks import cpu_contention, report
from foprokd_jax.data import augment

ISIC_2019_IMAGES = 25331
# TFDS's array_record writer and data-source reader options (tensorflow_datasets file_adapters.py).
WRITER_OPTIONS = "group_size:1"
READER_OPTIONS = "readahead_buffer_size:0,max_parallelism:0"
FORMATS = ("memory", "raw", "png", "jpeg", "orig", "draft", "tfds")
CONTENTS = ("dermoscopy", "project_synthetic")
CONTENT_NOTE = (
    "Synthetic images: compressed (PNG/JPEG) sizes depend strongly on image content and are "
    "indicative only; raw sizes and decode costs depend on it much less."
)


# ----------------------------------------------------------------------------- test images


def _smooth_field(height: int, width: int, cells: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance noise on a cells x cells grid, bicubically upsampled: structure at width/cells px."""
    grid = rng.standard_normal((max(2, cells), max(2, cells))).astype(np.float32)
    return np.asarray(Image.fromarray(grid, "F").resize((width, height), Image.BICUBIC))


def dermoscopy_like(width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """A dermoscopy-like RGB image: skin field, irregular textured lesion, hairs, vignette, noise."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    half = 0.5 * min(width, height)
    dx, dy = (xx - width / 2) / half, (yy - height / 2) / half
    skin = np.array([205, 160, 140], np.float32) + rng.normal(0, 10, 3)
    img = skin + 10 * _smooth_field(height, width, 5, rng)[..., None]
    # Lesion: radius modulated by a few random harmonics, soft border, darker and textured inside.
    theta, dist = np.arctan2(dy, dx), np.hypot(dx, dy)
    radius = rng.uniform(0.35, 0.6) * (
        1 + sum(rng.uniform(0, 0.12) / k * np.cos(k * theta + rng.uniform(0, 6.3)) for k in range(2, 7))
    )
    inside = np.clip((radius - dist) / 0.06, 0, 1)[..., None]
    brown = np.array([120, 75, 55], np.float32) + rng.normal(0, 12, 3)
    fine = max(8, min(width, height) // 12)  # pigment-network scale: ~12 px at 1024 px
    texture = _smooth_field(height, width, fine, rng) - 0.5 * _smooth_field(height, width, fine // 3, rng)
    lesion = brown * (0.8 + 0.2 * _smooth_field(height, width, 4, rng))[..., None] + 22 * texture[..., None]
    img = img * (1 - inside) + lesion * inside
    img += rng.normal(0, 2.5, (height, width, 1)).astype(np.float32) + rng.normal(0, 1.5, img.shape)
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(out)
    for _ in range(int(rng.integers(0, 7))):  # hairs: dark quadratic curves
        p0, p1, p2 = (rng.uniform(0, 1, 2) * (width, height) for _ in range(3))
        t = np.linspace(0, 1, 24)[:, None]
        points = (1 - t) ** 2 * p0 + 2 * t * (1 - t) * p1 + t**2 * p2
        draw.line([tuple(p) for p in points], fill=(45, 32, 28), width=max(1, int(rng.uniform(1.5, 4) * width / 1024)))
    if rng.random() < 0.5:  # the dermoscope's dark circular border, common in 1024 px ISIC images
        to_corner = dist * min(width, height) / math.hypot(width, height)  # 1 at the corners
        vignette = np.clip(1 - (to_corner - 0.68) / 0.06, 0, 1)  # black outside a circle about the inscribed one
        out = Image.fromarray((np.asarray(out) * vignette[..., None]).astype(np.uint8), "RGB")
    return out


def make_originals(n: int, orig_sizes, content: str = "dermoscopy", seed: int = 0, quality: int = 95) -> list:
    """n (orig (width, height), JPEG bytes) pairs; image k has size orig_sizes[k % len(orig_sizes)]."""
    if content not in CONTENTS:
        raise ValueError(f"content {content!r} is not one of {CONTENTS}")
    originals = []
    for k in range(n):
        width, height = orig_sizes[k % len(orig_sizes)]
        rng = np.random.default_rng([seed, k])
        if content == "dermoscopy":
            img = dermoscopy_like(width, height, rng)
        else:
            from foprokd_jax.data import synthetic

            img = synthetic._draw_lesion(k % 8, width, height, rng)  # the synthetic ISIC set's own images
        buffer = io.BytesIO()
        img.save(buffer, format="JPEG", quality=quality)
        originals.append(((width, height), buffer.getvalue()))
    return originals


# ----------------------------------------------------------------------------- encode / decode


def _pil_bytes(array: np.ndarray, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, "RGB").save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _checked(array: np.ndarray, size: int, what: str) -> np.ndarray:
    if array.shape != (size, size, 3) or array.dtype != np.uint8:
        raise ValueError(f"{what}: decoded to {array.dtype} {array.shape}, expected uint8 ({size}, {size}, 3)")
    return array


def decode_raw(payload: bytes, size: int) -> np.ndarray:
    if len(payload) != size * size * 3:
        raise ValueError(f"raw record of {len(payload)} bytes is not a ({size}, {size}, 3) uint8 image")
    return np.frombuffer(payload, np.uint8).reshape(size, size, 3)


def decode_image(payload: bytes, size: int) -> np.ndarray:
    """PNG or JPEG stored at the model size."""
    with Image.open(io.BytesIO(payload)) as img:
        return _checked(np.asarray(img.convert("RGB")), size, "stored image")


def decode_resize(payload: bytes, size: int) -> np.ndarray:
    """Full-resolution JPEG -> (size, size, 3), exactly as preparation does (image_folder_tfds.load_resized)."""
    with Image.open(io.BytesIO(payload)) as img:
        return _checked(np.asarray(augment.resize_image(img, size)), size, "original")


def decode_draft_resize(payload: bytes, size: int) -> np.ndarray:
    """Like decode_resize, but libjpeg first decodes at 1/2, 1/4 or 1/8 scale, the smallest still >= size."""
    with Image.open(io.BytesIO(payload)) as img:
        img.draft("RGB", (size, size))
        return _checked(np.asarray(augment.resize_image(img, size)), size, "original (draft)")


# name -> (label, encode(prepared array at S, original JPEG bytes) -> bytes, decode(bytes, S) -> array)
CODECS = {
    "raw": ("raw uint8 at S (stored now)", lambda arr, orig: arr.tobytes(), decode_raw),
    "png": ("PNG at S", lambda arr, orig: _pil_bytes(arr, "PNG"), decode_image),
    "jpeg": ("JPEG q95 at S", lambda arr, orig: _pil_bytes(arr, "JPEG", quality=95), decode_image),
    "orig": ("JPEG q95 original, resize per read", lambda arr, orig: orig, decode_resize),
    "draft": ("JPEG q95 original, draft + resize per read", lambda arr, orig: orig, decode_draft_resize),
}


# ----------------------------------------------------------------------------- timing


def _timed_passes(fns, indices, reps: int) -> list:
    """Per fn: (median wall ms, median CPU ms) per image of `fn(i)` over `indices`.

    One warm-up pass each, then `reps` rounds that run every fn's pass in turn: interleaved, so that a slow
    spell of the (shared, virtual) machine falls on all of them alike rather than on one.
    """
    for fn in fns:
        for i in indices:
            fn(i)
    samples = [([], []) for _ in fns]
    for _ in range(reps):
        for fn, (wall, cpu) in zip(fns, samples):
            before = cpu_contention.snapshot()
            for i in indices:
                fn(i)
            after = cpu_contention.snapshot()
            wall.append(1e3 * (after.wall_s - before.wall_s) / len(indices))
            cpu.append(1e3 * (after.own_cpu_s - before.own_cpu_s) / len(indices))
    return [(statistics.median(wall), statistics.median(cpu)) for wall, cpu in samples]


def _fidelity(decoded, reference) -> dict:
    diff = np.stack(decoded).astype(np.int16) - np.stack(reference).astype(np.int16)
    mse = float(np.mean(diff.astype(np.float64) ** 2))
    return {
        "max_abs_err": int(np.abs(diff).max()),
        "mean_abs_err": float(np.abs(diff).mean()),
        "psnr_db": None if mse == 0 else 10 * math.log10(255**2 / mse),
    }


def _measure(read, decode, size, indices, reference, reps) -> dict:
    """Times read alone, read + decode, read + decode + train_augment; checks fidelity to the reference.

    decode None: `read` already returns the image (the tfds row), so there is no separate read time.
    """

    def decoded(i):
        return read(i) if decode is None else decode(read(i), size)

    # The j-th image of every row gets the same augmentation draws, so rows differ only in what they decode.
    draws = {k: j for j, k in enumerate(indices)}

    def augmented(i):
        return augment.train_augment(decoded(i), np.random.default_rng(draws[i]))

    start = cpu_contention.snapshot()
    if decode is None:
        (decode_ms, full_ms), read_ms = _timed_passes([decoded, augmented], indices, reps), (None, None)
    else:
        read_ms, decode_ms, full_ms = _timed_passes([read, decoded, augmented], indices, reps)
    share = cpu_contention.foreign_share(start, cpu_contention.snapshot())
    fidelity = _fidelity([decoded(i) for i in indices], [reference[i] for i in indices])
    return {
        "read_cpu_ms": read_ms[1],
        "decode_wall_ms": decode_ms[0],
        "decode_cpu_ms": decode_ms[1],
        "full_wall_ms": full_ms[0],
        "full_cpu_ms": full_ms[1],
        "decode_img_per_s_per_core": 1e3 / decode_ms[1] if decode_ms[1] > 0 else None,
        "full_img_per_s_per_core": 1e3 / full_ms[1] if full_ms[1] > 0 else None,
        "decode_share_of_full": decode_ms[1] / full_ms[1] if full_ms[1] > 0 else None,
        "foreign_share": share,
        **fidelity,
    }


def _empty_file_bytes(tmp_dir: str) -> int:
    """Size of an array_record file with no records (header + footer), subtracted from every file."""
    from array_record.python import array_record_module

    path = os.path.join(tmp_dir, "empty.array_record")
    array_record_module.ArrayRecordWriter(path, WRITER_OPTIONS).close()
    return os.path.getsize(path)


def _write_records(path: str, payloads) -> int:
    """Writes an array_record file as TFDS does; returns its size minus that of an empty file.

    The files grow in 64 KiB steps, so the per-image figure is exact only to 64 KiB / n.
    """
    from array_record.python import array_record_module

    writer = array_record_module.ArrayRecordWriter(path, WRITER_OPTIONS)
    for payload in payloads:
        writer.write(payload)
    writer.close()
    return os.path.getsize(path) - _empty_file_bytes(os.path.dirname(path))


def measure_size(size: int, originals, formats, reps: int, tmp_dir: str) -> list:
    """One result row per (format, original size) at model size `size`."""
    from array_record.python import array_record_module

    reference = [decode_resize(jpeg, size) for _, jpeg in originals]  # what preparation stores
    orig_sizes = sorted({o for o, _ in originals}, key=lambda o: -o[0] * o[1])
    rows = []
    for name in formats:
        if name in ("memory", "tfds"):
            rows.append(
                _measure_memory(size, reference, reps)
                if name == "memory"
                else _measure_tfds_store(size, originals, reference, reps, tmp_dir)
            )
            continue
        label, encode, decode = CODECS[name]
        # Formats stored at S are independent of the original's size; per-read resizing is not.
        groups = [None] if name in ("raw", "png", "jpeg") else orig_sizes
        for group in groups:
            indices = [k for k, (o, _) in enumerate(originals) if group is None or o == group]
            payloads = [encode(reference[k], originals[k][1]) for k in indices]
            path = os.path.join(tmp_dir, f"{name}_{size}_{len(rows)}.array_record")
            disk = _write_records(path, payloads)
            reader = array_record_module.ArrayRecordReader(path, READER_OPTIONS)
            local = {k: j for j, k in enumerate(indices)}
            # Random access order, as a shuffled training epoch reads.
            order = [indices[j] for j in np.random.default_rng(size).permutation(len(indices))]
            row = {
                "format": name,
                "label": label if group is None else f"{label} ({group[0]}x{group[1]})",
                "size": size,
                "orig_size": None if group is None else f"{group[0]}x{group[1]}",
                "n": len(indices),
                "payload_bytes": float(np.mean([len(p) for p in payloads])),
                "disk_bytes": disk / len(indices),
            }
            row.update(
                _measure(
                    lambda k, reader=reader, local=local: reader.read([local[k]])[0],
                    decode,
                    size,
                    order,
                    reference,
                    reps,
                )
            )
            reader.close()
            os.remove(path)
            rows.append(row)
    for row in rows:
        row["isic_2019_gb"] = None if row["disk_bytes"] is None else row["disk_bytes"] * ISIC_2019_IMAGES / 1e9
    return rows


def _measure_memory(size, reference, reps) -> dict:
    """The augmentation alone, on the prepared arrays already in memory (nothing read or decoded)."""
    order = [int(k) for k in np.random.default_rng(size).permutation(len(reference))]
    row = {
        "format": "memory",
        "label": "prepared array in memory (augmentation alone)",
        "size": size,
        "orig_size": None,
        "n": len(reference),
        "payload_bytes": None,
        "disk_bytes": None,
    }
    row.update(_measure(reference.__getitem__, None, size, order, reference, reps))
    # A list lookup is no decoding: its timing would only be noise.
    row.update(decode_wall_ms=None, decode_cpu_ms=None, decode_img_per_s_per_core=None, decode_share_of_full=0.0)
    return row


def _measure_tfds_store(size, originals, reference, reps, tmp_dir) -> dict:
    """Raw at S written and read by the project's own code (tfds builder + ImageStore)."""
    from foprokd_jax.data import image_folder_tfds

    class StorageBenchImages(image_folder_tfds.ResizedImagesBuilder, skip_registration=True):
        name = "storage_bench_images"
        TITLE = "storage_encoding benchmark images"

    items = []
    for k, (_, jpeg) in enumerate(originals):
        path = os.path.join(tmp_dir, f"orig_{k:05d}.jpg")
        if not os.path.exists(path):
            with open(path, "wb") as f:
                f.write(jpeg)
        items.append((f"img_{k:05d}", path))
    store = image_folder_tfds.prepare_images(StorageBenchImages, items, os.path.join(tmp_dir, "tfds"), size)
    files = glob.glob(os.path.join(store.dataset_dir, "*.array_record*"))
    disk = sum(os.path.getsize(p) for p in files) - len(files) * _empty_file_bytes(tmp_dir)
    order = [int(k) for k in np.random.default_rng(size).permutation(len(originals))]
    row = {
        "format": "tfds",
        "label": "raw uint8 at S via ImageStore (tfds, project path)",
        "size": size,
        "orig_size": None,
        "n": len(originals),
        "payload_bytes": float(size * size * 3),
        "disk_bytes": disk / len(originals),
    }
    row.update(_measure(store.get, None, size, order, reference, reps))
    return row


# ----------------------------------------------------------------------------- output


def _f(value, digits=1, scale=1.0) -> str:
    return "–" if value is None else f"{value * scale:.{digits}f}"


def markdown(rows) -> str:
    header = [
        "stored as",
        "S",
        "payload KB/img",
        "on disk KB/img",
        "ISIC-2019 GB",
        "read ms",
        "read+decode ms",
        "img/s/core",
        "+augment ms",
        "img/s/core",
        "decode share",
        "max |err| / PSNR dB",
        "foreign CPU",
    ]
    table = []
    for r in rows:
        error = "0 (lossless)" if r["psnr_db"] is None else f"{r['max_abs_err']} / {r['psnr_db']:.1f}"
        table.append(
            [
                r["label"],
                str(r["size"]),
                _f(r["payload_bytes"], 1, 1e-3),
                _f(r["disk_bytes"], 1, 1e-3),
                _f(r["isic_2019_gb"], 2),
                _f(r["read_cpu_ms"], 3),
                _f(r["decode_cpu_ms"], 2),
                _f(r["decode_img_per_s_per_core"], 0),
                _f(r["full_cpu_ms"], 2),
                _f(r["full_img_per_s_per_core"], 0),
                _f(r["decode_share_of_full"], 0, 100) + "%",
                error,
                _f(r["foreign_share"], 0, 100) + "%",
            ]
        )
    return report.markdown_table(header, table)


def _parse_orig_sizes(text: str) -> list:
    sizes = []
    for item in text.split(","):
        try:
            width, height = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise ValueError(f"--orig_sizes entry {item!r} is not WIDTHxHEIGHT, e.g. 1024x768") from None
        if width < 1 or height < 1:
            raise ValueError(f"--orig_sizes entry {item!r} must be positive")
        sizes.append((width, height))
    return sizes


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="224", help="model input size(s) S, comma-separated, e.g. 224,112")
    parser.add_argument("--n", type=int, default=64, help="test images (split over --orig_sizes)")
    parser.add_argument("--reps", type=int, default=3, help="timed passes over the images (median), after a warm-up")
    parser.add_argument(
        "--orig_sizes",
        default="1024x1024,600x450",
        help="original resolutions (ISIC-2019 mixes 1024x1024 and 600x450 JPEGs)",
    )
    parser.add_argument("--formats", default=",".join(FORMATS), help=f"subset of {FORMATS}")
    parser.add_argument("--content", default="dermoscopy", choices=CONTENTS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="", help="optional JSON file for all rows")
    args = parser.parse_args(argv)
    try:
        sizes = [int(s) for s in args.size.split(",")]
    except ValueError:
        parser.error(f"--size {args.size!r} is not a comma-separated list of integers")
    formats = [f for f in args.formats.split(",") if f]
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or not formats:
        parser.error(f"--formats: unknown {unknown}; choose from {FORMATS}")
    if args.n < 1 or args.reps < 1 or min(sizes) < 1:
        parser.error("--n, --reps and --size must be positive")
    orig_sizes = _parse_orig_sizes(args.orig_sizes)
    affinity = sorted(os.sched_getaffinity(0))
    print(
        f"{args.n} {args.content} images, originals {args.orig_sizes} (JPEG q95); process on cores {affinity}"
        f"{'' if len(affinity) == 1 else ' (not pinned: taskset -c 1 is steadier)'}",
        flush=True,
    )
    originals = make_originals(args.n, orig_sizes, args.content, args.seed)
    rows = []
    with tempfile.TemporaryDirectory(prefix="storage_encoding_") as tmp_dir:
        for size in sizes:
            size_rows = measure_size(size, originals, formats, args.reps, tmp_dir)
            rows += size_rows
            print(
                f"\nS = {size}: CPU ms per image, single thread, from array_record files in a temp dir "
                f"(page cache; cold-disk reads excluded)\n\n{markdown(size_rows)}",
                flush=True,
            )
    print(
        f"\n{CONTENT_NOTE} 'decode share' = read+decode / read+decode+augment. ISIC-2019 GB = on-disk "
        f"bytes per image x {ISIC_2019_IMAGES}."
    )
    result = {"args": vars(args), "affinity": affinity, "note": CONTENT_NOTE, "rows": rows}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
