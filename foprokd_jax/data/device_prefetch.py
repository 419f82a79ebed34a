"""Batches placed on the devices ahead of the train step, with an exact checkpointable position.

The train step is dispatched asynchronously; what the host does between two dispatches (pull the next grain
batch, stack it, copy it to the devices) is hidden behind the device's work only if it is done *before*
the step needs it. `DevicePrefetcher` runs that in one background thread, `size` batches ahead (the role
of flax's `jax_utils.prefetch_to_device` in pmap code, here for the global arrays the shard_map step takes).

Prefetching must not move the checkpointed data position: a checkpoint taken after step k has to resume at
batch k+1, not at the batch the thread has reached. So the thread records the host iterator's state right
after each batch it pulls, and `get_state()` returns the state that belongs to the last batch handed to the
caller. The state is written in the same JSON text grain writes for its own iterators, so checkpoints made
with and without prefetching are interchangeable.
"""

from __future__ import annotations

import json
import queue
import threading
from typing import Any, Callable

import grain


class _Failure:
    """An exception raised by the host iterator or `put`, re-raised in the consumer at its turn."""

    def __init__(self, error: BaseException):
        self.error = error


_END = object()


def check_size(size) -> int:
    """`input.prefetch_to_device` as an int >= 0, or a ValueError naming the key (bools and floats refused)."""
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ValueError(f"config.input.prefetch_to_device must be an integer >= 0 (0 = no prefetch), got {size!r}")
    return size


class DevicePrefetcher:
    """Iterator of `put(next(host_iterator))`, computed `size` batches ahead in a background thread.

    host_iterator: a checkpointable grain iterator (`get_state`/`set_state`).
    put: host batch -> device batch (e.g. `parallel.host_batch_to_global`).
    size: how many batches may wait on the devices; 0 is the plain synchronous loop (no thread).
    Pass the prefetcher itself to the checkpointer: its `get_state()`/`set_state()` are the position after
    the last batch returned by `next()` (grain's checkpoint handler accepts it as a legacy, bytes-state
    iterator). Call `close()` when done; errors of the host iterator surface at the `next()` that would
    have returned that batch.
    """

    def __init__(self, host_iterator, put: Callable[[Any], Any], size: int = 2):
        self._inner = host_iterator
        self._put = put
        self._size = check_size(size)
        self._state = self._snapshot()
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def _snapshot(self) -> bytes:
        state = self._inner.get_state()
        if isinstance(state, bytes):
            return state
        return json.dumps(state, indent=4).encode()  # what grain's handler writes for a DatasetIterator

    def __iter__(self):
        return self

    def __next__(self):
        if self._size == 0:
            batch = self._put(next(self._inner))
            self._state = self._snapshot()
            return batch
        if self._thread is None:
            self._start()
        item = self._queue.get()
        if item is _END:
            self._queue.put(_END)  # every later next() stops too
            raise StopIteration
        if isinstance(item, _Failure):
            self._queue.put(item)
            raise item.error
        batch, self._state = item
        return batch

    def _start(self) -> None:
        self._stop.clear()
        self._queue = queue.Queue(maxsize=self._size)
        self._thread = threading.Thread(target=self._produce, name="device-prefetch", daemon=True)
        self._thread.start()

    def _offer(self, item) -> bool:
        """Blocks until the queue takes `item` or close() asks to stop; True if it was taken."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        try:
            while not self._stop.is_set():
                host_batch = next(self._inner)
                state = self._snapshot()
                if not self._offer((self._put(host_batch), state)):
                    return
        except StopIteration:
            self._offer(_END)
        except BaseException as error:  # handed to the consumer, raised there
            self._offer(_Failure(error))

    def close(self) -> None:
        """Stops the thread; batches it had prefetched are dropped (the position stays at the last returned)."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self._queue = None

    def get_state(self) -> bytes:
        return self._state

    def set_state(self, state: bytes) -> None:
        """Continue from `state` (from `get_state`, or a grain checkpoint of the host iterator)."""
        self.close()
        if isinstance(self._inner, grain.DatasetIterator):
            self._inner.set_state(json.loads(state))
        else:
            self._inner.set_state(state)
        self._state = self._snapshot()

    def start_prefetch(self) -> None:
        """Called by grain's checkpoint handler after a restore; the thread starts lazily at the next `next()`."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
