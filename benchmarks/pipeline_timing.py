"""The input-pipeline benchmark of benchmarks/benchmark.py: img/s (and img/s per core) of the grain train iterator.

A module of its own, without absl flags, so that tests can import it beside the CLIs (absl keeps one global
flag table, and benchmarks/benchmark.py defines --out/--methods/--steps as other launchers do).
"""

import os
import tempfile
import time

MIN_PIPELINE_S = 3.0


# The pipeline benchmark's epoch length: ISIC-2019's 25,331 training images. grain's index_shuffle costs about
# 38,000 / N microseconds of CPU per example for an epoch of N (measured: 232 us at N = 120, 4.5 us at 25,331), so
# shuffling the 120 synthetic images directly would charge read + batch ~0.23 ms per image that a real split
# does not pay.
PIPELINE_EXAMPLES = 25331


class TiledSource:
    """`source` repeated to `length` examples (index i reads source[i % len(source)]): a realistic shuffle domain
    over the few synthetic images the benchmark prepares. Reads hit the same records, page cache warm."""

    def __init__(self, source, length: int):
        self._source, self._length = source, length

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int):
        return self._source[index % len(self._source)]


def bench_pipeline(size, batch_size, num_batches, worker_count, threshold, augment_on="host"):
    """img/s of the grain train iterator; augment_on='device' times what the host does then: read + batch."""
    from benchmarks import cpu_contention
    from foprokd_jax.data import isic_splits, pipeline, synthetic, tfds_isic

    root = os.path.join(tempfile.gettempdir(), "foprokd_bench_synthetic")
    split_dir = os.path.join(root, "splits")
    if not os.path.exists(os.path.join(split_dir, "train_skin1_0.01.csv")):
        synthetic.write_synthetic_isic(root, n_max=64, seed=0)
    t0 = time.perf_counter()
    store = tfds_isic.prepare_isic(root, os.path.join(root, "tfds"), size)
    prepare_s = time.perf_counter() - t0
    table = isic_splits.read_split(split_dir, "train", 1, "0.01")
    source = TiledSource(tfds_isic.IsicSplitSource(table, store), PIPELINE_EXAMPLES)
    augment = augment_on == "host"
    it = pipeline.make_train_iterator(source, batch_size, seed=0, worker_count=worker_count, augment=augment)
    for _ in range(2):  # start-up (and worker spawn) excluded; the prefetch buffer is drained once
        next(it)
    before = cpu_contention.snapshot()
    drawn = 0
    # At least `num_batches`, and at least MIN_PIPELINE_S: /proc counts CPU time in 10 ms ticks.
    while drawn < num_batches or time.perf_counter() - before.wall_s < MIN_PIPELINE_S:
        next(it)
        drawn += 1
    after = cpu_contention.snapshot()
    img_per_s = drawn * batch_size / (after.wall_s - before.wall_s)
    share = cpu_contention.foreign_share(before, after)
    cores = cpu_contention.own_cores(before, after)
    note = "" if worker_count == 0 else " (worker processes' CPU is not counted in 'cores used')"
    return {
        "image_size": size,
        "batch_size": batch_size,
        "worker_count": worker_count,
        "augment_on": augment_on,
        "epoch_examples": PIPELINE_EXAMPLES,
        "prepare_s_(cached_after_first)": round(prepare_s, 2),
        "batches": drawn,
        "img_per_s": round(img_per_s, 1),
        "cores": None if cores is None else round(cores, 2),
        "img_per_s_per_core": round(img_per_s / cores, 1) if cores else None,
        "foreign_share": None if share is None else round(share, 3),
        "contended": cpu_contention.is_contended(share, threshold),
        "note": note,
    }
