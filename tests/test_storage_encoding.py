"""benchmarks/storage_encoding.py: every stored format decodes to the prepared image (exactly where lossless),
and the benchmark's rows, table and JSON are complete. Tiny images; no timing assertions."""

import json

import numpy as np
import pytest

from benchmarks import storage_encoding
from foprokd_jax.data import image_folder_tfds

ORIG_SIZES = [(64, 48), (80, 80)]
SIZE = 32


@pytest.fixture(scope="module")
def originals():
    return storage_encoding.make_originals(4, ORIG_SIZES, seed=3)


def test_test_images_are_deterministic_jpegs_of_the_requested_sizes(originals):
    again = storage_encoding.make_originals(4, ORIG_SIZES, seed=3)
    assert [o for o, _ in originals] == [(64, 48), (80, 80), (64, 48), (80, 80)]
    assert [j for _, j in originals] == [j for _, j in again]
    assert originals[0][1][:2] == b"\xff\xd8"  # JPEG start-of-image marker
    other = storage_encoding.make_originals(4, ORIG_SIZES, seed=4)
    assert originals[0][1] != other[0][1]
    # Not flat: a lesion, texture and noise give many distinct values.
    image = storage_encoding.decode_resize(originals[1][1], 80)
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 500


def test_every_format_round_trips_to_the_prepared_image(originals, tmp_path):
    for orig_size, jpeg in originals:
        path = tmp_path / "orig.jpg"
        path.write_bytes(jpeg)
        # The reference is exactly what the project's preparation stores.
        prepared = image_folder_tfds.load_resized(str(path), SIZE)
        np.testing.assert_array_equal(storage_encoding.decode_resize(jpeg, SIZE), prepared)
        decoded = {}
        for name, (_, encode, decode) in storage_encoding.CODECS.items():
            decoded[name] = decode(encode(prepared, jpeg), SIZE)
            assert decoded[name].shape == (SIZE, SIZE, 3) and decoded[name].dtype == np.uint8, name
        for lossless in ("raw", "png", "orig"):
            np.testing.assert_array_equal(decoded[lossless], prepared, err_msg=lossless)
        for lossy in ("jpeg", "draft"):
            error = np.abs(decoded[lossy].astype(int) - prepared)
            assert error.mean() < 3.0 and error.max() < 80, (lossy, orig_size, error.mean(), error.max())
            # Really lossy, so the bound above can fail. libjpeg's draft only scales by 1/2, 1/4 or 1/8 and
            # never below the target, so a 64x48 original at 32 px is decoded in full (exact).
            scaled = lossy == "jpeg" or min(orig_size) >= 2 * SIZE
            assert (error.max() > 0) == scaled, (lossy, orig_size)
    assert len(storage_encoding.CODECS["raw"][1](prepared, jpeg)) == SIZE * SIZE * 3


def test_decoders_reject_the_wrong_size():
    with pytest.raises(ValueError, match="not a \\(16, 16, 3\\)"):
        storage_encoding.decode_raw(b"\x00" * 100, 16)
    png = storage_encoding._pil_bytes(np.zeros((8, 8, 3), np.uint8), "PNG")
    with pytest.raises(ValueError, match="expected uint8 \\(16, 16, 3\\)"):
        storage_encoding.decode_image(png, 16)


def test_benchmark_rows_table_and_json(tmp_path, capsys):
    out = tmp_path / "enc.json"
    result = storage_encoding.main(["--size=32,16", "--n=4", "--reps=1", "--orig_sizes=64x48,80x80", f"--out={out}"])
    printed = capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert saved["rows"] == json.loads(json.dumps(result["rows"]))
    rows = saved["rows"]
    expected = {("memory", None), ("raw", None), ("png", None), ("jpeg", None), ("tfds", None)}
    expected |= {(f, o) for f in ("orig", "draft") for o in ("64x48", "80x80")}
    for size in (32, 16):
        assert {(r["format"], r["orig_size"]) for r in rows if r["size"] == size} == expected
        assert printed.count(f"| {size} |") == len(expected)
    for r in rows:
        assert r["label"] in printed and r["full_cpu_ms"] > 0
        if r["format"] == "memory":  # the augmentation-alone baseline: nothing stored, nothing decoded
            assert r["decode_cpu_ms"] is None and r["decode_share_of_full"] == 0 and r["isic_2019_gb"] is None
        else:
            assert r["decode_cpu_ms"] > 0 and r["payload_bytes"] > 0, r["label"]
            assert 0 < r["decode_share_of_full"] <= 1.5  # CPU-time noise may push a tiny ratio past 1
            assert r["isic_2019_gb"] == pytest.approx(r["disk_bytes"] * 25331 / 1e9)
        assert r["n"] == (4 if r["orig_size"] is None else 2)
        draft_exact = r["format"] == "draft" and min(map(int, r["orig_size"].split("x"))) < 2 * r["size"]
        lossless = r["format"] in ("memory", "raw", "png", "orig", "tfds") or draft_exact
        assert (r["psnr_db"] is None) == lossless and (r["max_abs_err"] == 0) == lossless, r["label"]
        if r["format"] in ("raw", "tfds"):
            assert r["payload_bytes"] == r["size"] ** 2 * 3
    assert storage_encoding.CONTENT_NOTE in printed and "cold-disk reads excluded" in printed


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="'64'"):
        storage_encoding.main(["--orig_sizes=64", "--n=1"])
    with pytest.raises(SystemExit):
        storage_encoding.main(["--formats=raw,bmp", "--n=1"])
    with pytest.raises(ValueError, match="content"):
        storage_encoding.make_originals(1, ORIG_SIZES, content="xray")
