"""Training samplers: target class frequencies, determinism, exact resume, process slicing, 'instance' unchanged."""

import pickle

import grain
import numpy as np
import pytest

from foprokd_jax.data import pipeline, samplers

# 5 classes present (20, 10, 6, 3, 1 examples) and class 5 absent: 40 examples.
COUNTS = np.array([20, 10, 6, 3, 1, 0])
SIZE = 16


class ArraySource:
    """In-memory source; the image encodes its index (channel 0) so draws can be traced back."""

    def __init__(self, counts=COUNTS, with_labels=True, seed=0):
        labels = np.repeat(np.arange(len(counts)), counts)
        self._labels = np.random.default_rng(seed).permutation(labels).astype(np.int32)
        if with_labels:
            self.labels = self._labels

    def __len__(self):
        return len(self._labels)

    def __getitem__(self, index):
        image = np.zeros((SIZE, SIZE, 3), np.uint8)
        image[..., 0] = index
        image[..., 1] = np.arange(SIZE, dtype=np.uint8)[:, None] * 8  # some structure for the augmentation
        return {"image": image, "label": self._labels[index]}


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def _indices(batches):
    return np.concatenate([b["image"][:, 0, 0, 0] for b in batches]).astype(np.int64)


def _same(a, b):
    return all(np.array_equal(x[k], y[k]) for x, y in zip(a, b) for k in x)


def test_class_probabilities_by_hand():
    labels = np.repeat(np.arange(6), COUNTS)
    np.testing.assert_allclose(samplers.class_probabilities(labels, "class_balanced", 6), [0.2] * 5 + [0])
    np.testing.assert_allclose(samplers.class_probabilities(labels, "class_balanced"), [0.2] * 5)
    root = np.sqrt(COUNTS)
    np.testing.assert_allclose(samplers.class_probabilities(labels, "sqrt", 6), root / root.sum())
    np.testing.assert_allclose(samplers.class_probabilities(labels, "instance", 6), COUNTS / 40)
    with pytest.raises(ValueError, match="config.input.sampler='balanced'"):
        samplers.class_probabilities(labels, "balanced")


@pytest.mark.parametrize("sampler", ["class_balanced", "sqrt"])
def test_empirical_frequencies_match_the_target(sampler):
    source = ArraySource()
    ds = samplers.resampled_source(source, sampler, seed=3)
    draws = 40 * 500  # 500 epochs of N = 40 draws
    index = np.array([ds.source_index(i) for i in range(draws)])
    assert ds[7]["image"][0, 0, 0] == ds.source_index(7)  # __getitem__ reads the drawn example
    freq = np.bincount(source.labels[index], minlength=6) / draws
    target = samplers.class_probabilities(source.labels, sampler, 6)
    # 5 binomial standard deviations at the largest p: a wrong sampler is far outside, a right one never.
    bound = 5 * np.sqrt(target.max() * (1 - target.max()) / draws)
    np.testing.assert_array_less(np.abs(freq - target), bound)
    assert freq[5] == 0  # the absent class is never drawn
    # Uniform within a class: each of class 0's 20 members ~ 1/20 of that class's draws.
    members = np.bincount(index[source.labels[index] == 0], minlength=len(source))[source.labels == 0]
    expected = members.sum() / 20
    np.testing.assert_array_less(np.abs(members - expected), 5 * np.sqrt(expected))


@pytest.mark.parametrize("sampler", ["class_balanced", "sqrt"])
def test_resampled_stream_deterministic_resumable_and_per_epoch(sampler):
    source = ArraySource()
    make = lambda seed, **kw: pipeline.make_train_iterator(source, 8, seed=seed, sampler=sampler, **kw)  # noqa
    steps = pipeline.steps_per_epoch(len(source), 8)  # 5: an epoch is N draws, drop_last as before
    reference = _take(make(1), 3 * steps)
    assert _same(reference, _take(make(1), 3 * steps))
    assert not _same(reference[:steps], _take(make(2), steps))
    # Without augmentation the images name the drawn examples: labels match them, epochs differ, and an
    # epoch draws with replacement.
    plain = _take(make(1, augment=False), 3 * steps)
    drawn = _indices(plain)
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in plain]), source.labels[drawn])
    assert not np.array_equal(drawn[: len(drawn) // 3], drawn[len(drawn) // 3 : 2 * len(drawn) // 3])
    assert len(set(drawn.tolist())) < len(drawn)
    # Exact resume across an epoch boundary from grain's iterator state.
    interrupted = make(1)
    _take(interrupted, steps - 2)
    resumed = make(1)
    resumed.set_state(interrupted.get_state())
    assert _same(reference[steps - 2 : steps + 4], _take(resumed, 6))
    # The same stream from explicit labels as from source.labels, and from a source without .labels.
    unlabelled = ArraySource(with_labels=False)
    explicit = pipeline.make_train_iterator(unlabelled, 8, seed=1, sampler=sampler, labels=source.labels)
    assert _same(reference[:2], _take(explicit, 2))


def test_resampled_process_slices_union_to_the_single_process_stream():
    source = ArraySource()
    single = _take(pipeline.make_train_iterator(source, 8, seed=4, sampler="sqrt", augment=False), 6)
    shards = [
        _take(
            pipeline.make_train_iterator(
                source, 8, seed=4, sampler="sqrt", augment=False, process_index=p, process_count=2
            ),
            6,
        )
        for p in range(2)
    ]
    for k in range(6):
        assert shards[0][k]["image"].shape[0] == 4
        np.testing.assert_array_equal(
            np.concatenate([shards[0][k]["image"], shards[1][k]["image"]]), single[k]["image"]
        )


def _old_train_dataset(source, global_batch_size, seed, process_index=0, process_count=1, augment=True):
    """make_train_dataset as it was before samplers existed (commit a7f2b01), for the bit-identity check."""
    ds = grain.MapDataset.source(source).seed(seed).shuffle()
    if augment:
        ds = ds.random_map(pipeline._augment_example)
    ds = pipeline._ProcessSliceOfGlobalBatches(ds, global_batch_size, process_index, process_count)
    return ds.repeat()


@pytest.mark.parametrize("process_index,process_count", [(0, 1), (1, 2)])
def test_instance_sampler_is_the_old_stream(process_index, process_count):
    source = ArraySource()
    old = _old_train_dataset(source, 8, 11, process_index, process_count)
    for new in (
        pipeline.make_train_dataset(source, 8, 11, process_index, process_count),
        pipeline.make_train_dataset(
            source, 8, 11, process_index, process_count, sampler="instance", labels=source.labels
        ),
    ):
        for i in range(2 * 40 + 3):  # two epochs (of 40 // 8 * 8 / process_count examples) and a bit
            a, b = old[i], new[i]
            assert np.array_equal(a["image"], b["image"]) and a["label"] == b["label"], i


def test_sampler_errors_and_pickling():
    source = ArraySource()
    with pytest.raises(ValueError, match="Unknown sampler 'balanced'"):
        pipeline.make_train_dataset(source, 8, 0, sampler="balanced")
    with pytest.raises(ValueError, match="labels="):
        pipeline.make_train_dataset(ArraySource(with_labels=False), 8, 0, sampler="sqrt")
    with pytest.raises(ValueError, match=r"one label per training example \(40\)"):
        pipeline.make_train_dataset(source, 8, 0, sampler="sqrt", labels=source.labels[:-1])
    with pytest.raises(ValueError, match="non-negative integers"):
        pipeline.make_train_dataset(source, 8, 0, sampler="sqrt", labels=source.labels - 1)
    # grain worker processes receive the dataset pickled.
    ds = samplers.resampled_source(source, "class_balanced", seed=5)
    clone = pickle.loads(pickle.dumps(ds))
    assert [clone.source_index(i) for i in range(50)] == [ds.source_index(i) for i in range(50)]


def test_resampled_stream_in_a_worker_process_matches_in_process():
    source = ArraySource()
    in_process = _take(pipeline.make_train_iterator(source, 8, seed=5, sampler="class_balanced"), 2)
    with_worker = _take(pipeline.make_train_iterator(source, 8, seed=5, sampler="class_balanced", worker_count=1), 2)
    assert _same(in_process, with_worker)
