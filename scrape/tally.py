"""A thread-safe tally of what a run did, with the reasons: the stage's summary line and JSON."""
from __future__ import annotations

import threading
from collections import Counter, defaultdict


class Tally:
    def __init__(self):
        self._lock = threading.Lock()
        self.counts: Counter = Counter()
        self.reasons: dict[str, Counter] = defaultdict(Counter)

    def add(self, what: str, reason: str | None = None, n: int = 1) -> None:
        with self._lock:
            self.counts[what] += n
            if reason:
                self.reasons[what][reason] += n

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
