"""Worker processes for the image work (encoding, decoding), or this process when one is enough.

``Workers(n)`` starts its pool lazily, on the first map that has more than one task, so a rerun
with nothing to encode starts no process; one pool serves every split and the mean. Processes
are spawned, not forked, so they never inherit the catalog's SQLite handle or a progress thread.
"""
from __future__ import annotations

import multiprocessing


class Workers:
    def __init__(self, processes: int = 1):
        self.processes = max(1, int(processes))
        self._pool = None

    def map(self, fn, tasks, *, ordered: bool = True):
        """fn over tasks: results in task order (or as they finish when not ordered)."""
        tasks = list(tasks)
        if self.processes == 1 or len(tasks) <= 1:
            return map(fn, tasks)
        if self._pool is None:
            self._pool = multiprocessing.get_context("spawn").Pool(self.processes)
        return (self._pool.imap if ordered else self._pool.imap_unordered)(fn, tasks)

    def close(self):
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
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
