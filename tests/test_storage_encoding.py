"""benchmarks/storage_encoding.py: every stored format decodes to the prepared image (exactly where lossless)."""
import numpy as np

from benchmarks import storage_encoding
from foprokd_jax.data import augment


def test_formats_decode_to_the_prepared_image():
    images = storage_encoding.source_images(3, size=(64, 48), seed=1)
    formats = storage_encoding.encode_all(images, 16)
    assert set(formats) == {"raw 16", "png 16", "jpeg95 16", "jpeg95 orig"}
    for i, img in enumerate(images):
        prepared = np.asarray(augment.resize_image(img, 16))
        decoded = {name: decode(stored[i]) for name, (stored, decode) in formats.items()}
        for name, value in decoded.items():
            assert value.shape == (16, 16, 3) and value.dtype == np.uint8, name
        np.testing.assert_array_equal(decoded["raw 16"], prepared)
        np.testing.assert_array_equal(decoded["png 16"], prepared)
        # Lossy: JPEG q95 of a noisy image stays within a few grey levels on average.
        assert np.abs(decoded["jpeg95 16"].astype(int) - prepared).mean() < 6
        assert np.abs(decoded["jpeg95 orig"].astype(int) - prepared).mean() < 6
    assert len(formats["raw 16"][0][0]) == 16 * 16 * 3


def test_measure_rows_and_table():
    rows = storage_encoding.measure(16, 2, reps=1)
    assert [r["format"] for r in rows] == ["raw 16", "png 16", "jpeg95 16", "jpeg95 orig"]
    raw = rows[0]
    assert raw["bytes_per_image"] == 16 * 16 * 3
    assert raw["isic2019_total_gb"] == round(16 * 16 * 3 * 25331 / 1e9, 2)
    for r in rows:
        assert r["decode_img_per_s"] > 0 and r["decode_augment_img_per_s"] > 0 and r["decode_share"] > 0
    text = storage_encoding.table(rows)
    assert text.count("\n") == 1 + len(rows) and "| raw 16 | 0.8 |" in text
