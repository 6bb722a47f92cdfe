"""The processes a prefetching data layer decodes and transforms its batches on.

With one worker a batch is made inline, in the layer's prefetch thread. With ``n > 1`` the
pool starts ``n - 1`` worker processes (plain ``python`` subprocesses running ``worker_main``:
no fork of a process that has threads, and the user's ``__main__`` is never re-run), hands each
of them, once, the layer's reader and transformer (``data_items``), and then, per batch, its
share of the items with their pre-drawn random numbers; the prefetch thread makes a share too
while they work (a process of its own would leave the layer's core idle). Shares are sized by
each maker's recent pace, so they finish together. The workers parse, decode, crop, mirror,
subtract and scale with nothing shared but the batch, so the GIL of one process never holds up
another's work and the work scales with the cores.

A batch's data is written by the workers straight into a shared memory slot that the layer's
process maps too, so nothing is copied back. Slots are made once and reused (a new shared page
costs far more to fault in than the row written to it): the array a batch hands out leases its
slot, and the slot is free again when that array and every view of it (a tensor made from it,
a blob holding it) are gone. A slot is an anonymous memfd, so nothing is left behind even when
the process is killed. The records' values go the other way through a shared arena, not the
pipes (a pipe costs ten times a memcpy). ``submit`` / ``collect`` let the layer keep one batch
in flight: the workers make it while the layer's thread reads the next batch's records.

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
    def __init__(self, workers: int, reader, transformer, name: str = "decode",
                 in_flight: int = 2, here: bool = True):
        """``reader`` (``data_items.DatumRecords`` / ``ImageFiles``) loads an item,
        ``transformer`` (``DataTransformer``) transforms it; with workers, both are pickled
        once to each worker. ``in_flight``: how many batches may be submitted and not yet
        collected (the layer keeps that many in the making, so no worker waits for the next
        one). ``here=False``: all ``workers`` are processes and ``submit`` makes no share
        itself, it only deals (for a caller whose own thread has other work, as the scorer's
        forward)."""
        self.workers = max(1, int(workers))
        self.here = bool(here)
        self.in_flight = max(1, int(in_flight))
        self.reader, self.transformer, self.name = reader, transformer, name
        self._procs: list[_Worker] = []
        self._free: list[_Slot] = []         # slots no batch array holds
        self._arenas: list = [None] * self.in_flight    # the payloads of batches in flight
        self._turn = 0
        self._unreleased: set = set()        # slots whose name or descriptor is still open
        self.rows_made = 0                   # rows the workers have made so far
        self._cpu: dict[int, float] = {}     # worker -> its CPU seconds, as of its last reply
        self._pace: dict = {}                # worker -> seconds a row takes it (recent mean)
        self._busy_since = None              # when this thread last stopped waiting for them
        self._lock = threading.Lock()
        self._closed = False

    # ------------------------------------------------------------ a batch
    def submit(self, jobs, shape, first_shape) -> "_Ticket":
        """Start making the batch of ``jobs`` (``(i, item, draws)``; the first may be ``(i,
        item, draws, img, label)``, already loaded): data N x C x H x W float32 of ``shape``,
        labels float32, rows made by ``data_items.fill_rows``, the jobs dealt by pace to this
        thread and the workers (a loaded one is made here); this thread's share is made before
        returning, the workers' go on; ``collect`` it later. With workers, the one before it
        may still be in the making: a layer keeps one batch in flight while it reads the next
        one's records, so the workers never wait for it."""
        ticket = _Ticket(np.empty(shape[0], dtype=np.float32))
        if self.workers == 1 and self.here:
            ticket.data = np.empty(shape, dtype=np.float32)
            fill_rows(self.reader, self.transformer, jobs, ticket.data, ticket.labels,
                      first_shape)
            return ticket
        here = [j for j in jobs if len(j) > 3]
        rest = [j for j in jobs if len(j) <= 3]
        procs = self._started()
        slot = self._slot(int(np.prod(shape)) * 4, procs, ticket)
        ticket.data = slot.lease(shape, self._give_back)
        if self.here:
            mine, *shares = self._dealt(rest, [_HERE] + procs)
        else:
            mine, shares = [], self._dealt(rest, procs)
        packed, arena = self._packed([j for share in shares for j in share], procs, ticket)
        ticket.busy = []
        for p, share in zip(procs, shares):
            if share:
                ticket.busy.append((p, packed[:len(share)]))
                p.send(("batch", os.getcwd(), slot.id, arena, shape, first_shape,
                        packed[:len(share)]))
                packed = packed[len(share):]
        error = _fill(self.reader, self.transformer, here, ticket.data, ticket.labels,
                      first_shape)
        if error is None and mine:
            start = time.perf_counter()
            error = _fill(self.reader, self.transformer, mine, ticket.data, ticket.labels,
                          first_shape)
            # this thread's pace counts all it did since it last waited for the workers
            # (reading the records, dealing, packing): its share shrinks by that much, and
            # the workers do not wait for it
            since = self._busy_since if self._busy_since is not None else start
            self._paced(_HERE, (time.perf_counter() - since) / len(mine))
        if error is not None:
            ticket.errors.append(error)
        return ticket

    def collect(self, ticket: "_Ticket"):
        """(data, labels) of a submitted batch, once its workers are done; tickets are
        collected in the order they were submitted. Raises the error of the batch's earliest
        bad row."""
        self._busy_since = None
        for p, share in ticket.busy:
            reply = p.receive()
            if reply[0] == "done":
                ticket.labels[[j[0] for j in share]] = reply[1]
                self._cpu[p.proc.pid] = reply[2]
                self._paced(p, reply[3] / len(share))
                self.rows_made += len(share)
            else:
                ticket.errors.append((reply[1], _rebuilt(reply, p)))
        if ticket.busy:
            self._busy_since = time.perf_counter()
        for slot in ticket.new_slots:       # every worker has mapped them by now
            self._release(slot)
        if ticket.errors:
            raise min(ticket.errors, key=lambda e: e[0])[1]
        return ticket.data, ticket.labels

    def _dealt(self, jobs, makers):
        """The jobs in one contiguous share per maker (this thread, then each worker), sized
        by each one's recent pace (seconds a row took it, wall clock, so one that shares its
        core with the layer's own threads gets fewer): they finish together, and no worker
        waits for the next batch while another is still on this one. Each maker gets a row
        at least while there are enough (so its pace keeps being measured, and a worker
        that died is noticed)."""
        speeds = [1.0 / self._pace[m] if self._pace.get(m) else 0.0 for m in makers]
        if not all(speeds):
            speeds = [1.0] * len(makers)
        floor = 1 if len(jobs) >= len(makers) else 0
        spare = len(jobs) - floor * len(makers)
        total, shares, start, acc = sum(speeds), [], 0, 0.0
        for k, speed in enumerate(speeds, 1):
            acc += speed
            end = floor * k + round(spare * acc / total)
            shares.append(jobs[start:end])
            start = end
        return shares

    def _paced(self, maker, pace):
        old = self._pace.get(maker)
        self._pace[maker] = pace if old is None else 0.7 * old + 0.3 * pace

    # ------------------------------------------------------------ shared memory slots
    def _slot(self, nbytes, procs, ticket):
        """A free slot of ``nbytes`` or more, else a new one (free ones too small for this
        batch are dropped: batches changed size)."""
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
        return self._new_slot(nbytes, procs, ticket)

    def _new_slot(self, nbytes, procs, ticket):
        """A new slot; every worker maps it before the ticket's batch (its messages are read
        in order), and its file is unlinked when the ticket is collected."""
        slot = _Slot(nbytes)
        with self._lock:
            self._unreleased.add(slot)
        ticket.new_slots.append(slot)
        for p in procs:
            p.send(("map", slot.id, slot.path))
        return slot

    def _release(self, slot):
        with self._lock:
            self._unreleased.discard(slot)
        slot.release()

    def _packed(self, jobs, procs, ticket):
        """(jobs, arena slot id): the items' payloads (a record's value) copied into an
        arena, a shared slot every worker maps (a memcpy, where a pipe costs ten times as
        much); each job gets the (offset, length) of its payload, or None. Batches in flight
        take turns over two arenas, which grow when a batch needs more."""
        payloads = [self.reader.payload(job[1]) for job in jobs]
        need = sum(len(p) for p in payloads if p is not None)
        if not need:
            return [job + (None,) for job in jobs], None
        self._turn = (self._turn + 1) % len(self._arenas)
        arena = self._arenas[self._turn]
        if arena is None or arena.nbytes < need:
            if arena is not None:
                for p in procs:
                    p.send(("unmap", arena.id))
            arena = self._arenas[self._turn] = self._new_slot(max(need, 1 << 20) * 2, procs,
                                                              ticket)
        buf, offset, packed = arena.map, 0, []
        for (i, item, draws), payload in zip(jobs, payloads):
            span = None
            if payload is not None:
                span = (offset, len(payload))
                buf[offset:offset + len(payload)] = payload
                item = self.reader.with_payload(item, None)
                offset += len(payload)
            packed.append((i, item, draws, span))
        return packed, arena.id

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
                procs = [_Worker(f"{self.name}-{k}")
                         for k in range(self.workers - (1 if self.here else 0))]
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
        for slot in list(self._unreleased):
            self._release(slot)


class _Ticket:
    """A batch being made: its arrays, the workers with a share of it and what they were
    given, errors so far, slot files to unlink once it is collected."""

    def __init__(self, labels):
        self.data, self.labels = None, labels
        self.busy: list = []
        self.errors: list = []
        self.new_slots: list[_Slot] = []


class _Slot:
    """Shared memory mapped here and, by ``path``, in every worker: an anonymous memfd the
    workers open through /proc (it goes with the last process that maps it, even one that is
    killed), or where there is none a file under /dev/shm. ``release()`` once every worker has
    mapped it closes the memfd or unlinks the file."""
    _ids = itertools.count()

    def __init__(self, nbytes: int):
        self.id, self.nbytes = next(self._ids), nbytes
        self._fd, self._file = None, None
        if hasattr(os, "memfd_create") and os.path.isdir(f"/proc/{os.getpid()}/fd"):
            fd = self._fd = os.memfd_create("deepselfie-batch", os.MFD_CLOEXEC)
            self.path = f"/proc/{os.getpid()}/fd/{fd}"
        else:
            fd, self.path = tempfile.mkstemp(prefix="deepselfie-batch-", dir=_SHM)
            self._file = self.path
        named = self._file is not None
        try:
            os.ftruncate(fd, nbytes)
            self.map = mmap.mmap(fd, nbytes)
        except BaseException:
            self.release()
            raise
        finally:
            if named:                   # the file has a name: the mapping is all it needs
                os.close(fd)

    _releasing = threading.Lock()

    def release(self):
        """Close the memfd / unlink the file, once: the layer's thread (collecting a batch)
        and a pool being closed from another thread may both get here, and a descriptor
        closed twice could close whatever took its number in between."""
        with self._releasing:
            fd, self._fd = self._fd, None
            name, self._file = self._file, None
        if fd is not None:
            os.close(fd)
        if name is not None:
            try:
                os.unlink(name)
            except FileNotFoundError:
                pass

    def lease(self, shape, give_back) -> np.ndarray:
        """A float32 array of ``shape`` on this slot; ``give_back(self)`` once it and every
        view of it are gone."""
        holder = (ctypes.c_char * self.nbytes).from_buffer(self.map)
        weakref.finalize(holder, give_back, self)
        return np.frombuffer(holder, dtype=np.float32, count=int(np.prod(shape))).reshape(shape)


_HERE = "the layer's thread"     # the maker of the share of a batch made in submit()


def _fill(reader, transformer, jobs, data, labels, first_shape):
    """Make ``jobs`` in row order; None, or (row, error) of the first bad one."""
    for job in jobs:
        try:
            fill_rows(reader, transformer, [job], data, labels, first_shape)
        except Exception as e:
            return job[0], e
    return None


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
        # sends (the layer's thread) and close (whoever closes the pool) take turns: a write
        # racing the close could land on a descriptor that took the closed one's number
        self._sending = threading.Lock()

    def send(self, message):
        with self._sending:
            if self._out.closed:
                return      # the pool is closing: the batch is not wanted
            try:
                self._out.send(message)
            except OSError:
                pass        # it ended: receive() says so

    def receive(self):
        try:
            return self._in.recv()
        except (EOFError, OSError):
            return ("error", -1, "exit", self.proc.wait())

    def close(self):
        """Close its pipe (it exits at the end of the batch it is making), wait for it. The
        pipe from it is left to the garbage collector: the prefetch thread may be reading it."""
        with self._sending:
            self._out.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# ---------------------------------------------------------------- in the worker process

def worker_main(read_fd: int, write_fd: int) -> None:
    """A worker's loop: ``("setup", reader, transformer)`` once; ``("map", slot id, path)``
    and ``("unmap", slot id)`` as slots come and go; per batch ``("batch", working
    directory, slot id, arena slot id, data shape, first shape, jobs)``, answered
    ``("done", labels, CPU seconds used so far, seconds the share took)`` or ``("error", row,
    kind, details)``. Ends when the pipe closes."""
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
    unmapped: dict[int, str] = {}           # slot -> why it could not be mapped
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
            except OSError:         # said in the reply to the batch that needs it
                unmapped[slot] = traceback.format_exc()
        elif kind == "unmap":
            mapping = slots.pop(message[1], None)
            if mapping is not None:
                mapping.close()
        else:
            _, cwd, slot, arena, shape, first_shape, jobs = message
            if slot in unmapped or arena in unmapped:
                outbox.send(("error", jobs[0][0], "bug", unmapped.get(slot, unmapped.get(arena))))
                continue
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
    start = time.perf_counter()
    error = _fill(reader, transformer, jobs, data, labels, first_shape)
    if error is None:
        return ("done", labels[[j[0] for j in jobs]], time.process_time(),
                time.perf_counter() - start)
    row, e = error
    if isinstance(e, CaffeError):
        return ("error", row, "caffe", (e.detail, e.path, e.field))
    return ("error", row, "bug", "".join(traceback.format_exception(e)))

