"""DevicePrefetcher: the same batches as the plain loop, a checkpointed position that never runs ahead of the
consumer, a checkpoint format interchangeable with grain's own, and errors raised at the right batch."""

import json

import numpy as np
import pytest

from foprokd_jax import checkpointing, parallel
from foprokd_jax.data import device_prefetch, pipeline


class _TinySource:
    """24 distinct 8x8 images; what a prepared array_record source returns, in memory."""

    def __len__(self):
        return 24

    def __getitem__(self, index):
        image = np.full((8, 8, 3), index * 10, np.uint8)
        image[0, 0, 0] = 255 - index
        return {"image": image, "label": np.int32(index % 3)}


def _host_iterator(seed=3, batch=4):
    return pipeline.make_train_iterator(_TinySource(), batch, seed=seed, augment=True, num_threads=2)


def _ids(batch):
    return np.asarray(batch["image"])[:, 0, 0, 0].tolist()


@pytest.mark.parametrize("size", [0, 1, 3])
def test_same_batches_and_position_as_the_plain_iterator(size):
    plain = _host_iterator()
    expected, states = [], []
    for _ in range(9):  # > one epoch (6 steps): the position crosses the epoch boundary
        expected.append(_ids(next(plain)))
        states.append(json.dumps(plain.get_state(), indent=4).encode())
    with device_prefetch.DevicePrefetcher(_host_iterator(), put=lambda b: b, size=size) as batches:
        for k in range(9):
            assert _ids(next(batches)) == expected[k]
            # The thread is up to `size` batches further; the position reported is that of batch k.
            assert batches.get_state() == states[k]


def test_set_state_continues_exactly_and_drops_prefetched_batches():
    reference = [_ids(b) for b, _ in zip(_host_iterator(), range(10))]
    batches = device_prefetch.DevicePrefetcher(_host_iterator(), put=lambda b: b, size=3)
    for _ in range(4):
        next(batches)
    saved = batches.get_state()
    for _ in range(3):
        next(batches)
    batches.set_state(saved)
    assert [_ids(next(batches)) for _ in range(6)] == reference[4:10]
    # A fresh *plain* grain iterator restored from the prefetcher's state continues at batch 4 too.
    plain = _host_iterator()
    plain.set_state(json.loads(saved))
    assert [_ids(next(plain)) for _ in range(3)] == reference[4:7]
    batches.close()


def test_checkpoint_written_through_the_prefetcher_restores_a_plain_iterator(tmp_path):
    """The grain checkpoint file is the same JSON whether the loop prefetches or not."""
    mesh = parallel.make_mesh()
    put = lambda b: parallel.host_batch_to_global(b, mesh)  # noqa: E731 - the real train-loop placement
    reference = [_ids(b) for b, _ in zip(_host_iterator(batch=8), range(8))]  # 8 devices: batch 8
    state = {"w": np.arange(3.0)}
    with device_prefetch.DevicePrefetcher(_host_iterator(batch=8), put=put, size=2) as batches:
        for k in range(5):
            assert _ids(next(batches)) == reference[k]
        with checkpointing.Checkpointer(str(tmp_path / "ckpt")) as ckpt:
            ckpt.save(5, state, batches, 0.5)
            ckpt.wait()
    plain = _host_iterator(batch=8)
    with checkpointing.Checkpointer(str(tmp_path / "ckpt")) as ckpt:
        ckpt.restore(5, state, plain)
    assert [_ids(next(plain)) for _ in range(3)] == reference[5:8]


class _FailsAt:
    """A host iterator whose batch `bad` raises (a corrupt image found while reading)."""

    def __init__(self, bad):
        self.bad, self.position = bad, 0

    def get_state(self):
        return {"position": self.position}

    def __next__(self):
        if self.position == self.bad:
            raise ValueError(f"corrupt image in batch {self.bad}")
        self.position += 1
        return {"image": np.full((2, 1, 1, 3), self.position, np.uint8)}


def test_an_error_surfaces_at_the_batch_that_caused_it():
    with device_prefetch.DevicePrefetcher(_FailsAt(2), put=lambda b: b, size=3) as batches:
        assert _ids(next(batches)) == [1, 1]
        assert _ids(next(batches)) == [2, 2]
        assert json.loads(batches.get_state()) == {"position": 2}
        with pytest.raises(ValueError, match="corrupt image in batch 2"):
            next(batches)
        with pytest.raises(ValueError, match="corrupt image in batch 2"):
            next(batches)  # and again, not a hang


def test_end_of_a_finite_iterator_stops_cleanly():
    finite = iter([{"image": np.zeros((1, 1, 1, 3), np.uint8)}] * 2)

    class _Finite:
        def get_state(self):
            return b"{}"

        def __next__(self):
            return next(finite)

    with device_prefetch.DevicePrefetcher(_Finite(), put=lambda b: b, size=2) as batches:
        assert len(list(batches)) == 2


@pytest.mark.parametrize("size", [-1, 1.5, True, "2"])
def test_bad_size_is_named(size):
    with pytest.raises(ValueError, match="input.prefetch_to_device"):
        device_prefetch.DevicePrefetcher(_host_iterator(), put=lambda b: b, size=size)


def test_config_check_fails_before_any_data_is_prepared():
    from configs import isic
    from foprokd_jax import train

    config = isic.get_config("method=bsm,runlocal")
    config.unlock()
    config.input.prefetch_to_device = -2
    with pytest.raises(ValueError, match=r"config.input.prefetch_to_device must be an integer >= 0.*-2"):
        train.validate_config(config)
