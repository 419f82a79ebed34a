"""Data tests: official split counts, TFDS preparation, grain pipelines, augmentation."""

import os
import pickle
import shutil

import numpy as np
import pytest
from PIL import Image

from foprokd_jax.data import augment, image_folder_tfds, isic_splits, pipeline, synthetic, tfds_isic

# docs/reference_semantics.md §8.1: identical for folds 1-5.
TRAIN_COUNTS = {
    "0.01": [12725, 4372, 3173, 1788, 717, 478, 103, 89],
    "0.005": [12725, 4372, 2833, 1329, 623, 292, 103, 64],
    "0.002": [12725, 4372, 2180, 897, 369, 152, 62, 25],
}
TRAIN_TOTALS = {"0.01": 23445, "0.005": 22341, "0.002": 20782}


# ----------------------------------------------------------------------------- official CSVs


@pytest.mark.parametrize("imb", ["0.01", "0.005", "0.002"])
def test_official_split_counts_match_the_documented_table(imb, official_split_dir):
    for fold in range(1, 6):
        tables = {s: isic_splits.read_split(official_split_dir, s, fold, float(imb)) for s in isic_splits.SPLITS}
        train = isic_splits.class_counts(tables["train"].labels)
        assert train.tolist() == TRAIN_COUNTS[imb], (fold, imb)
        assert train.sum() == TRAIN_TOTALS[imb]
        assert isic_splits.class_counts(tables["val"].labels).tolist() == [50] * 8
        assert isic_splits.class_counts(tables["test"].labels).tolist() == [100] * 8
        ids = {s: set(t.image_ids) for s, t in tables.items()}
        assert not ids["train"] & ids["val"] and not ids["train"] & ids["test"]
        assert not ids["val"] & ids["test"]
        assert tables["train"].labels.dtype == np.int32


def test_official_ids_kept_verbatim(official_split_dir):
    table = isic_splits.read_split(official_split_dir, "train", 1, 0.01)
    downsampled = [i for i in table.image_ids if i.endswith("_downsampled")]
    assert downsampled, "expected _downsampled ids in the official train CSV"
    with open(table.path) as f:
        first_rows = [line.split(",")[0] for line in f.read().splitlines()[1:6]]
    assert list(table.image_ids[:5]) == first_rows


def test_split_path_formatting():
    assert isic_splits.split_csv_path("d", "val", 3, 0.005) == os.path.join("d", "val_skin3_0.005.csv")
    assert isic_splits.split_csv_path("d", "train", "2", "0.002").endswith("train_skin2_0.002.csv")
    assert isic_splits.format_imbalance(1e-2) == "0.01"
    for bad in [("train", 0, 0.01), ("train", 6, 0.01), ("train", 1, 0.02), ("dev", 1, 0.01), ("train", 1, "x")]:
        with pytest.raises(isic_splits.SplitFileError):
            isic_splits.split_csv_path("d", *bad)


def _write(path, text):
    with open(path, "w") as f:
        f.write(text)


def test_split_file_errors(tmp_path):
    with pytest.raises(isic_splits.SplitFileError, match="train_skin1_0.01.csv.*FoPro-KD"):
        isic_splits.read_split(str(tmp_path), "train", 1, 0.01)
    path = str(tmp_path / "train_skin1_0.01.csv")
    _write(path, "image,finding_name\nISIC_1,1\n")
    with pytest.raises(isic_splits.SplitFileError, match="no 'finding' column"):
        isic_splits.read_split(str(tmp_path), "train", 1, 0.01)
    _write(path, "image,finding_name,finding\nISIC_1,1,0\nISIC_2,5,8\n")
    with pytest.raises(isic_splits.SplitFileError, match="outside.*ISIC_2"):
        isic_splits.read_split(str(tmp_path), "train", 1, 0.01)
    _write(path, "image,finding_name,finding\nISIC_1,1,0\nISIC_1,1,0\n")
    with pytest.raises(isic_splits.SplitFileError, match="duplicated.*ISIC_1"):
        isic_splits.read_split(str(tmp_path), "train", 1, 0.01)


# ----------------------------------------------------------------------------- synthetic + TFDS

SIZE = 32
SYNTH_ARGS = dict(
    n_max=16,
    val_per_class=2,
    test_per_class=3,
    image_sizes=((60, 45), (96, 96)),
    folds=(1, 2),
    imbs=("0.01", "0.002"),
    seed=0,
)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("isic")
    summary = synthetic.write_synthetic_isic(str(root / "raw"), **SYNTH_ARGS)
    store = tfds_isic.prepare_isic(str(root / "raw"), str(root / "tfds"), SIZE)
    return root, summary, store


def _source(synth, split="train", fold=1, imb="0.01"):
    root, summary, store = synth
    table = isic_splits.read_split(summary["split_dir"], split, fold, imb)
    return tfds_isic.IsicSplitSource(table, store)


def test_synthetic_layout_and_recipe(synth, tmp_path):
    root, summary, _ = synth
    image_dir = os.path.join(root, "raw", "ISIC_2019_Training_Input")
    names = sorted(os.listdir(image_dir))
    assert len(names) == summary["num_images"]
    assert any(n.endswith("_downsampled.jpg") for n in names)
    with Image.open(os.path.join(image_dir, names[0])) as a, Image.open(os.path.join(image_dir, names[1])) as b:
        assert a.format == "JPEG" and {a.size, b.size} == {(60, 45), (96, 96)}
    for imb in SYNTH_ARGS["imbs"]:
        for fold in SYNTH_ARGS["folds"]:
            tables = {s: isic_splits.read_split(summary["split_dir"], s, fold, imb) for s in isic_splits.SPLITS}
            assert isic_splits.class_counts(tables["train"].labels).tolist() == summary["train_counts"][imb]
            assert isic_splits.class_counts(tables["val"].labels).tolist() == [2] * 8
            assert isic_splits.class_counts(tables["test"].labels).tolist() == [3] * 8
            ids = [set(t.image_ids) for t in tables.values()]
            assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    # Recipe: n_i = min(floor(16 * imb^(i/7)), available), at least 1; non-increasing.
    counts = summary["train_counts"]["0.002"]
    assert counts[0] == 16 and counts == sorted(counts, reverse=True) and min(counts) >= 1
    with open(os.path.join(summary["split_dir"], "train_skin1_0.01.csv")) as f:
        header, first = f.read().splitlines()[:2]
    assert header == "image,finding_name,finding"
    finding_name, finding = map(int, first.split(",")[1:])
    assert synthetic.FINDING_NAME[finding] == finding_name
    # Deterministic given the seed.
    again = synthetic.write_synthetic_isic(str(tmp_path / "again"), **SYNTH_ARGS)
    for rel in ["splits/train_skin2_0.002.csv", f"ISIC_2019_Training_Input/{names[3]}"]:
        with open(os.path.join(root, "raw", rel), "rb") as f1, open(os.path.join(tmp_path, "again", rel), "rb") as f2:
            assert f1.read() == f2.read(), rel
    assert again["train_counts"] == summary["train_counts"]


def test_prepared_images_and_labels(synth):
    root, summary, store = synth
    assert len(store) == summary["num_images"] and store.image_size == SIZE
    source = _source(synth, "val", 2, "0.002")
    table = source.table
    for i in [0, len(source) - 1]:
        example = source[i]
        assert example["image"].shape == (SIZE, SIZE, 3) and example["image"].dtype == np.uint8
        assert example["label"] == table.labels[i] and example["label"].dtype == np.int32
        # The record really is that JPEG, resized like torchvision Resize((32, 32)).
        path = os.path.join(root, "raw", "ISIC_2019_Training_Input", table.image_ids[i] + ".jpg")
        np.testing.assert_array_equal(example["image"], tfds_isic.load_resized(path, SIZE))
    assert store.index_of(store.image_ids[7]) == 7
    clone = pickle.loads(pickle.dumps(source))  # grain workers receive pickled sources
    np.testing.assert_array_equal(clone[3]["image"], source[3]["image"])


def test_second_prepare_reuses(synth):
    root, _, store = synth
    record_files = [f for f in os.listdir(store.dataset_dir) if "array_record" in f]
    mtimes = [os.path.getmtime(os.path.join(store.dataset_dir, f)) for f in record_files]
    again = tfds_isic.prepare_isic(str(root / "raw"), str(root / "tfds"), SIZE)
    assert again.dataset_dir == store.dataset_dir and again.image_ids == store.image_ids
    assert mtimes == [os.path.getmtime(os.path.join(store.dataset_dir, f)) for f in record_files]
    # Also without the JPEGs, once prepared.
    assert len(tfds_isic.prepare_isic(None, str(root / "tfds"), SIZE)) == len(store)


def test_multi_part_records_keep_id_order(synth, tmp_path, monkeypatch):
    root, _, _ = synth
    monkeypatch.setattr(image_folder_tfds, "PART_BYTES", 20 * SIZE * SIZE * 3)  # ~20 images per part
    store = tfds_isic.prepare_isic(str(root / "raw"), str(tmp_path), SIZE)
    assert len(store.parts) > 3
    records = store._records()
    stored = [tfds_isic._as_str(records[i]["image_id"]) for i in range(len(records))]
    assert stored == list(store.image_ids) == sorted(store.image_ids)


def test_corrupt_jpeg_names_file_and_leaves_nothing_prepared(synth, tmp_path):
    root, _, _ = synth
    raw = tmp_path / "raw"
    shutil.copytree(root / "raw" / "ISIC_2019_Training_Input", raw / "ISIC_2019_Training_Input")
    victim = sorted((raw / "ISIC_2019_Training_Input").iterdir())[5]
    good_bytes = victim.read_bytes()
    victim.write_bytes(good_bytes[:200])  # truncated JPEG
    with pytest.raises(image_folder_tfds.BadImagesError, match=str(victim.name)):
        tfds_isic.prepare_isic(str(raw), str(tmp_path / "tfds"), SIZE)
    assert not tfds_isic.make_builder(str(tmp_path / "tfds"), None, SIZE).is_prepared()
    victim.write_bytes(good_bytes)  # a later run must rebuild, not trust the failed one
    store = tfds_isic.prepare_isic(str(raw), str(tmp_path / "tfds"), SIZE)
    assert len(store) == len(list((raw / "ISIC_2019_Training_Input").iterdir()))


def test_concurrent_prepare_and_stale_incomplete_dir(synth, tmp_path):
    import subprocess
    import sys

    root, _, store = synth
    data_dir = tmp_path / "tfds"
    # Debris of a killed run: TFDS only ever renames a finished `incomplete.*` folder.
    stale = data_dir / "isic_resized" / f"size{SIZE}" / "incomplete.DEADBEEF_1.0.0"
    stale.mkdir(parents=True)
    (stale / "dataset_info.json").write_text("{}")
    code = (
        "import sys; from foprokd_jax.data import tfds_isic; "
        "print(len(tfds_isic.prepare_isic(sys.argv[1], sys.argv[2], int(sys.argv[3]))))"
    )
    args = [sys.executable, "-c", code, str(root / "raw"), str(data_dir), str(SIZE)]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=120) for p in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-2000:]
        assert out.strip().splitlines()[-1] == str(len(store))
    prepared = tfds_isic.prepare_isic(None, str(data_dir), SIZE)
    assert prepared.image_ids == store.image_ids


def test_missing_image_dir_and_missing_images(synth, tmp_path):
    with pytest.raises(tfds_isic.IsicImageError, match="ISIC_2019_Training_Input"):
        tfds_isic.prepare_isic(str(tmp_path / "nowhere"), str(tmp_path / "tfds"), SIZE)
    root, summary, store = synth
    table = isic_splits.read_split(summary["split_dir"], "test", 1, "0.01")
    broken = isic_splits.SplitTable(
        image_ids=table.image_ids + ("ISIC_9999999_downsampled",),
        labels=np.append(table.labels, 0).astype(np.int32),
        path=table.path,
    )
    with pytest.raises(tfds_isic.IsicImageError, match="1 of .*ISIC_9999999_downsampled"):
        tfds_isic.IsicSplitSource(broken, store)


# ----------------------------------------------------------------------------- grain pipelines


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def _same(batches_a, batches_b):
    return all(np.array_equal(a[k], b[k]) for a, b in zip(batches_a, batches_b) for k in a)


def test_train_iterator_determinism_and_resume(synth):
    source = _source(synth)
    first = _take(pipeline.make_train_iterator(source, 8, seed=1), 3)
    assert first[0]["image"].shape == (8, SIZE, SIZE, 3) and first[0]["image"].dtype == np.uint8
    assert first[0]["label"].shape == (8,) and first[0]["label"].dtype == np.int32
    assert _same(first, _take(pipeline.make_train_iterator(source, 8, seed=1), 3))
    assert not _same(first, _take(pipeline.make_train_iterator(source, 8, seed=2), 3))

    steps = pipeline.steps_per_epoch(len(source), 8)
    reference = _take(pipeline.make_train_iterator(source, 8, seed=1), steps + 4)
    interrupted = pipeline.make_train_iterator(source, 8, seed=1)
    _take(interrupted, steps - 2)
    state = interrupted.get_state()
    resumed = pipeline.make_train_iterator(source, 8, seed=1)
    resumed.set_state(state)  # crosses the epoch boundary after resuming
    assert _same(reference[steps - 2 :], _take(resumed, 6))


def test_train_epochs_drop_last_and_reshuffle(synth):
    source = _source(synth)
    steps = pipeline.steps_per_epoch(len(source), 8)
    assert pipeline.steps_per_epoch(20782, 32) == 649
    it = pipeline.make_train_iterator(source, 8, seed=0, augment=False)
    epoch1 = np.concatenate([b["label"] for b in _take(it, steps)])
    epoch2 = np.concatenate([b["label"] for b in _take(it, steps)])
    assert len(epoch1) == steps * 8
    it = pipeline.make_train_iterator(source, 8, seed=0, augment=False)
    images = np.concatenate([b["image"] for b in _take(it, steps)])
    assert len({img.tobytes() for img in images}) == steps * 8  # no example twice in an epoch
    assert not np.array_equal(epoch1, epoch2)


def test_train_process_shards(synth):
    source = _source(synth)
    steps = pipeline.steps_per_epoch(len(source), 8)
    single = _take(pipeline.make_train_iterator(source, 8, seed=4), steps)
    shards = [
        _take(pipeline.make_train_iterator(source, 8, seed=4, process_index=p, process_count=2), steps)
        for p in range(2)
    ]
    seen = []
    for k in range(steps):
        joined = np.concatenate([shards[0][k]["image"], shards[1][k]["image"]])
        # The union of the two per-process batches is the single-process global batch.
        np.testing.assert_array_equal(joined, single[k]["image"])
        assert shards[0][k]["image"].shape[0] == 4
        seen += [img.tobytes() for img in joined]
    assert len(seen) == len(set(seen)) == steps * 8  # disjoint, and cover the epoch
    with pytest.raises(ValueError, match="divisible"):
        pipeline.make_train_iterator(source, 9, seed=0, process_count=2)


def test_train_worker_process_matches_in_process(synth):
    source = _source(synth)
    in_process = _take(pipeline.make_train_iterator(source, 8, seed=5), 2)
    with_worker = _take(pipeline.make_train_iterator(source, 8, seed=5, worker_count=1), 2)
    assert _same(in_process, with_worker)


@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_batches_cover_each_example_once(synth, process_count):
    source = _source(synth, "test", 1, "0.01")  # 24 examples
    global_batch = 10
    per_process = [
        list(pipeline.make_eval_batches(source, global_batch, p, process_count)) for p in range(process_count)
    ]
    assert len({len(b) for b in per_process}) == 1 and len(per_process[0]) == 3
    expected = [source[i]["image"].tobytes() for i in range(len(source))]
    seen, labels = [], []
    for k in range(3):
        for batches in per_process:
            batch = batches[k]
            assert batch["image"].shape == (global_batch // process_count, SIZE, SIZE, 3)
            assert batch["mask"].dtype == bool
            assert not batch["image"][~batch["mask"]].any()
            seen += [img.tobytes() for img in batch["image"][batch["mask"]]]
            labels += batch["label"][batch["mask"]].tolist()
    assert seen == expected and labels == source.labels.tolist()


# ----------------------------------------------------------------------------- augmentation


def _test_image(size=64):
    rng = np.random.default_rng(123)
    return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)


def test_augment_deterministic_shape_and_changes():
    image = _test_image()
    a = augment.train_augment(image, np.random.default_rng(7))
    b = augment.train_augment(image, np.random.default_rng(7))
    c = augment.train_augment(image, np.random.default_rng(8))
    assert a.shape == image.shape and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and not np.array_equal(a, image)
    assert augment.eval_transform(image) is image


def test_augment_geometry_and_flips():
    image = _test_image()
    pil = Image.fromarray(image)
    rotated = np.asarray(augment.random_rotation(pil, np.random.default_rng(0)))
    assert not np.array_equal(rotated, image) and (rotated[0, 0] == 0).all()  # corner filled 0
    scaled = np.asarray(augment.random_affine_scale(pil, np.random.default_rng(0)))
    assert scaled.shape == image.shape and not np.array_equal(scaled, image)


def test_augment_flips_happen(monkeypatch):
    # With the geometric and colour steps stubbed out, only the two flips remain.
    monkeypatch.setattr(augment, "GEOMETRIC_CHOICES", (lambda img, rng: img,) * 3)
    monkeypatch.setattr(augment, "color_jitter", lambda img, rng: img)
    image = _test_image()
    variants = {"none": image, "h": image[:, ::-1], "v": image[::-1], "hv": image[::-1, ::-1]}
    seen = set()
    for seed in range(40):
        out = augment.train_augment(image, np.random.default_rng(seed))
        seen |= {name for name, v in variants.items() if np.array_equal(out, v)}
    assert seen == set(variants)


def test_resize_matches_pil_bilinear():
    image = Image.fromarray(_test_image(100)[:, :80])
    out = augment.resize_image(image, 32)
    assert out.size == (32, 32)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(image.resize((32, 32), Image.BILINEAR)))


def test_augment_ops_match_torchvision():
    """Fixed-parameter parity with torchvision's PIL backend (torch is a test requirement)."""
    from foprokd_jax.porting.torch_compat import import_torchvision

    import_torchvision()
    import torchvision.transforms.functional as F
    from torchvision.transforms import InterpolationMode

    img = Image.fromarray(_test_image(224))
    nearest = InterpolationMode.NEAREST
    for scale in (0.95, 1.2):
        ref = F.affine(img, angle=0.0, translate=[0, 0], scale=scale, shear=[0.0, 0.0], interpolation=nearest, fill=0)
        np.testing.assert_array_equal(np.asarray(augment._affine(img, (0, 0), scale)), ref)
    ref = F.affine(img, angle=0.0, translate=[-11, 0], scale=1.0, shear=[0.0, 0.0], interpolation=nearest, fill=0)
    np.testing.assert_array_equal(np.asarray(augment._affine(img, (-11, 0), 1.0)), ref)
    for hue in (-0.01, 0.006):
        np.testing.assert_array_equal(np.asarray(augment.adjust_hue(img, hue)), np.asarray(F.adjust_hue(img, hue)))
    ref = F.rotate(img, 30.0, nearest, fill=0)
    np.testing.assert_array_equal(np.asarray(img.rotate(30.0, resample=Image.NEAREST, fillcolor=(0, 0, 0))), ref)
