"""kill -9 at random moments, then resume: the catalog and the image store end up exactly as
after one uninterrupted run."""
import hashlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from conftest import ROOT
import mastodon_server as ts
from scrape_corpus import HTML, bomb_png, build_two_servers, photo, snapshot, when

TOKEN = "resume-token"
STARTUP = 0.6     # about how long `python -m deepselfie scrape` takes to start here


def _count(data_dir, table) -> int:
    path = data_dir / "catalog.sqlite"
    if not path.exists():
        return 0
    db = sqlite3.connect(path, timeout=30)
    try:
        return db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    except sqlite3.OperationalError:   # killed before the schema was there
        return 0
    finally:
        db.close()


def _wait_for_run(data_dir, runs_before, process, timeout=20.0) -> None:
    """Until the run has started working (its row is in the runs table) or has ended."""
    deadline = time.monotonic() + timeout
    while (_count(data_dir, "runs") <= runs_before and process.poll() is None
           and time.monotonic() < deadline):
        time.sleep(0.02)


def _check_consistent(data_dir) -> None:
    """Right after a kill: the catalog is sound and every image it lists is whole on disk."""
    path = data_dir / "catalog.sqlite"
    if not path.exists():
        return
    db = sqlite3.connect(path, timeout=30)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = db.execute("SELECT sha256, path FROM images").fetchall()
    except sqlite3.OperationalError:   # killed before the schema was there
        rows = []
    finally:
        db.close()
    for sha, rel in rows:
        assert hashlib.sha256((data_dir / rel).read_bytes()).hexdigest() == sha


def _arm_faults(a: ts.MastodonAPIServer) -> None:
    """Faults whose outcome does not depend on where a run was killed: bursts shorter than the
    retries, and permanent ones."""
    a.clear_faults()
    a.fail("/system/media/3.jpg", "500", "503")
    a.fail("/system/media/5.jpg", "reset")
    a.fail("/system/media/7.jpg", "429")
    a.fail(ts.TIMELINE + "selfie", "503", query={"max_id": "110025"})
    a.fail_always("/bad/always503.jpg", "503")
    a.fail_always("/bad/ftp.jpg", "redirect:ftp://elsewhere.example/x.jpg")


def _add_bad_posts(a: ts.MastodonAPIServer) -> None:
    acc = ts.account(a.url, "mallory", followers=77)
    bad = [ts.attachment(a.add_file("/bad/page.jpg", HTML, "text/html")),
           ts.attachment(a.add_file("/bad/bomb.png", bomb_png(), "image/png")),
           ts.attachment(a.add_file("/bad/cut.jpg", photo(50)[:2000])),
           ts.attachment(a.add_file("/bad/always503.jpg", photo(51))),
           ts.attachment(a.add_file("/bad/ftp.jpg", photo(52))),
           ts.attachment(None), ts.attachment(f"{a.url}/bad/clip.mp4", kind="gifv")]
    for k, m in enumerate(bad):
        a.add_status(ts.status(a.url, str(110050 + k), acc, likes=k, tags=["selfie"],
                               created_at=when(40 + k), media=[m]))


def _command(data_dir, a, b):
    return [sys.executable, "-m", "deepselfie", "scrape", "--data-dir", str(data_dir),
            "--server", a.url, "--server", b.url, "--tag", "selfie", "--tag", "me",
            "--concurrency", "3", "--set", "scrape.page_size=4", "--set", "scrape.backoff=0.01",
            "--set", "scrape.retries=4", "--set", "scrape.timeout=5",
            "--set", "scrape.page_interval=0",
            "--set", f'scrape.tokens={{"{b.url}": "{TOKEN}"}}']


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume_equals_an_uninterrupted_run(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT),
                                                        os.environ.get("PYTHONPATH", "")])}
    seed = int(os.environ.get("DS_KILL_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    with ts.MastodonAPIServer(latency=0.02, rate_limit=(200, 2.0)) as a, \
            ts.MastodonAPIServer(flavor="pixelfed", token=TOKEN, latency=0.02) as b:
        build_two_servers(a, b, n_a=30, n_b=12, n_shared=8)
        _add_bad_posts(a)

        _arm_faults(a)
        t0 = time.monotonic()
        done = subprocess.run(_command(tmp_path / "whole", a, b), env=env, capture_output=True,
                              text=True, timeout=300)
        whole_seconds = time.monotonic() - t0
        assert done.returncode == 0, done.stderr
        total = _count(tmp_path / "whole", "downloads")

        _arm_faults(a)
        kills = []
        for i in range(10):
            runs_before = _count(tmp_path / "killed", "runs")
            left = 1 - _count(tmp_path / "killed", "downloads") / total
            p = subprocess.Popen(_command(tmp_path / "killed", a, b), env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if i % 5 == 4:    # now and then while it is still starting up
                time.sleep(rng.uniform(0.05, STARTUP))
            else:   # else at a random moment in the next sixth of the work
                _wait_for_run(tmp_path / "killed", runs_before, p)
                time.sleep(rng.uniform(0, max(0.1, (whole_seconds - STARTUP) / 6)))
            p.send_signal(signal.SIGKILL)
            p.wait()
            kills.append((i, round(left, 2), p.returncode))
            _check_consistent(tmp_path / "killed")
        last = subprocess.run(_command(tmp_path / "killed", a, b), env=env,
                              capture_output=True, text=True, timeout=300)
        assert last.returncode == 0, last.stderr

    killed_midway = sum(rc == -signal.SIGKILL for _, _, rc in kills)
    assert killed_midway >= 5, f"seed {seed}: most kills came too late: {kills}"
    whole, resumed = snapshot(tmp_path / "whole"), snapshot(tmp_path / "killed")
    for table in whole:
        assert resumed[table] == whole[table], f"seed {seed}, kills {kills}: {table} differs"
    # the store holds exactly the catalog's images, each complete, and no temporary files
    files = {path for path, _ in resumed["files"]}
    assert files == {row[1] for row in resumed["images"]}
    assert all(path.split("/")[-1].split(".")[0] == sha for path, sha in resumed["files"])
    assert not list((tmp_path / "killed" / "images" / ".tmp").iterdir())
    statuses = {row[1] for row in resumed["downloads"]}
    assert statuses == {"ok", "skipped", "failed"} and len(resumed["posts"]) == 30 + 12 + 7
