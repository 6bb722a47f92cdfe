"""Writing files so that nothing half-written is ever seen: write a temporary file in the same
folder, then rename it over the target (atomic on POSIX). A failure leaves the old file as it
was and no temporary behind. The runtime writes its snapshots and training metrics through
these, and every stage of the application its outputs (deepselfie.files re-exports them)."""
from __future__ import annotations

import contextlib
import os
import pathlib
import tempfile


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path, *, fsync: bool = False):
    """``with atomic_path(out) as tmp: writer(tmp)`` — the target appears only on success.
    The temporary keeps the target's suffix (so writers that look at it pick the format)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f"{path.suffix}.part"
                               if not path.suffix else f".part{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        yield pathlib.Path(tmp)
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())          # mkstemp makes 0600; give the usual mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write(path, data, *, fsync: bool = False) -> pathlib.Path:
    """Write bytes or text (UTF-8) to ``path`` atomically; returns the path."""
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return pathlib.Path(path)


@contextlib.contextmanager
def atomic_open(path, mode: str = "w", **kw):
    """``with atomic_open(out, "w", newline="") as f: ...`` — an open file that becomes
    ``path`` when the block ends without an error."""
    with atomic_path(path) as tmp, open(tmp, mode, **({"encoding": "utf-8"} | kw)
                                        if "b" not in mode else kw) as f:
        yield f
