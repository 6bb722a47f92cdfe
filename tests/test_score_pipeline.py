"""The pipelined scorer (worker threads, or worker processes, preparing images into batch
buffers while the net runs) gives exactly what reading and preparing the same files one at a
time gives: the same scores, the same unreadable files with the same reasons, in path order; it
stops its workers when the caller stops early and passes a worker's unexpected error (or death)
on; torch's thread setting is restored, and the forward's threads climb to the fastest step."""
import os
import pathlib
import signal
import threading

import numpy as np
import pytest
import torch
from PIL import Image

import models.caffe as caffe
from conftest import process_alive
from deepselfie.errors import UserError
from models.selfie.pipeline import ForwardThreads, PreparedBatches
from models.selfie.score import Scorer, UnreadableImage, load_bgr

ROOT = pathlib.Path(__file__).resolve().parents[1]
SMALL = ROOT / "prototxt" / "selfie_small_deploy.prototxt"


@pytest.fixture(scope="module")
def small_weights(tmp_path_factory):
    """The small selfie net with its fillers' weights (msra / gaussian), seeded."""
    caffe.set_random_seed(7)
    out = tmp_path_factory.mktemp("weights") / "small.caffemodel"
    caffe.Net(str(SMALL), caffe.TEST).save(str(out))
    return out


def make_folder(folder: pathlib.Path, n: int = 23) -> list[pathlib.Path]:
    """n files, mostly photos (JPEG and PNG, several sizes), with unreadable ones at the start,
    in the middle (two in a row, one at a batch edge) and at the end."""
    folder.mkdir()
    rs = np.random.RandomState(3)
    bad = {0: b"", 6: b"<html><body>not a photo</body></html>", 7: None, 12: "truncated",
           n - 1: b"\xff\xd8\xff\xe0 broken"}
    paths = []
    for i in range(n):
        h, w = 48 + 9 * (i % 5), 64 + 11 * (i % 7)
        yy, xx = np.mgrid[0:h, 0:w]
        arr = np.clip(rs.randint(0, 255, 3)[None, None] + (xx - yy)[:, :, None] * 0.8
                      + rs.normal(0, 10, (h, w, 3)), 0, 255).astype(np.uint8)
        p = folder / f"f{i:02d}.{'png' if i % 3 == 1 else 'jpg'}"
        if i not in bad:
            Image.fromarray(arr).save(p)
        elif bad[i] == "truncated":
            Image.fromarray(arr).save(p, "JPEG", quality=90)
            p.write_bytes(p.read_bytes()[:200])
        elif bad[i] is not None:         # None: a path that does not exist
            p.write_bytes(bad[i])
        paths.append(p)
    return paths


def one_at_a_time(scorer: Scorer, paths):
    """Each file read and prepared alone, in order, in this thread; the readable ones' inputs
    run through the net batch_size at a time in path order (the net's numbers for a row may
    differ in the last bit between batch sizes): {path: score}, [(path, reason)]."""
    inputs, failed = [], []
    for p in paths:
        try:
            inputs.append((p, scorer.pre(load_bgr(p))))
        except UnreadableImage as e:
            failed.append((p, str(e)))
    scores = {}
    for k in range(0, len(inputs), scorer.batch_size):
        chunk = inputs[k:k + scorer.batch_size]
        values = scorer.score_arrays(np.concatenate([a for _, a in chunk]))
        scores.update(zip([p for p, _ in chunk], values.tolist()))
    return scores, failed


@pytest.mark.parametrize("resize,batch_size,workers,threads,prepare", [
    ("squash", 4, 3, None, "threads"), ("squash", 1, 2, 1, "threads"),
    ("oversample", 3, 2, None, "processes"),      # ten inputs an image: threads all the same
    ("squash", 32, 4, 2, "threads"), ("squash", 4, 3, None, "processes"),
    ("crop", 5, 2, 1, "processes"), ("squash", 1, 1, None, "processes")])
def test_pipelined_scores_equal_one_at_a_time(tmp_path, small_weights, resize, batch_size,
                                              workers, threads, prepare):
    paths = make_folder(tmp_path / "imgs")
    scorer = Scorer(SMALL, small_weights, mean="104,117,123", scale=0.0078125, resize=resize,
                    batch_size=batch_size, workers=workers, threads=threads, prepare=prepare)
    assert scorer.uses_processes(len(paths)) == (prepare == "processes" and resize != "oversample")
    results, failed = scorer.score_paths(paths, show_progress=False)
    scorer.close()
    expected, expected_failed = one_at_a_time(scorer, paths)
    assert [p.name for p, _ in failed] == ["f00.jpg", "f06.jpg", "f07.png", "f12.jpg",
                                           "f22.png"]
    assert failed == expected_failed                       # same files, reasons, order
    assert len(results) == len(expected) == len(paths) - 5
    assert {p: s for p, s in results} == expected          # exactly the same numbers
    for p, arrays in ((p, scorer.pre(load_bgr(p))) for p in list(expected)[:4]):
        alone = float(scorer.score_arrays(arrays)[0])      # a batch of one: the same to ~1 ulp
        assert alone == pytest.approx(expected[p], rel=1e-5, abs=1e-6)
    assert [s for _, s in results] == sorted((s for _, s in results), reverse=True)
    assert len(set(expected.values())) > 10               # the net tells the images apart


@pytest.mark.parametrize("prepare", ["threads", "processes"])
def test_batches_keep_consecutive_readable_images(tmp_path, small_weights, prepare):
    """Batches are batch_size consecutive readable files, as before the pipeline; a batch after
    an unreadable file is assembled by copying and holds the right rows."""
    paths = make_folder(tmp_path / "imgs", n=15)
    scorer = Scorer(SMALL, small_weights, mean="104,117,123", resize="squash", batch_size=4,
                    workers=2, prepare=prepare)
    readable = [p for p in paths if p.name not in {"f00.jpg", "f06.jpg", "f07.png", "f12.jpg",
                                                   "f14.jpg"}]
    seen = []
    for batch_paths, inputs in scorer.iter_batches(paths, show_progress=False):
        assert inputs.shape == (len(batch_paths), 3, 64, 64) and inputs.dtype == np.float32
        for p, row in zip(batch_paths, inputs):
            assert np.array_equal(row, scorer.pre(load_bgr(p))[0])
        seen.append(list(batch_paths))
    flat = [p for b in seen for p in b]
    assert flat == readable
    assert [len(b) for b in seen] == [4, 4, 2]
    assert [p.name for p, _ in scorer.failed] == ["f00.jpg", "f06.jpg", "f07.png", "f12.jpg",
                                                  "f14.jpg"]


def _prepare_threads():
    return [t for t in threading.enumerate() if t.name.startswith("prepare-")]


def test_stopping_early_stops_the_workers(tmp_path, small_weights):
    paths = make_folder(tmp_path / "imgs", n=23)
    scorer = Scorer(SMALL, small_weights, mean="104,117,123", batch_size=2, workers=3)
    before = torch.get_num_threads()
    batches = scorer.iter_batches(paths, show_progress=False)
    next(batches)
    assert _prepare_threads()
    batches.close()
    assert not _prepare_threads()
    assert torch.get_num_threads() == before


def test_a_workers_unexpected_error_reaches_the_caller():
    calls = []

    def prepare(path, out):
        calls.append(path)
        if path == 5:
            raise RuntimeError("a bug in prepare")
        out[...] = path
        return None

    seen = []
    with pytest.raises(RuntimeError, match="a bug in prepare"):
        for batch_paths, inputs in PreparedBatches(range(40), prepare, (1, 1, 2, 2), 2,
                                                   workers=2, depth=2):
            seen.extend(batch_paths)
            assert [int(v) for v in inputs[:, 0, 0, 0]] == list(batch_paths)
    assert 5 not in seen and not _prepare_threads()
    assert len(calls) < 40       # the workers stopped instead of preparing every item


def test_ring_of_buffers_bounds_how_far_workers_run_ahead():
    """With depth buffers of batch_size rows, the workers never prepare more than depth chunks
    beyond what the caller has finished."""
    started = []
    lock = threading.Lock()

    def prepare(i, out):
        with lock:
            started.append(i)
        out[...] = i
        return "odd" if i % 7 == 3 else None

    failures, done = [], []
    pipeline = PreparedBatches(range(50), prepare, (1, 1, 1, 1), 4, workers=3, depth=2,
                               on_failure=lambda p, r: failures.append(p),
                               on_done=done.append)
    got = []
    for k, (batch_paths, inputs) in enumerate(pipeline):
        with lock:
            ahead = max(started)
        finished = sum(done)               # chunks handed to the caller so far, in images
        assert ahead < finished + 4        # at most the next chunk's buffer being filled
        assert [int(v) for v in inputs.ravel()] == list(batch_paths)
        got.extend(batch_paths)
    assert failures == [i for i in range(50) if i % 7 == 3]
    assert got == [i for i in range(50) if i % 7 != 3] and sum(done) == 50
    assert pipeline.cpu_per_image is not None and pipeline.cpu_per_image >= 0


def test_workers_prepare_the_next_batches_while_the_caller_runs_one():
    """While the caller holds a batch (its forward running), the workers fill the other
    buffers of the ring: the next two chunks get prepared before the caller moves on."""
    progress = threading.Condition()
    prepared = []

    def prepare(i, out):
        out[...] = i
        with progress:
            prepared.append(i)
            progress.notify_all()

    pipeline = PreparedBatches(range(20), prepare, (1, 1, 1, 1), 4, workers=2, depth=3)
    for k, (batch_paths, _) in enumerate(pipeline):
        if k == 0:
            with progress:      # (the timeout only keeps a broken pipeline from hanging)
                assert progress.wait_for(lambda: len(prepared) >= 12, timeout=60)
            assert sorted(prepared) == list(range(12))      # and not a chunk further
    assert sorted(prepared) == list(range(20))


def test_forward_threads_picks_the_faster_setting():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with ForwardThreads() as ft:
            assert torch.get_num_threads() == 2
            # net-bound (preparing costs ~1% of the forward): every thread stays with the net
            assert ft.observe(8, 0.01, 2.0, prepare_cpu=0.003, first=True) == 2
            for _ in range(ForwardThreads.RETRY_NET_BOUND - 2):
                assert ft.observe(8, 0.0, 2.0, prepare_cpu=0.003) == 2
            assert ft.observe(8, 0.0, 2.0, prepare_cpu=0.003) == 1          # tried, rarely
            assert ft.observe(8, 0.0, 3.0, prepare_cpu=0.003) == 2          # and slower
        with ForwardThreads() as ft:
            # decode-bound: one thread from the second batch on
            assert ft.observe(32, 0.05, 0.2, prepare_cpu=0.002, first=True) == 1
            assert torch.get_num_threads() == 1
            for _ in range(ForwardThreads.RETRY - 2):
                assert ft.observe(32, 0.03, 0.07, prepare_cpu=0.002) == 1
            # then all threads are tried for a batch, and the faster kept
            assert ft.observe(32, 0.03, 0.07, prepare_cpu=0.002) == 2
            assert ft.observe(32, 0.0, 0.5, prepare_cpu=0.002) == 1         # two was slower
            ft.rates[2] = 1e6                                               # now two is faster
            assert ft.observe(32, 0.03, 0.07, prepare_cpu=0.002) == 2
        assert torch.get_num_threads() == 2
        with ft:                             # a new run starts from what was learnt
            assert torch.get_num_threads() == 2 and ft.rates
        with ForwardThreads(threads=1) as ft:
            assert torch.get_num_threads() == 1
            assert ft.observe(32, 1.0, 0.01, prepare_cpu=0.01) == 1
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_forward_threads_climbs_to_the_best_step_on_many_cores():
    """A simulated 16-core machine scoring a decode-heavy net: preparing an image costs 2 ms of
    CPU on the cores the forward leaves free (8 workers at most), the forward 1 ms of CPU on
    one thread and scales with threads at 80% efficiency. The best step is 8 threads; 1 (the
    old choice between one and all) gives a third of its speed, 16 half."""
    cores, workers, prep, fwd1, batch = 16, 8, 0.002, 0.001, 32

    def batch_seconds(t):
        free = max(1, min(workers, cores - t))
        forward = batch * fwd1 / (t * 0.8 if t > 1 else 1)
        return forward, max(0.0, batch * prep / free - forward)      # (ran, waited)

    before = torch.get_num_threads()
    torch.set_num_threads(cores)
    try:
        with ForwardThreads() as ft:
            assert ft.ladder == [1, 2, 4, 8, 16]
            ran, waited = batch_seconds(cores)
            t = ft.observe(batch, waited, ran, prepare_cpu=prep, first=True)
            assert t == 1                           # decode-bound: one thread to measure on
            used = []
            for _ in range(200):
                ran, waited = batch_seconds(t)
                used.append(t)
                t = ft.observe(batch, waited, ran, prepare_cpu=prep)
            assert used[1] in (4, 8)                # the balanced estimate, from one batch
            assert t == 8 and set(ft.rates) >= {4, 8, 16}
            # tries aside, the batches ran on the best step
            assert sum(u == 8 for u in used) > 0.85 * len(used)
            rate = {u: batch / sum(batch_seconds(u)) for u in (1, 8, 16)}
            assert rate[8] > 2.5 * rate[1] and rate[8] > 1.5 * rate[16]
    finally:
        torch.set_num_threads(before)


def test_forward_threads_ladder():
    from models.selfie.pipeline import ladder
    assert ladder(1) == [1] and ladder(2) == [1, 2] and ladder(6) == [1, 2, 4, 6]
    assert ladder(16) == [1, 2, 4, 8, 16]


def test_worker_processes_are_kept_between_jobs_and_end_with_close(tmp_path, small_weights):
    paths = make_folder(tmp_path / "imgs", n=23)
    scorer = Scorer(SMALL, small_weights, mean="104,117,123", batch_size=4, workers=2,
                    prepare="processes")
    first = scorer.score_paths(paths, show_progress=False)
    pids = scorer._pool.worker_pids()
    assert len(pids) == 2 and all(process_alive(p) for p in pids)
    # stopping after one batch leaves the pool in step: the next job is whole and the same
    batches = scorer.iter_batches(paths, show_progress=False)
    next(batches)
    batches.close()
    assert scorer.score_paths(paths, show_progress=False) == first
    assert scorer._pool.worker_pids() == pids                  # the same processes
    scorer.close()
    assert not any(process_alive(p) for p in pids)


def test_a_killed_worker_process_is_one_clear_error(tmp_path, small_weights):
    paths = make_folder(tmp_path / "imgs", n=23)
    scorer = Scorer(SMALL, small_weights, mean="104,117,123", batch_size=4, workers=2,
                    prepare="processes")
    scorer.score_paths(paths[:4], show_progress=False)
    victim = scorer._pool.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    with pytest.raises(RuntimeError, match="ended unexpectedly"):
        scorer.score_paths(paths, show_progress=False)
    assert not process_alive(victim) and scorer._pool is None     # the broken pool was let go
    # the next job starts a new pool: scoring works again
    results, failed = scorer.score_paths(paths, show_progress=False)
    assert len(results) == 18 and len(failed) == 5
    scorer.close()


def test_auto_prepares_in_threads_for_a_net_on_the_cpu(small_weights):
    from models.selfie.score import PROCESS_MIN_IMAGES, PROCESS_MIN_WORKERS
    auto = Scorer(SMALL, small_weights, mean="104,117,123", workers=4 * PROCESS_MIN_WORKERS)
    assert auto.net.device.type == "cpu"
    assert not auto.uses_processes(100 * PROCESS_MIN_IMAGES)     # the forward wants the cores
    asked = Scorer(SMALL, small_weights, mean="104,117,123", prepare="processes")
    assert asked.uses_processes(1)
    ten = Scorer(SMALL, small_weights, mean="104,117,123", resize="oversample",
                 workers=PROCESS_MIN_WORKERS, prepare="processes")
    assert not ten.uses_processes(10 * PROCESS_MIN_IMAGES)       # ten inputs an image
    with pytest.raises(UserError, match="score.prepare"):
        Scorer(SMALL, small_weights, mean="104,117,123", prepare="fork")


@pytest.mark.gpu
def test_a_gpu_net_prepares_large_jobs_in_processes_and_scores_as_the_cpu(tmp_path, small_weights):
    from models.selfie.score import PROCESS_MIN_IMAGES, PROCESS_MIN_WORKERS
    gpu = Scorer(SMALL, small_weights, mean="104,117,123", batch_size=4, device="cuda",
                 workers=PROCESS_MIN_WORKERS)
    assert gpu.uses_processes(PROCESS_MIN_IMAGES)
    assert not gpu.uses_processes(PROCESS_MIN_IMAGES - 1)        # a start is not paid back
    few = Scorer(SMALL, small_weights, mean="104,117,123", device="cuda",
                 workers=PROCESS_MIN_WORKERS - 1)
    assert not few.uses_processes(10 * PROCESS_MIN_IMAGES)
    paths = make_folder(tmp_path / "imgs")
    gpu.prepare = "processes"
    on_gpu, gpu_failed = gpu.score_paths(paths, show_progress=False)
    gpu.close()
    cpu = Scorer(SMALL, small_weights, mean="104,117,123", batch_size=4, prepare="threads")
    on_cpu, cpu_failed = cpu.score_paths(paths, show_progress=False)
    assert gpu_failed == cpu_failed and len(on_gpu) == len(on_cpu) == len(paths) - 5
    cpu_scores = dict(on_cpu)
    assert max(abs(s - cpu_scores[p]) for p, s in on_gpu) < 1e-5


@pytest.mark.parametrize("prepare", ["threads", "processes"])
def test_a_decompression_bomb_is_skipped_with_its_reason(tmp_path, small_weights, prepare):
    """A stranger's PNG whose header claims 30000 x 30000 pixels: nothing is decoded, in a worker
    process as in a thread; the file is skipped with the reason and the rest are scored."""
    from tests.scrape_corpus import bomb_png
    paths = make_folder(tmp_path / "imgs", n=9)
    bomb = tmp_path / "imgs" / "f04.png"
    bomb.write_bytes(bomb_png())
    scorer = Scorer(SMALL, small_weights, mean="104,117,123", batch_size=4, workers=2,
                    prepare=prepare)
    results, failed = scorer.score_paths(paths, show_progress=False)
    scorer.close()
    reasons = dict(failed)
    assert "too many pixels" in reasons[bomb]
    assert len(results) == len(paths) - len(failed) and len(failed) == 5


def test_a_job_beside_a_pooled_one_prepares_in_threads(tmp_path, small_weights):
    """Two jobs of one scorer at once (two threads): the pool serves one, the other prepares in
    threads; both give the right scores."""
    paths = make_folder(tmp_path / "imgs", n=23)
    scorer = Scorer(SMALL, small_weights, mean="104,117,123", batch_size=4, workers=2,
                    prepare="processes")
    before = torch.get_num_threads()
    alone = scorer.score_paths(paths, show_progress=False)
    first = scorer.iter_batches(paths, show_progress=False)
    next(first)                                   # the first job holds the pool
    pool = scorer._pool
    second = scorer.score_paths(paths, show_progress=False)
    assert second == alone and scorer._pool is pool
    assert _prepare_threads() == []              # (its threads were joined)
    rest = [p for batch_paths, _ in first for p in batch_paths]
    assert len(rest) == 18 - 4
    assert torch.get_num_threads() == before     # the two jobs' thread settings undone
    assert scorer.score_paths(paths, show_progress=False) == alone      # the pool again
    scorer.close()


def test_a_hostile_file_name_reaches_the_worker_processes_intact(tmp_path, small_weights):
    """A stranger's file name with a byte that is not UTF-8 and a newline: it goes to a worker
    process (pickled) and back as the same path, scored as in a thread."""
    paths = make_folder(tmp_path / "imgs", n=6)
    odd = os.fsdecode(os.fsencode(str(tmp_path / "imgs")) + b"/odd\xff\nname.jpg")
    pathlib.Path(odd).write_bytes(paths[2].read_bytes())
    paths.append(pathlib.Path(odd))
    scores = {}
    for prepare in ("threads", "processes"):
        scorer = Scorer(SMALL, small_weights, mean="104,117,123", batch_size=2, workers=2,
                        prepare=prepare)
        results, failed = scorer.score_paths(paths, show_progress=False)
        scorer.close()
        scores[prepare] = dict(results)
        assert [p.name for p, _ in failed] == ["f00.jpg", "f05.jpg"]
    assert scores["threads"] == scores["processes"]
    same = scores["processes"][paths[2]]            # (another batch: equal to ~1 ulp)
    assert scores["processes"][pathlib.Path(odd)] == pytest.approx(same, rel=1e-5)
