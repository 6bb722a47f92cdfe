"""A thread-safe tally of what a run did, with the reasons: the stage's summary line and JSON.

Reasons are counted by kind (their numbers left out), so a summary stays one short line however
many images a run skipped; the catalog's downloads table keeps each full reason."""
from __future__ import annotations

import re
import threading
from collections import Counter, defaultdict


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
