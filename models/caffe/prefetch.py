"""Background batch making for the data layers (Caffe's BasePrefetchingDataLayer).

A ``Prefetcher`` runs ``make_batch()`` in a daemon thread and keeps up to ``depth`` finished
batches waiting (``data_param.prefetch``, 4 by default), so a forward pass only waits when
decoding is slower than the net. ``next()`` hands out the batches in order; an error raised while
making one is raised by the ``next()`` that would have returned it (and by every later one).

How many decode workers each layer makes its batches with (``decode_pool.DecodePool``: the
prefetch thread and worker processes, or the thread alone with one) is set here.
"""
from __future__ import annotations

import os
import queue
import threading

_decode_workers: int | None = None


def set_decode_workers(n: int | None) -> None:
    """Decoders each data layer decodes and transforms with: its prefetch thread and ``n - 1``
    worker processes (1: the thread alone; None: automatic, half the cores, at most 8). Takes
    effect for layers built afterwards; the batches are the same for any number."""
    global _decode_workers
    if n is not None and int(n) < 1:
        raise ValueError("decode workers must be at least 1")
    _decode_workers = None if n is None else int(n)


def decode_workers() -> int:
    if _decode_workers is not None:
        return _decode_workers
    return max(1, min(8, (os.cpu_count() or 1) // 2))


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


class Prefetcher:
    def __init__(self, make_batch, depth: int = 4, name: str = "prefetch"):
        self._make = make_batch
        self._ready: queue.Queue = queue.Queue(maxsize=max(1, int(depth)))
        self._stop = threading.Event()
        self._failed: _Failure | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                item = self._make()
            except BaseException as e:    # handed to the consumer, which raises it
                item = _Failure(e)
            self._ready.put(item)
            if isinstance(item, _Failure):
                return

    def next(self):
        if self._failed is not None:
            raise self._failed.error
        item = self._ready.get()
        if isinstance(item, _Failure):
            self._failed = item
            raise item.error
        return item

    def close(self):
        """Stop making batches (the thread ends after the one it is making)."""
        self._stop.set()
        try:
            while True:
                self._ready.get_nowait()
        except queue.Empty:
            pass
