"""Images prepared ahead of the net, by worker threads (or processes), straight into preallocated
batch buffers.

    for batch_paths, inputs in PreparedBatches(paths, prepare, item_shape, batch_size,
                                               workers=2, on_failure=..., on_done=...):
        net.forward(data=inputs)       # the workers fill the next buffers meanwhile

``prepare(path, out)`` writes one image's net input into ``out`` (an ``item_shape`` float32 view
of a batch buffer) and returns None, or returns the reason it could not read the image. The
work it does (OpenCV's decode and resize, numpy's arithmetic) runs without the GIL, so while the
caller's forward runs (torch releases the GIL too) the workers fill the next buffers.

Worker threads take the paths in order; path ``i`` goes to row ``i % batch_size`` of the buffer
of chunk ``i // batch_size``. A ring of ``depth`` buffers bounds the memory and how far the
workers run ahead: a worker waits for a chunk's buffer until the caller is done with the chunk
that used it before. The caller's thread assembles batches as before the pipeline existed:
``batch_size`` consecutive readable images each (the last one shorter), the unreadable ones
reported in path order through ``on_failure``. A chunk without unreadable images is handed out
as it is, without a copy; after an unreadable one, rows are copied into a batch of their own.

What bounds scoring then is CPU, not waiting: every image costs its decode on top of its
forward. Measured with benchmarks/bench_score.py on the shared 2-core machine (640x480 JPEGs, as
trained): the small net's image costs ~1.0 ms to prepare (0.8 ms of it libjpeg's decode of the
full image, which the trained pixels need) and 0.8-1.2 ms to forward on one thread (the same
machine's speed varies that much from run to run), so with both cores busy scoring can reach
2 / (prep + forward) images a second: 0.48-0.68x of its two-thread raw forward, the faster the
forward the lower. The score runs reach 0.83-0.98 of that bound (1.85 cores of 2). VGG16's
~1.5 ms of preparing is ~1% of its forward: score = raw forward.

``PooledBatches`` is the same with the preparing in worker processes, for machines with more
cores than the GIL lets threads use (a GPU machine's); ``ForwardThreads`` gives the forward the
share of the cores that scores fastest.
"""
from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from models.caffe import background


class _State:
    """What the workers and the caller share, under one condition variable."""

    def __init__(self, n: int, batch_size: int, buffers: int):
        self.threads: list[threading.Thread] = []
        self.cond = threading.Condition()
        self.next_index = 0            # the next path a worker takes
        self.released = 0              # chunks the caller is done with
        self.buffers = buffers
        self.remaining = [min(batch_size, n - k) for k in range(0, n, batch_size)]
        self.errors: dict[int, str] = {}
        self.failure: BaseException | None = None   # a worker's unexpected exception
        self.stop = False
        self.cpu_seconds = 0.0         # thread CPU time spent in prepare, all images so far
        self.prepared = 0

    def _stop_for_exit(self):
        """At exit (models.caffe.background): the workers stop before their next image."""
        with self.cond:
            self.stop = True
            self.cond.notify_all()
        return self.threads


def _work(state: _State, paths, prepare, buffers, batch_size):
    n = len(paths)
    cond = state.cond
    while True:
        with cond:
            while (not state.stop and state.next_index < n
                   and state.next_index // batch_size >= state.released + state.buffers):
                cond.wait()
            if state.stop or state.next_index >= n:
                return
            i = state.next_index
            state.next_index += 1
        chunk = i // batch_size
        try:
            began = time.thread_time()
            reason = prepare(paths[i], buffers[chunk % state.buffers][i % batch_size])
            cpu = time.thread_time() - began
        except BaseException as e:     # a bug, or MemoryError: the caller raises it
            with cond:
                state.failure = state.failure or e
                state.stop = True
                cond.notify_all()
            return
        with cond:
            state.cpu_seconds += cpu
            state.prepared += 1
            if reason is not None:
                state.errors[i] = str(reason)
            state.remaining[chunk] -= 1
            if state.remaining[chunk] == 0:
                cond.notify_all()


class _Batcher:
    """Batches of ``batch_size`` consecutive readable images, in path order, out of chunks of
    prepared rows: a chunk without unreadable images is handed out as it is, without a copy;
    after one, rows are copied into a batch of their own."""

    def __init__(self, batch_size: int, item_shape: tuple):
        self.batch_size, self.item_shape = batch_size, tuple(item_shape)
        self.carry = None                   # the batch being assembled by copying
        self.carry_paths: list = []

    def _flat(self, rows: np.ndarray) -> np.ndarray:
        return rows.reshape((-1,) + self.item_shape[1:])

    def chunk(self, paths: list, rows: np.ndarray, bad: set) -> Iterator[tuple[list, np.ndarray]]:
        """The batches a chunk completes: ``paths`` and their ``rows``, ``bad`` the indices of
        the unreadable ones."""
        if not bad and not self.carry_paths:
            yield paths, self._flat(rows)                   # the buffer itself
            return
        if self.carry is None:
            self.carry = np.empty((self.batch_size,) + self.item_shape, np.float32)
        for r, path in enumerate(paths):
            if r in bad:
                continue
            self.carry[len(self.carry_paths)] = rows[r]
            self.carry_paths.append(path)
            if len(self.carry_paths) == self.batch_size:
                yield self.carry_paths, self._flat(self.carry)
                self.carry_paths = []

    def rest(self) -> Iterator[tuple[list, np.ndarray]]:
        """The last, shorter batch, if any."""
        if self.carry_paths:
            yield self.carry_paths, self._flat(self.carry[:len(self.carry_paths)])


class PreparedBatches:
    """Iterate ``(paths, inputs)``: up to ``batch_size`` readable images' inputs, an array of
    ``(len(paths) * item_shape[0],) + item_shape[1:]`` float32, valid until the next step.
    ``on_failure(path, reason)`` is called for each unreadable image and ``on_done(count)`` for
    each chunk of images finished, in path order, in the caller's thread. ``cpu_per_image``:
    the CPU seconds ``prepare`` has taken per image so far (the workers' own thread time)."""

    def __init__(self, paths: Sequence, prepare: Callable, item_shape: tuple, batch_size: int,
                 workers: int = 2, depth: int = 3, on_failure: Callable | None = None,
                 on_done: Callable | None = None):
        self.paths = list(paths)
        self.prepare, self.item_shape = prepare, tuple(item_shape)
        self.batch_size = max(1, int(batch_size))
        self.workers, self.depth = max(1, int(workers)), max(1, int(depth))
        self.on_failure, self.on_done = on_failure, on_done
        self.state: _State | None = None

    @property
    def cpu_per_image(self) -> float | None:
        state = self.state
        if state is None or not state.prepared:
            return None
        with state.cond:
            return state.cpu_seconds / state.prepared

    def __iter__(self) -> Iterator[tuple[list, np.ndarray]]:
        paths, item_shape, batch_size = self.paths, self.item_shape, self.batch_size
        on_failure, on_done = self.on_failure, self.on_done
        n = len(paths)
        if n == 0:
            return
        chunks = -(-n // batch_size)
        depth = min(self.depth, chunks)
        buffers = [np.empty((batch_size,) + item_shape, np.float32) for _ in range(depth)]
        state = self.state = _State(n, batch_size, depth)
        threads = [threading.Thread(target=_work, name=f"prepare-{k}", daemon=True,
                                    args=(state, paths, self.prepare, buffers, batch_size))
                   for k in range(min(self.workers, n))]
        state.threads = threads
        background.watch(state)     # a run left unfinished at exit: stopped and joined first
        for t in threads:
            t.start()
        batcher = _Batcher(batch_size, item_shape)
        try:
            for k in range(chunks):
                with state.cond:
                    while state.remaining[k] and state.failure is None:
                        state.cond.wait()
                    if state.failure is not None:
                        raise state.failure
                    errors = {i: state.errors.pop(i) for i in range(k * batch_size,
                              min(n, (k + 1) * batch_size)) if i in state.errors}
                lo, hi = k * batch_size, min(n, (k + 1) * batch_size)
                buf = buffers[k % depth]
                for i in sorted(errors):
                    if on_failure is not None:
                        on_failure(paths[i], errors[i])
                if on_done is not None:
                    on_done(hi - lo)
                yield from batcher.chunk(paths[lo:hi], buf[:hi - lo], {i - lo for i in errors})
                with state.cond:
                    state.released += 1
                    state.cond.notify_all()
            yield from batcher.rest()
        finally:
            with state.cond:
                state.stop = True
                state.cond.notify_all()
            for t in threads:
                t.join()


class PooledBatches:
    """``PreparedBatches`` with the preparing in worker processes (``models.caffe.decode_pool``,
    ``here=False``): the same iteration, batches and callbacks. Each chunk of ``batch_size``
    paths is one batch of the pool, dealt to the workers in shares by their pace, ``depth`` of
    them in flight; the caller's thread only deals and collects. No GIL is shared: with many
    cores the workers' decoding scales with them, where threads, each holding the GIL for the
    Python between its decodes (and the caller's thread needing it between its forwards),
    stopped at about four cores' worth on the 16-core GPU machine.

    The pool's reader gives an unreadable image the label -1 (its row stays zeros) instead of
    raising, which would fail the whole batch; ``reason(path)`` then says why, in the caller's
    thread (an unreadable file is read twice: the rare case pays, not every image)."""

    def __init__(self, paths: Sequence, pool, item_shape: tuple, batch_size: int,
                 reason: Callable, depth: int = 3, on_failure: Callable | None = None,
                 on_done: Callable | None = None):
        self.paths = list(paths)
        self.pool, self.item_shape = pool, tuple(item_shape)
        self.batch_size = max(1, int(batch_size))
        self.depth = max(1, int(depth))
        self.reason, self.on_failure, self.on_done = reason, on_failure, on_done
        self._start = None

    @property
    def cpu_per_image(self) -> float | None:
        """The workers' CPU seconds per image since the first batch (whose replies carry the
        CPU a new worker spent starting: importing numpy and OpenCV)."""
        if self._start is None:
            return None
        rows, cpu = self.pool.worker_cpu()
        rows, cpu = rows - self._start[0], cpu - self._start[1]
        return cpu / rows if rows > 0 else None

    def __iter__(self) -> Iterator[tuple[list, np.ndarray]]:
        paths, item_shape, batch_size, pool = self.paths, self.item_shape, self.batch_size, \
            self.pool
        n = len(paths)
        chunks = -(-n // batch_size)
        in_flight: list = []
        submitted = 0

        def submit():
            nonlocal submitted
            lo, hi = submitted * batch_size, min(n, (submitted + 1) * batch_size)
            jobs = [(i - lo, paths[i], (None, None, None)) for i in range(lo, hi)]
            in_flight.append(pool.submit(jobs, (hi - lo,) + item_shape, item_shape))
            submitted += 1

        batcher = _Batcher(batch_size, item_shape)
        try:
            while submitted < min(self.depth, chunks):
                submit()
            for k in range(chunks):
                data, labels = pool.collect(in_flight.pop(0))
                if k == 0:
                    self._start = pool.worker_cpu()
                if submitted < chunks:
                    submit()
                lo, hi = k * batch_size, min(n, (k + 1) * batch_size)
                bad = [int(r) for r in np.flatnonzero(labels < 0)]
                for r in bad:
                    if self.on_failure is not None:
                        self.on_failure(paths[lo + r], self.reason(paths[lo + r]))
                if self.on_done is not None:
                    self.on_done(hi - lo)
                yield from batcher.chunk(paths[lo:hi], data, set(bad))
                del data
            yield from batcher.rest()
        finally:
            for ticket in in_flight:    # the caller stopped early: let the workers finish
                try:
                    pool.collect(ticket)
                except Exception:       # (a bad row of a batch nobody wants)
                    pass


class ForwardThreads:
    """How many torch threads the forward gets while workers prepare the next batches, measured
    as it runs: a setting on the ladder 1, 2, 4, ... up to torch's own setting ("all").

    The forward and the workers run at the same time on the same cores. A forward on more
    threads than it can have (torch's OpenMP pool) slows down far more than its share when
    decoders or other processes take a core from it (its threads wait for each other: on the
    shared 2-core machine the small net's forward ran 7x slower on two threads than on one
    under load), while on too few it leaves cores idle once the workers keep up (on a
    16-core machine the small net scored at the speed of its one-thread forward, 0.09x of its
    raw forward). So it starts from an estimate and then climbs the ladder by measurement:
      - net-bound (``NET_BOUND``: preparing a batch costs little next to its forward, VGG16's
        ~3 ms of decoding next to ~300 ms of forward an image): all threads;
      - otherwise one thread (from the second batch: the first, on all, warms up), whose
        forward time gives the one-thread cost of an image (f); with p the CPU time preparing
        one takes, the balanced share of the cores is f / (p + f) of them, and the forward
        moves to the ladder's nearest step (on two cores that is one thread: the small net's f
        and p are both ~1 ms);
      - every ``RETRY`` batches (``RETRY_NET_BOUND`` when net-bound) it tries a neighbouring
        step for a batch (one not measured yet first, else up and down in turn) and from then
        on keeps the fastest it has measured (the machine's load changes: under load, VGG16
        too can run faster on one thread than on two).

    ``observe(images, waited, ran, prepare_cpu, first)`` after each batch: the seconds the
    caller waited for it and its forward took, the CPU seconds preparing an image takes, and
    whether it was the first batch of a run (its wait and warm-up are not a rate); returns and
    sets the threads for the next one. "All" is torch's own setting on entering (its default:
    the cores; runtime.threads when set). With ``threads`` given, that many are used
    throughout. Torch's setting is restored on leaving (by the last of jobs that overlap: the
    setting is the process's); what was measured is kept for the next run (a Scorer keeps
    one)."""

    NET_BOUND = 0.1     # preparing a batch costs under this share of its forward: keep all
    RETRY = 16          # batches between tries of a neighbouring setting
    RETRY_NET_BOUND = 64    # the same while net-bound (a one-thread try costs more there)

    def __init__(self, threads: int | None = None):
        self.fixed = int(threads) if threads else None
        self.most = self.current = self.fixed or 1    # set on entering: torch's own setting
        self.ladder = [self.most]
        self.rates: dict[int, float] = {}              # threads -> images per second, last seen
        self.since_try = 0
        self.upward = True                             # the way the next try goes, both known
        self.previous = None
        self._jobs = 0                                 # jobs inside (a scorer's, at once)
        self._entering = threading.Lock()

    def __enter__(self):
        import torch
        with self._entering:
            self._jobs += 1
            if self._jobs > 1:      # a job beside one already running: torch's setting is
                return self         # the process's, the first job's settings stay
            self.previous = torch.get_num_threads()
        most = self.fixed or self.previous
        if most != self.most:
            self.rates.clear()
        self.most = most
        self.ladder = ladder(most)
        self._set(self.current if self.current in self.rates else most)
        return self

    def __exit__(self, *exc):
        import torch
        with self._entering:
            self._jobs -= 1
            if self._jobs == 0:     # the last job out restores what was there before the first
                torch.set_num_threads(self.previous)

    def _set(self, threads: int):
        import torch
        self.current = threads
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)

    def _neighbour(self) -> int:
        """The step to try next: beside the current one, not measured yet first."""
        i = self.ladder.index(self.current)    # (every setting it makes is a step)
        near = [self.ladder[k] for k in (i + 1, i - 1) if 0 <= k < len(self.ladder)]
        unknown = [t for t in near if t not in self.rates]
        if unknown:
            return unknown[0]
        self.upward = not self.upward
        up = [t for t in near if t > self.current]
        down = [t for t in near if t < self.current]
        return (up if self.upward and up else down or up)[0]

    def _balanced(self, images: int, ran: float, prepare_cpu: float | None) -> int:
        """The ladder step nearest the forward's balanced share of the cores, from a batch run
        on one thread; one thread when that cannot be told."""
        if self.current != 1 or not prepare_cpu or images <= 0 or ran <= 0:
            return 1
        f = ran / images
        share = self.most * f / (prepare_cpu + f)
        return min(self.ladder, key=lambda t: abs(math.log2(t) - math.log2(max(1.0, share))))

    def observe(self, images: int, waited: float, ran: float,
                prepare_cpu: float | None = None, first: bool = False) -> int:
        """Account one batch; returns (and sets) the threads for the next forward."""
        if self.fixed or self.most == 1 or images <= 0 or waited + ran <= 0:
            return self.current
        if not first:
            self.rates[self.current] = images / (waited + ran)
        net_bound = prepare_cpu is not None and prepare_cpu * images < self.NET_BOUND * ran
        self.since_try += 1
        if not first and self.since_try >= (self.RETRY_NET_BOUND if net_bound else self.RETRY):
            self.since_try = 0
            want = self._neighbour()                   # try a neighbouring step for a batch
        elif len(self.rates) > 1:
            want = max(self.rates, key=self.rates.get)
        elif net_bound:
            want = self.most
        else:
            want = self._balanced(images, ran, prepare_cpu)
        self._set(want)
        return want


def ladder(most: int) -> list[int]:
    """1, 2, 4, ... below ``most``, then ``most``."""
    steps, t = [], 1
    while t < most:
        steps.append(t)
        t *= 2
    return steps + [max(1, most)]
