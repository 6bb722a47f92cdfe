"""The processes a prefetching data layer decodes and transforms its batches on.

With one worker a batch is made inline, in the layer's prefetch thread. With ``n > 1`` the
pool starts ``n`` worker processes (plain ``python`` subprocesses running ``worker_main``; no
fork of a process that has threads, and the user's ``__main__`` is never re-run), hands each
of them, once, the layer's reader and transformer (``data_items``), and then, per batch, its
share of the items with their pre-drawn random numbers. The workers parse, decode, crop,
mirror, subtract and scale with nothing shared but the batch: its data lives in a shared
memory file (under /dev/shm) that every worker maps and writes its rows into, and that the
layer's array maps too, so nothing is copied back. The GIL of one process never serialises
another's decoding, so the work scales with the cores.

Which rows a worker makes does not change what they hold: the items and their draws are fixed
before any of them is dealt, so a batch is the same, bit for bit, for any number of workers.
A bad item raises, in the layer, the same CaffeError the inline path raises (the one of the
earliest bad row in the batch). A worker ends when the pool closes its pipe, or the layer's
process ends.
"""
from __future__ import annotations

import mmap
import os
import pathlib
import subprocess
import sys
import tempfile
import threading
import traceback
from multiprocessing.connection import Connection

import numpy as np

from .data_items import fill_rows
from .errors import CaffeError

_ROOT = str(pathlib.Path(__file__).resolve().parents[2])     # where ``models`` is imported from
_SHM = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None


class DecodePool:
    def __init__(self, workers: int, reader, transformer, name: str = "decode"):
        """``reader`` (``data_items.DatumRecords`` / ``ImageFiles``) loads an item,
        ``transformer`` (``DataTransformer``) transforms it; with workers, both are pickled
        once to each worker."""
        self.workers = max(1, int(workers))
        self.reader, self.transformer, self.name = reader, transformer, name
        self._procs: list[_Worker] = []
        self._files: set[str] = set()        # shared memory files of batches being made
        self._lock = threading.Lock()
        self._closed = False

    # ------------------------------------------------------------ a batch
    def new_batch(self, shape):
        """(data, labels) arrays for a batch of ``shape`` (N x C x H x W) float32 data; with
        workers, ``data`` maps a shared memory file they can write to."""
        labels = np.empty(shape[0], dtype=np.float32)
        if self.workers == 1:
            return np.empty(shape, dtype=np.float32), labels
        data = _shared_array(shape)
        with self._lock:
            self._files.add(_shared_file(data).path)
        return data, labels

    def fill(self, jobs, data, labels, first_shape) -> None:
        """``data_items.fill_rows`` over ``jobs`` (``(i, item, draws)``; the first may be
        ``(i, item, draws, img, label)``, already loaded), the jobs dealt round-robin to the
        workers (a loaded one is made here, while they work). Returns when all rows are
        written; raises the error of the earliest bad row."""
        if self.workers == 1:
            fill_rows(self.reader, self.transformer, jobs, data, labels, first_shape)
            return
        here = [j for j in jobs if len(j) > 3]
        rest = [j for j in jobs if len(j) <= 3]
        procs = self._started()
        shares = [rest[k::len(procs)] for k in range(len(procs))]
        busy = [(p, s) for p, s in zip(procs, shares) if s]
        path = _shared_file(data).path
        errors = []
        try:
            for p, share in busy:
                p.send(("batch", os.getcwd(), path, data.shape, first_shape, share))
            try:
                fill_rows(self.reader, self.transformer, here, data, labels, first_shape)
            except Exception as e:
                errors.append((here[0][0], e))
            for p, share in busy:
                reply = p.receive()
                if reply[0] == "done":
                    labels[[j[0] for j in share]] = reply[1]
                else:
                    errors.append((reply[1], _rebuilt(reply, p)))
        finally:       # every worker has unmapped it: the file goes, the batch's mapping stays
            self._unlink(path)
        if errors:
            raise min(errors, key=lambda e: e[0])[1]

    # ------------------------------------------------------------ the workers
    def _started(self):
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self.name}: the decode pool is closed")
            if not self._procs:
                procs = [_Worker(f"{self.name}-{k}") for k in range(self.workers)]
                self._procs = procs
                for p in procs:
                    p.send(("setup", self.reader, self.transformer))
            return self._procs

    def worker_pids(self) -> list[int]:
        """The worker processes' ids (none before the first batch, or with one worker)."""
        return [p.proc.pid for p in self._procs]

    def _unlink(self, path):
        with self._lock:
            self._files.discard(path)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    def close(self):
        """End the workers (each exits when its pipe closes; one still busy is killed after a
        few seconds) and remove the files of batches not finished."""
        with self._lock:
            self._closed = True
            procs, self._procs = self._procs, []
        for p in procs:
            p.close()
        for path in list(self._files):
            self._unlink(path)


class _SharedFile(mmap.mmap):
    """A mapping of an unlinked shared memory file; ``path`` names it while workers map it."""
    path: str


def _shared_array(shape) -> np.ndarray:
    nbytes = int(np.prod(shape)) * 4
    fd, path = tempfile.mkstemp(prefix="deepselfie-batch-", dir=_SHM)
    try:
        os.ftruncate(fd, nbytes)
        mapping = _SharedFile(fd, nbytes)
    finally:
        os.close(fd)
    mapping.path = path
    return np.frombuffer(mapping, dtype=np.float32).reshape(shape)


def _shared_file(data: np.ndarray) -> _SharedFile:
    base = data
    while not isinstance(base, _SharedFile):
        base = base.obj if isinstance(base, memoryview) else base.base
    return base


def _rebuilt(reply, worker):
    """The exception a worker's error reply stands for."""
    kind = reply[2]
    if kind == "caffe":
        detail, path, field = reply[3]
        return CaffeError(detail, path=path, field=field)
    if kind == "exit":
        return RuntimeError(f"decode worker {worker.name} (pid {worker.proc.pid}) ended "
                            f"unexpectedly (exit status {reply[3]})")
    return RuntimeError(f"decode worker {worker.name} failed:\n{reply[3]}")


class _Worker:
    def __init__(self, name):
        self.name = name
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        code = (f"import sys; sys.path.insert(0, {_ROOT!r}); "
                f"from models.caffe.decode_pool import worker_main; "
                f"worker_main({to_child_r}, {from_child_w})")
        try:
            self.proc = subprocess.Popen([sys.executable, "-c", code],
                                         pass_fds=(to_child_r, from_child_w),
                                         stdin=subprocess.DEVNULL)
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        self._out = Connection(to_child_w, readable=False)
        self._in = Connection(from_child_r, writable=False)

    def send(self, message):
        try:
            self._out.send(message)
        except (BrokenPipeError, OSError):
            pass        # it ended: receive() says so

    def receive(self):
        try:
            return self._in.recv()
        except (EOFError, OSError):
            return ("error", -1, "exit", self.proc.wait())

    def close(self):
        self._out.close()
        self._in.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# ---------------------------------------------------------------- in the worker process

def worker_main(read_fd: int, write_fd: int) -> None:
    """A worker's loop: ``("setup", reader, transformer)`` once, then per batch
    ``("batch", working directory, shm path, data shape, first shape, jobs)``, answered
    ``("done", labels)`` or ``("error", row, kind, details)``; ends when the pipe closes."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # a Ctrl-C is the layer's process's to handle
    try:
        import cv2
        cv2.setNumThreads(1)        # the pool is the parallelism; no threads inside each worker
    except ImportError:
        pass
    inbox, outbox = Connection(read_fd, writable=False), Connection(write_fd, readable=False)
    reader = transformer = None
    while True:
        try:
            message = inbox.recv()
        except (EOFError, OSError):
            return
        if message[0] == "setup":
            _, reader, transformer = message
            continue
        _, cwd, path, shape, first_shape, jobs = message
        if cwd != os.getcwd():      # relative paths (ImageData's) as the layer's process sees them
            os.chdir(cwd)
        labels = np.empty(shape[0], dtype=np.float32)
        try:
            with open(path, "r+b") as f:
                mapping = mmap.mmap(f.fileno(), int(np.prod(shape)) * 4)
        except OSError:
            outbox.send(("error", jobs[0][0], "bug", traceback.format_exc()))
            continue
        outbox.send(_fill_share(reader, transformer, jobs, mapping, shape, labels, first_shape))
        mapping.close()


def _fill_share(reader, transformer, jobs, mapping, shape, labels, first_shape):
    """The reply for one share of a batch (nothing of the mapping is referenced once it
    returns, so the caller can close it)."""
    data = np.frombuffer(mapping, dtype=np.float32).reshape(shape)
    row = jobs[0][0]
    try:
        for job in jobs:
            row = job[0]
            fill_rows(reader, transformer, [job], data, labels, first_shape)
        return ("done", labels[[j[0] for j in jobs]])
    except CaffeError as e:
        return ("error", row, "caffe", (e.detail, e.path, e.field))
    except Exception:
        return ("error", row, "bug", traceback.format_exc())


def cpu_seconds(pids) -> float:
    """User + system CPU seconds the processes ``pids`` have used so far (Linux; 0 elsewhere)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    for pid in pids:
        try:
            fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total

