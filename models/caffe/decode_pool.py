"""The processes a prefetching data layer decodes and transforms its batches on.

With one worker a batch is made inline, in the layer's prefetch thread. With ``n > 1`` the
pool starts ``n`` worker processes (plain ``python`` subprocesses running ``worker_main``: no
fork of a process that has threads, and the user's ``__main__`` is never re-run), hands each
of them, once, the layer's reader and transformer (``data_items``), and then, per batch, its
share of the items with their pre-drawn random numbers. The workers parse, decode, crop,
mirror, subtract and scale with nothing shared but the batch, so the GIL of one process never
holds up another's work and the work scales with the cores.

A batch's data is written by the workers straight into a shared memory slot that the layer's
process maps too, so nothing is copied back. Slots are made once and reused (a new shared page
costs far more to fault in than the row written to it): the array a batch hands out leases its
slot, and the slot is free again when that array and every view of it (a tensor made from it,
a blob holding it) are gone. A slot's file is unlinked as soon as every worker has mapped it,
so nothing stays behind in /dev/shm.

Which rows a worker makes does not change what they hold: the items and their draws are fixed
before any of them is dealt, so a batch is the same, bit for bit, for any number of workers.
A bad item raises, in the layer, the same CaffeError the inline path raises (the one of the
earliest bad row in the batch). A worker ends when the pool closes its pipe, or when the
layer's process ends.
"""
from __future__ import annotations

import ctypes
import itertools
import mmap
import os
import pathlib
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import weakref
from multiprocessing.connection import Connection

import numpy as np

from .data_items import fill_rows
from .errors import CaffeError

_ROOT = str(pathlib.Path(__file__).resolve().parents[2])     # where ``models`` is imported from
_PIPE_BYTES = 1 << 20
_SHM = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None


class DecodePool:
    def __init__(self, workers: int, reader, transformer, name: str = "decode"):
        """``reader`` (``data_items.DatumRecords`` / ``ImageFiles``) loads an item,
        ``transformer`` (``DataTransformer``) transforms it; with workers, both are pickled
        once to each worker."""
        self.workers = max(1, int(workers))
        self.reader, self.transformer, self.name = reader, transformer, name
        self._procs: list[_Worker] = []
        self._free: list[_Slot] = []         # slots no batch array holds
        self._arena: _Slot | None = None     # the payloads of the batch being made
        self.rows_made = 0                   # rows the workers have made so far
        self._cpu: dict[int, float] = {}     # worker -> its CPU seconds, as of its last reply
        self._lock = threading.Lock()
        self._closed = False

    # ------------------------------------------------------------ a batch
    def make(self, jobs, shape, first_shape):
        """The batch of ``jobs`` (``(i, item, draws)``; the first may be ``(i, item, draws,
        img, label)``, already loaded) as (data, labels): data N x C x H x W float32 of
        ``shape``, labels float32, made by ``data_items.fill_rows``, the jobs dealt round-robin
        to the workers (a loaded one is made here while they work). Raises the error of the
        earliest bad row."""
        labels = np.empty(shape[0], dtype=np.float32)
        if self.workers == 1:
            data = np.empty(shape, dtype=np.float32)
            fill_rows(self.reader, self.transformer, jobs, data, labels, first_shape)
            return data, labels
        here = [j for j in jobs if len(j) > 3]
        rest = [j for j in jobs if len(j) <= 3]
        procs = self._started()
        slot = self._slot(int(np.prod(shape)) * 4, procs)
        data = slot.lease(shape, self._give_back)
        rest, arena = self._packed(rest, procs)
        shares = [rest[k::len(procs)] for k in range(len(procs))]
        busy = [(p, s) for p, s in zip(procs, shares) if s]
        for p, share in busy:
            p.send(("batch", os.getcwd(), slot.id, arena, shape, first_shape, share))
        errors = []
        try:
            fill_rows(self.reader, self.transformer, here, data, labels, first_shape)
        except Exception as e:
            errors.append((here[0][0], e))
        for p, share in busy:
            reply = p.receive()
            if reply[0] == "done":
                labels[[j[0] for j in share]] = reply[1]
                self._cpu[p.proc.pid] = reply[2]
                self.rows_made += len(share)
            else:
                errors.append((reply[1], _rebuilt(reply, p)))
        if errors:
            raise min(errors, key=lambda e: e[0])[1]
        return data, labels

    # ------------------------------------------------------------ shared memory slots
    def _slot(self, nbytes, procs):
        """A free slot of ``nbytes`` or more, else a new one every worker has mapped (free
        ones too small for this batch are dropped: batches changed size)."""
        with self._lock:
            fits = [s for s in self._free if s.nbytes >= nbytes]
            if fits:
                slot = min(fits, key=lambda s: s.nbytes)
                self._free.remove(slot)
                return slot
            dropped, self._free = self._free, []
        for old in dropped:
            for p in procs:
                p.send(("unmap", old.id))
        return self._new_slot(nbytes, procs)

    @staticmethod
    def _new_slot(nbytes, procs):
        slot = _Slot(nbytes)
        try:
            for p in procs:
                p.send(("map", slot.id, slot.path))
            for p in procs:
                reply = p.receive()
                if reply[0] != "mapped":
                    raise _rebuilt(reply, p)
        finally:
            os.unlink(slot.path)            # mapped everywhere (or failed): the name goes
        return slot

    def _packed(self, jobs, procs):
        """(jobs, arena slot id): the items' payloads (a record's value) copied into the
        arena, a shared slot every worker maps (a memcpy, where a pipe costs ten times as
        much); each job gets the (offset, length) of its payload, or None. One batch is made at a
        time, so one arena serves them all; it grows when a batch needs more."""
        payloads = [self.reader.payload(job[1]) for job in jobs]
        need = sum(len(p) for p in payloads if p is not None)
        if not need:
            return [job + (None,) for job in jobs], None
        if self._arena is None or self._arena.nbytes < need:
            if self._arena is not None:
                for p in procs:
                    p.send(("unmap", self._arena.id))
                self._arena = None
            self._arena = self._new_slot(max(need, 1 << 20) * 2, procs)
        buf, offset, packed = self._arena.map, 0, []
        for (i, item, draws), payload in zip(jobs, payloads):
            span = None
            if payload is not None:
                span = (offset, len(payload))
                buf[offset:offset + len(payload)] = payload
                item = self.reader.with_payload(item, None)
                offset += len(payload)
            packed.append((i, item, draws, span))
        return packed, self._arena.id

    def _give_back(self, slot):
        with self._lock:
            if not self._closed:
                self._free.append(slot)

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

    def worker_cpu(self) -> tuple[int, float]:
        """(rows the workers have made, CPU seconds they used making them) so far: their
        ratio is the workers' CPU time per image."""
        return self.rows_made, sum(self._cpu.values())

    def close(self):
        """End the workers (each exits when its pipe closes; one still busy is killed after a
        few seconds) and let go of the free slots."""
        with self._lock:
            self._closed = True
            procs, self._procs = self._procs, []
            self._free = []
        for p in procs:
            p.close()


class _Slot:
    """A shared memory file mapped here and, by id, in every worker."""
    _ids = itertools.count()

    def __init__(self, nbytes: int):
        self.id, self.nbytes = next(self._ids), nbytes
        fd, self.path = tempfile.mkstemp(prefix="deepselfie-batch-", dir=_SHM)
        try:
            os.ftruncate(fd, nbytes)
            self.map = mmap.mmap(fd, nbytes)
        except BaseException:
            os.unlink(self.path)
            raise
        finally:
            os.close(fd)

    def lease(self, shape, give_back) -> np.ndarray:
        """A float32 array of ``shape`` on this slot; ``give_back(self)`` once it and every
        view of it are gone."""
        holder = (ctypes.c_char * self.nbytes).from_buffer(self.map)
        weakref.finalize(holder, give_back, self)
        return np.frombuffer(holder, dtype=np.float32, count=int(np.prod(shape))).reshape(shape)


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
        try:    # room for a whole share of jobs: sending to one worker never waits for it
            import fcntl
            fcntl.fcntl(to_child_w, fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
        except (ImportError, OSError, AttributeError):
            pass
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
    """A worker's loop: ``("setup", reader, transformer)`` once; ``("map", slot id, path)``,
    answered ``("mapped",)``; ``("unmap", slot id)``; per batch ``("batch", working
    directory, slot id, arena slot id, data shape, first shape, jobs)``, answered
    ``("done", labels, CPU seconds used so far)`` or ``("error", row, kind, details)``. Ends
    when the pipe closes."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # a Ctrl-C is the layer's process's to handle
    try:
        import cv2
        cv2.setNumThreads(1)        # the pool is the parallelism; no threads inside each worker
    except ImportError:
        pass
    inbox, outbox = Connection(read_fd, writable=False), Connection(write_fd, readable=False)
    reader = transformer = None
    slots: dict[int, mmap.mmap] = {}
    while True:
        try:
            message = inbox.recv()
        except (EOFError, OSError):
            return
        kind = message[0]
        if kind == "setup":
            _, reader, transformer = message
        elif kind == "map":
            _, slot, path = message
            try:
                with open(path, "r+b") as f:
                    slots[slot] = mmap.mmap(f.fileno(), 0)
                outbox.send(("mapped",))
            except OSError:
                outbox.send(("error", -1, "bug", traceback.format_exc()))
        elif kind == "unmap":
            slots.pop(message[1]).close()
        else:
            _, cwd, slot, arena, shape, first_shape, jobs = message
            if cwd != os.getcwd():  # relative paths (ImageData's) as the layer's process sees them
                os.chdir(cwd)
            buf = slots.get(arena)  # payloads back from the arena into their items
            jobs = [(i, item if span is None else
                     reader.with_payload(item, buf[span[0]:span[0] + span[1]]), draws)
                    for i, item, draws, span in jobs]
            outbox.send(_fill_share(reader, transformer, jobs, slots[slot], shape, first_shape))


def _fill_share(reader, transformer, jobs, mapping, shape, first_shape):
    """The reply for one share of a batch, its rows written to ``mapping``."""
    data = np.frombuffer(mapping, dtype=np.float32, count=int(np.prod(shape))).reshape(shape)
    labels = np.empty(shape[0], dtype=np.float32)
    row = jobs[0][0]
    try:
        for job in jobs:
            row = job[0]
            fill_rows(reader, transformer, [job], data, labels, first_shape)
        return ("done", labels[[j[0] for j in jobs]], time.process_time())
    except CaffeError as e:
        return ("error", row, "caffe", (e.detail, e.path, e.field))
    except Exception:
        return ("error", row, "bug", traceback.format_exc())

