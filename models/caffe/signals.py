"""What SIGINT and SIGHUP do to a running solver, as the caffe tool's -sigint_effect and
-sighup_effect: "stop" (finish the iteration, then stop; the solver's snapshot_after_train then
writes a snapshot), "snapshot" (write a snapshot and go on) or "none". Caffe's defaults: SIGINT
stops, SIGHUP snapshots.

The handler only records that a signal came; the solver asks ``requested_action()`` between
iterations (and between test batches). A second SIGINT before the first was acted on stops at
once (KeyboardInterrupt), for when an iteration takes too long to wait for.
"""
from __future__ import annotations

import signal
import threading

from .errors import CaffeError

EFFECTS = ("stop", "snapshot", "none")


def check_effect(effect: str, option: str) -> str:
    if effect not in EFFECTS:
        raise CaffeError(f"must be one of {', '.join(EFFECTS)}, not {effect!r}", field=option)
    return effect


class SignalHandler:
    """Install with ``with SignalHandler("stop", "snapshot") as h: solver.set_action_function(
    h.requested_action)``; the previous handlers come back on exit."""

    def __init__(self, sigint_effect: str = "stop", sighup_effect: str = "snapshot"):
        self.sigint_effect = check_effect(sigint_effect, "sigint_effect")
        self.sighup_effect = check_effect(sighup_effect, "sighup_effect")
        self._got_sigint = False
        self._got_sighup = False
        self._old = {}

    def _on_sigint(self, signum, frame):
        if self._got_sigint and self.sigint_effect != "none":
            raise KeyboardInterrupt
        self._got_sigint = True

    def _on_sighup(self, signum, frame):
        self._got_sighup = True

    def __enter__(self):
        if threading.current_thread() is not threading.main_thread():
            return self                # Python delivers signals to the main thread only
        self._old[signal.SIGINT] = signal.signal(signal.SIGINT, self._on_sigint)
        if hasattr(signal, "SIGHUP"):
            self._old[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._on_sighup)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old.clear()
        return False

    def requested_action(self) -> str:
        """"stop", "snapshot" or "none", consuming the signal (SIGHUP first, as Caffe)."""
        if self._got_sighup:
            self._got_sighup = False
            return self.sighup_effect
        if self._got_sigint:
            self._got_sigint = False
            return self.sigint_effect
        return "none"
