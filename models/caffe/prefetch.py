"""Background batch making for the data layers (Caffe's BasePrefetchingDataLayer).

A ``Prefetcher`` runs ``make_batch()`` in a daemon thread and keeps up to ``depth`` finished
batches waiting (``data_param.prefetch``, 4 by default), so a forward pass only waits when
decoding is slower than the net. ``next()`` hands out the batches in order; an error raised while
making one is raised by the ``next()`` that would have returned it (and by every later one).

How many decode workers each layer makes its batches with (``decode_pool.DecodePool``: the
prefetch thread and worker processes, or the thread alone with one) is set here.

A prefetcher's thread stops at the next row once it is closed or the process exits
(``check_cancelled``); at exit its thread is joined first (``background``).
"""
from __future__ import annotations

import os
import queue
import threading

from . import background

_decode_workers: int | None = None
_here = threading.local()          # .stop: the stop event of this thread's prefetcher


class Cancelled(BaseException):
    """Raised in a prefetch thread, between two rows, once its prefetcher was closed or the
    process is exiting: the batch is not wanted. (A BaseException, so that the per-row error
    handling, which catches Exception, lets it through.)"""


def check_cancelled() -> None:
    """Raise Cancelled when the batch this thread is making is no longer wanted: called once
    per row by the batch makers. (Never outside prefetch threads, e.g. in a decode worker
    process: its parent's exit closes its pipe.)"""
    stop = getattr(_here, "stop", None)
    if background.exiting() or (stop is not None and stop.is_set()):
        raise Cancelled()


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
        background.watch(self)
        self._thread.start()

    def _run(self):
        _here.stop = self._stop
        while not self._stop.is_set() and not background.exiting():
            try:
                item = self._make()
            except Cancelled:       # a next() after close says so instead of waiting
                try:
                    self._ready.put_nowait(_Failure(RuntimeError(
                        f"{self._thread.name}: the data layer was closed")))
                except queue.Full:
                    pass
                return
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
        """Stop making batches (the thread ends at the next row of the batch it is making)."""
        self._stop.set()
        try:
            while True:
                self._ready.get_nowait()
        except queue.Empty:
            pass

    def _stop_for_exit(self):
        self.close()
        return [self._thread]
