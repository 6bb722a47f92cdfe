"""Background threads that must be stopped before the interpreter finalizes.

The data layers' prefetch threads (``prefetch.Prefetcher``), the scorer's preparing threads
(``models.selfie.pipeline``) and the web server's request threads (``deepselfie.serve``) are
daemon threads that spend their time in OpenCV's and torch's C++ code. When the process exits while one of them is in there, the interpreter finalizes,
and the thread, as it takes the GIL back, is ended by unwinding its stack through C++ frames
that cannot be unwound: the process aborts ("terminate called without an active exception",
exit status 134). Any script that ended right after one forward of a TRAIN net did.

So each owner of such threads is ``watch``-ed, and at exit (an ``atexit`` hook, which runs
while daemon threads still can) every one still alive is told to stop (``_stop_for_exit()``:
set its stop flag, return its threads) and the threads are joined, ``EXIT_JOIN_S`` in all.
Their loops check ``exiting()`` between two images, so they end within one image's work (a
request thread finishes its request).
"""
from __future__ import annotations

import atexit
import time
import weakref

EXIT_JOIN_S = 10.0
_owners: weakref.WeakSet = weakref.WeakSet()
_exiting = False


def watch(owner) -> None:
    """Stop ``owner`` (it has ``_stop_for_exit() -> threads``) and join its threads at exit."""
    _owners.add(owner)


def exiting() -> bool:
    """Whether the process is exiting (background loops stop at their next item)."""
    return _exiting


@atexit.register
def _stop_all() -> None:
    global _exiting
    _exiting = True
    threads = []
    for owner in list(_owners):
        threads.extend(owner._stop_for_exit())
    deadline = time.monotonic() + EXIT_JOIN_S
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
