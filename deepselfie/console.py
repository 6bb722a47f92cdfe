"""What every stage prints: log lines, progress bars and the closing summary line.

Progress bars go to stderr and show themselves only on a terminal (or when
DEEPSELFIE_PROGRESS=1); summaries go to stdout so that scripts can capture them.
"""
from __future__ import annotations

import logging
import os
import sys

from tqdm import tqdm

log = logging.getLogger("deepselfie")


class _StderrNow(logging.StreamHandler):
    """A handler writing to whatever sys.stderr is when a record comes (a caller that runs
    main() in process and swaps sys.stderr between runs must not leave it a closed stream)."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def setup_logging(verbose: int = 0, quiet: bool = False) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    root = logging.getLogger("deepselfie")
    if not root.handlers:
        handler = _StderrNow()
        handler.setFormatter(logging.Formatter("%(levelname).1s %(asctime)s %(name)s] %(message)s",
                                               "%H:%M:%S"))
        root.addHandler(handler)
    root.setLevel(level)


def get_logger(name: str) -> logging.Logger:
    """A child of the project logger: get_logger("scrape") logs as deepselfie.scrape."""
    return log.getChild(name)


def _progress_enabled() -> bool | None:
    env = os.environ.get("DEEPSELFIE_PROGRESS")
    if env is not None:
        return env not in ("0", "", "false", "no")
    return sys.stderr.isatty()


def progress(iterable=None, *, total=None, desc: str = "", unit: str = "it", **kw) -> tqdm:
    """A tqdm bar with rate and ETA on stderr; silent when stderr is not a terminal."""
    return tqdm(iterable, total=total, desc=desc, unit=unit, file=sys.stderr,
                disable=not _progress_enabled(), dynamic_ncols=True, **kw)


def summary(stage: str, text: str) -> None:
    """The one closing line of a stage: ``<stage>: <text>`` on stdout."""
    print(f"{stage}: {text}", flush=True)
