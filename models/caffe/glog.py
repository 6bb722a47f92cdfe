"""Caffe's log lines in glog's classic format, so tools that parse Caffe logs read ours:

    I1129 17:25:44.560498 18045 solver.cpp:289] Iteration 10, loss = 1.0986

Quiet by default (like pycaffe); ``deepselfie train`` turns it on for stderr and a log file (like
the ``caffe`` tool). The source location names Caffe's file for the same message.
"""
from __future__ import annotations

import datetime as dt
import sys
import threading

_streams: list = []
_lock = threading.Lock()


def log_to(*streams) -> None:
    """Send log lines to these streams (none: silence)."""
    _streams[:] = [s for s in streams if s is not None]


def add_stream(stream) -> None:
    if stream not in _streams:
        _streams.append(stream)


def remove_stream(stream) -> None:
    if stream in _streams:
        _streams.remove(stream)


def enabled() -> bool:
    return bool(_streams)


def format_line(severity: str, where: str, message: str, now=None) -> str:
    now = now or dt.datetime.now()
    tid = threading.get_native_id()
    return f"{severity}{now:%m%d %H:%M:%S}.{now.microsecond:06d} {tid:>5} {where}] {message}"


def _emit(severity, where, message):
    if not _streams:
        return
    lines = message.split("\n")
    text = format_line(severity, where, lines[0]) + "".join("\n" + l for l in lines[1:]) + "\n"
    with _lock:
        for s in _streams:
            s.write(text)
            s.flush()


def info(where: str, message: str) -> None:
    _emit("I", where, message)


def warning(where: str, message: str) -> None:
    _emit("W", where, message)


def error(where: str, message: str) -> None:
    _emit("E", where, message)


def stderr() -> None:
    """Log to stderr, as the caffe tool does."""
    add_stream(sys.stderr)
