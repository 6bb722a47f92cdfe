"""Background batch making for the data layers (Caffe's BasePrefetchingDataLayer).

A ``Prefetcher`` runs ``make_batch()`` in a daemon thread and keeps up to ``depth`` finished
batches waiting (``data_param.prefetch``, 4 by default), so a forward pass only waits when
decoding is slower than the net. ``next()`` hands out the batches in order; an error raised while
making one is raised by the ``next()`` that would have returned it (and by every later one).

``DecodePool`` runs one function over the items of a batch on ``workers`` threads (the image
decoders and numpy release the GIL); with one worker it runs inline in the prefetch thread.
"""
from __future__ import annotations

import concurrent.futures
import os
import queue
import threading

_decode_workers: int | None = None


def set_decode_workers(n: int | None) -> None:
    """Threads each data layer decodes with (None: automatic, half the cores, at most 8).
    Takes effect for layers built afterwards."""
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


class DecodePool:
    def __init__(self, workers: int, name: str = "decode"):
        self.workers = max(1, int(workers))
        self._pool = (concurrent.futures.ThreadPoolExecutor(self.workers, thread_name_prefix=name)
                      if self.workers > 1 else None)

    def run(self, fn, items) -> None:
        """``fn(*item)`` for every item, the items dealt round-robin to the workers; returns
        when all are done (the first error is raised)."""
        if self._pool is None:
            for item in items:
                fn(*item)
            return

        def run_share(share):
            for item in share:
                fn(*item)
        futures = [self._pool.submit(run_share, items[k::self.workers])
                   for k in range(min(self.workers, len(items)))]
        for f in futures:
            f.result()

    def close(self):
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
