"""What a stage run did: counters with their reasons, the run's clock and its outcome.

``with catalog.run(stage, args) as run:`` (deepselfie.catalog) hands a stage a ``StageRun``; the
stage counts into it (``run.add("images_kept")``, ``run.add("images_skipped", reason)``) and the
catalog records ``run.summary()`` in its runs table when the block ends, as done, failed or
interrupted. Reasons are counted by kind (their numbers left out), so a summary stays one short
line however many images a run skipped; the catalog's downloads table keeps each full reason.
"""
from __future__ import annotations

import contextlib
import re
import threading
import time
from collections import Counter, defaultdict

from deepselfie.console import summary

# The keys every run's summary has beside its counters.
STATUS = "status"       # running, done, failed or interrupted
SECONDS = "seconds"     # wall-clock time of the run
ERROR = "error"         # why it failed (only then)

_DETAIL = re.compile(r"\s*\((?=[^()]*\d)[^()]*\)")


def reason_kind(reason: str) -> str:
    """A reason without its numbers, to count alike reasons together:
    'too small (40x30, min side 128)' -> 'too small'; 'http 503 (gave up after 5 tries)' ->
    'http 503'; 'not an image (gifv)' stays."""
    while True:
        shorter = _DETAIL.sub("", reason)
        if shorter == reason:
            return reason
        reason = shorter


class Tally:
    """Thread-safe counts by name, each with a count of its reasons by kind."""

    def __init__(self):
        self._lock = threading.Lock()
        self.counts: Counter = Counter()
        self.reasons: dict[str, Counter] = defaultdict(Counter)

    def add(self, what: str, reason: str | None = None, n: int = 1) -> None:
        with self._lock:
            self.counts[what] += n
            if reason:
                self.reasons[what][reason_kind(reason)] += n

    def __getitem__(self, what: str) -> int:
        return self.counts[what]

    def as_dict(self) -> dict:
        with self._lock:
            return {what: {"count": n, "reasons": dict(self.reasons[what].most_common())}
                    if self.reasons.get(what) else n
                    for what, n in self.counts.items()}

    def describe(self, what: str, label: str | None = None) -> str | None:
        """'12 images skipped (not an image (gifv) 3, too small 2, ...)'; None when zero."""
        n = self.counts.get(what, 0)
        if not n:
            return None
        reasons = self.reasons.get(what)
        detail = ""
        if reasons:
            detail = " (" + ", ".join(f"{r}: {k}" for r, k in reasons.most_common()) + ")"
        return f"{n} {label or what}{detail}"


class StageRun:
    """One run of a stage, as the catalog's runs table records it.

    ``tally`` holds the counters; ``details`` whatever else the stage wants in its recorded
    summary (label's plan, say); ``status`` is running until the ``with`` block ends, then done,
    failed or interrupted (Ctrl-C); ``error`` is why it failed.
    """

    def __init__(self, run_id: int, stage: str):
        self.id = run_id
        self.stage = stage
        self.tally = Tally()
        self.details: dict = {}
        self.status = "running"
        self.error: str | None = None
        self._started = time.monotonic()
        self._ended: float | None = None

    def add(self, what: str, reason: str | None = None, n: int = 1) -> None:
        self.tally.add(what, reason, n)

    def __getitem__(self, what: str) -> int:
        return self.tally[what]

    def end(self, status: str, error: str | None = None) -> None:
        """The run is over (done, failed or interrupted): its clock stops."""
        self.status, self.error = status, error
        self._ended = time.monotonic()

    @property
    def seconds(self) -> float:
        """Seconds the run took (so far, while it runs)."""
        return round((self._ended or time.monotonic()) - self._started, 3)

    def summary(self) -> dict:
        """What the runs table records: status, seconds, the counters, the details, the error."""
        out = {STATUS: self.status, SECONDS: self.seconds, **self.tally.as_dict(),
               **self.details}
        if self.error is not None:
            out[ERROR] = self.error
        return out


@contextlib.contextmanager
def closing_line(run_block, describe):
    """``with closing_line(catalog.run(stage, args), describe) as run:`` prints the stage's one
    closing line, ``describe(run)``, when the block ends done or interrupted (a stage that was
    cut short keeps what it finished, so the line says that a rerun goes on); a failed run
    prints none, its error says what happened."""
    run = None
    try:
        with run_block as run:
            yield run
    finally:
        if run is not None and run.status in ("done", "interrupted"):
            note = "" if run.status == "done" else f" ({run.status}: run again to go on)"
            summary(run.stage, describe(run) + note)
