"""Parallel workers for the image work (decode, resize, encode; the mean's decoding), or this
thread alone when one is enough.

The workers are threads, not processes: every expensive step is OpenCV (``cv2.imdecode``,
``cv2.resize``, ``cv2.imencode``) or a numpy sum, and all of them release the GIL, so two threads
use two cores. Threads start instantly (a spawned process pays for importing numpy, OpenCV and
the runtime package before its first image: seconds, more than a 400-image build takes), share
the settings, and hand back the encoded bytes without pickling. The caller's thread only
serializes Datums and writes the LMDB. ``Workers(n)`` starts its pool lazily, on the first map
that has more than one task, so a rerun with nothing to encode starts nothing; one pool serves
every split and the mean.
"""
from __future__ import annotations

import collections
import concurrent.futures as cf


class Workers:
    def __init__(self, processes: int = 1):
        self.processes = max(1, int(processes))      # how many work at once (config: processes)
        self._pool = None

    def map(self, fn, tasks, *, ordered: bool = True):
        """fn over tasks, results in task order (``ordered`` is accepted for callers that do not
        care). At most a few tasks per worker run ahead of the consumer, so memory stays
        bounded however many tasks there are."""
        tasks = list(tasks)
        if self.processes == 1 or len(tasks) <= 1:
            return map(fn, tasks)
        if self._pool is None:
            self._pool = cf.ThreadPoolExecutor(self.processes, thread_name_prefix="label-worker")
        return self._ahead(fn, tasks)

    def _ahead(self, fn, tasks):
        pending = collections.deque()
        it = iter(tasks)
        try:
            for task in it:
                pending.append(self._pool.submit(fn, task))
                if len(pending) >= 3 * self.processes:
                    break
            while pending:
                result = pending.popleft().result()
                task = next(it, None)
                if task is not None:
                    pending.append(self._pool.submit(fn, task))
                yield result
        finally:
            for f in pending:
                f.cancel()

    def close(self):
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def as_workers(processes_or_workers) -> tuple[Workers, bool]:
    """(Workers, whether the caller owns it and must close it) for an int or a Workers."""
    if isinstance(processes_or_workers, Workers):
        return processes_or_workers, False
    return Workers(processes_or_workers), True
