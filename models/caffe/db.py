"""Caffe's record databases: LMDB (and LevelDB through plyvel), read the way Caffe's data layers
read them, and Caffe's LMDB writer (``LMDBWriter``; ``write_lmdb`` for a whole database at once).

``open_db(source, backend, where)`` checks the database (it exists, it is one, it holds records)
and returns a reader: ``len(reader)``; ``reader.first()``, the first value (Caffe shapes the
tops with it); ``reader.items()``, one pass over (key, value) in key order; and
``reader.cycle()``, endless passes, logging Caffe's "Restarting data prefetching from start."
at each wrap-around. A pass holds one read transaction, so it sees the database as it was when
the pass began.
"""
from __future__ import annotations

import os
import pathlib
import threading
import time
import weakref
from typing import Iterable, Iterator

from . import glog
from .errors import CaffeError

LMDB, LEVELDB = "lmdb", "leveldb"


def open_db(source, backend: str = LMDB, where: str | None = None):
    """A reader for the database at ``source``; ``where`` names the layer in errors."""
    path = pathlib.Path(source)
    if backend == LEVELDB:
        return LevelDBReader(path, where)
    return LMDBReader(path, where)


class _Reader:
    kind = ""

    def __init__(self, path: pathlib.Path, where):
        self.path = path
        self.where = where

    def error(self, message):
        return CaffeError(message, path=self.path, field=self.where)

    def _check_dir(self):
        if not self.path.exists():
            raise self.error(f"no {self.kind} database here (data_param.source does not exist; "
                             "paths are relative to the working directory)")
        if not self.path.is_dir():
            raise self.error(f"is a file, not a {self.kind} database directory")

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) in key order, once."""
        raise NotImplementedError

    def cycle(self) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) in key order, forever, wrapping around with Caffe's log line."""
        while True:
            n = 0
            for item in self.items():
                n += 1
                yield item
            if n == 0:
                raise self.error(f"the {self.kind} database became empty")
            glog.info("data_layer.cpp:73", "Restarting data prefetching from start.")


class LMDBReader(_Reader):
    kind = "LMDB"

    def __init__(self, path, where=None):
        super().__init__(path, where)
        self._check_dir()
        if not (path / "data.mdb").exists():
            raise self.error("not an LMDB database (no data.mdb inside)")
        self.env = _shared("lmdb", path, "data.mdb", lambda p: _open_lmdb(p, self.error))
        problem = truncated(self.env, path)
        if problem:
            raise self.error(problem)
        self.entries = self.env.stat()["entries"]
        if self.entries == 0:
            raise self.error("the LMDB database holds no records")
        glog.info("db_lmdb.cpp:35", "Opened lmdb db")

    def __len__(self):
        return self.entries

    def first(self) -> bytes:
        with self.env.begin() as txn:
            cur = txn.cursor()
            cur.first()
            return cur.value()

    def items(self):
        with self.env.begin(buffers=False) as txn:
            yield from txn.cursor().iternext(keys=True, values=True)


_open: "weakref.WeakValueDictionary[tuple, object]" = weakref.WeakValueDictionary()
_open_ids: dict[tuple, tuple] = {}
_open_lock = threading.Lock()


def _shared(kind: str, path: pathlib.Path, stamp_file: str, opener):
    # ``stamp_file`` inside the database tells a replaced database (new inode) from the same one
    """One open handle per database per process (LMDB and LevelDB allow no second one): the
    train and test nets of a solver share it. Reopened when the database was replaced."""
    key = (kind, os.path.realpath(path))
    st = os.stat(os.path.join(key[1], stamp_file))
    ident = (st.st_dev, st.st_ino)
    with _open_lock:
        handle = _open.get(key)
        if handle is not None and _open_ids.get(key) == ident:
            return handle
        if handle is not None:
            handle.close()
        handle = opener(key[1])
        _open[key] = handle
        _open_ids[key] = ident
        return handle


def truncated(env, path) -> str | None:
    """Why the LMDB open in ``env`` (at ``path``) is cut short, or None. Its meta page says how
    many pages it has; a data.mdb shorter than that (a copy or download that did not finish)
    is mapped all the same, and reading a page past its end kills the process with SIGBUS,
    in real Caffe too. So the size is checked before any record is read."""
    need = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    have = os.path.getsize(pathlib.Path(path) / "data.mdb")
    if have < need:
        return (f"truncated LMDB: data.mdb has {have:,} bytes but its pages reach {need:,} "
                "(a copy or download that did not finish?)")
    return None


def _open_lmdb(path: str, error):
    import lmdb
    try:
        return _open_lmdb_when_closed(lmdb, path)
    except lmdb.Error:
        try:   # a read-only copy (no writable lock file): read without locking
            return lmdb.open(path, readonly=True, lock=False, readahead=False)
        except lmdb.Error as e:
            raise error(f"cannot open as LMDB ({e})") from None


def _open_lmdb_when_closed(lmdb, path: str, wait_s: float = 5.0):
    """``lmdb.open`` for reading. py-lmdb allows one handle per database per process, and the
    last one may still be closing in another thread (a net being dropped while its prefetch
    thread ends: its handle has left ``_open`` but not yet py-lmdb's own list): then collect
    what is left of it and wait a little for it, rather than fail."""
    import gc
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return lmdb.open(path, readonly=True, lock=True, readahead=False, max_readers=512)
        except lmdb.Error as e:
            if "already open" not in str(e) or time.monotonic() > deadline:
                raise
            gc.collect()
            time.sleep(0.02)


class _LevelDBHandle:
    """plyvel's DB cannot be weakly referenced; this holder can."""

    def __init__(self, db):
        self.db = db

    def close(self):
        self.db.close()


class LevelDBReader(_Reader):
    kind = "LevelDB"

    def __init__(self, path, where=None):
        super().__init__(path, where)
        try:
            import plyvel
        except ImportError:
            raise self.error("backend: LEVELDB needs the plyvel package "
                             "(pip install plyvel), or convert the database to LMDB") from None
        self._check_dir()
        if not (path / "CURRENT").exists():
            raise self.error("not a LevelDB database (no CURRENT file inside)")

        def opener(p):
            try:
                return _LevelDBHandle(plyvel.DB(p, create_if_missing=False))
            except plyvel.Error as e:
                raise self.error(f"cannot open as LevelDB ({e})") from None
        self.handle = _shared("leveldb", path, ".", opener)
        self.db = self.handle.db
        self.entries = sum(1 for _ in self.db.iterator(include_value=False))
        if self.entries == 0:
            raise self.error("the LevelDB database holds no records")
        glog.info("db_leveldb.cpp:18", "Opened leveldb db")

    def __len__(self):
        return self.entries

    def first(self) -> bytes:
        with self.db.iterator(include_key=False) as it:
            return next(it)

    def items(self):
        with self.db.snapshot() as snap, snap.iterator() as it:
            yield from it


INITIAL_MAP_SIZE = 64 << 20


class LMDBWriter:
    """Writes an LMDB as Caffe's db_lmdb.cpp does: each batch of puts in one transaction, and a
    map that doubles when full. Opening an existing database continues it (``committed`` says
    how far it got); ``close`` syncs it to disk."""

    def __init__(self, path, map_size: int | None = None):
        import lmdb
        self._lmdb = lmdb
        map_size = map_size or INITIAL_MAP_SIZE
        path = pathlib.Path(path)
        path.mkdir(parents=True, exist_ok=True)
        data = path / "data.mdb"
        while data.exists() and map_size < 2 * data.stat().st_size:
            map_size *= 2
        existed = data.exists()
        self.env = lmdb.open(str(path), map_size=map_size, subdir=True, readahead=False,
                             meminit=False)
        problem = truncated(self.env, path) if existed else None
        if problem:
            self.env.close()
            raise CaffeError(f"cannot continue it: {problem}", path=path)

    def committed(self) -> tuple[int, bytes | None]:
        """(number of records, last key) already in the database."""
        with self.env.begin() as txn:
            cur = txn.cursor()
            last = cur.key() if cur.last() else None
            return txn.stat()["entries"], last

    def put(self, batch) -> None:
        """Commit (key, value) pairs in one transaction, doubling the map while it is too small."""
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    for key, value in batch:
                        txn.put(key, value)
                return
            except self._lmdb.MapFullError:
                self.env.set_mapsize(self.env.info()["map_size"] * 2)

    def close(self) -> None:
        try:
            self.env.sync(True)
        finally:
            self.env.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def write_lmdb(path, records: Iterable[tuple[bytes, bytes]], map_size: int | None = None,
               commit_every: int = 1000) -> int:
    """Write (key, value) records into a new LMDB at ``path`` (Caffe's layout: a directory with
    data.mdb), ``commit_every`` per transaction (convert_imageset's 1000). Written into
    ``path.tmp`` and renamed when complete, so a reader never sees half a database. Returns the
    number of records."""
    import shutil
    path = pathlib.Path(path)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    n, batch = 0, []
    with LMDBWriter(tmp, map_size) as writer:
        for item in records:
            batch.append(item)
            if len(batch) >= commit_every:
                writer.put(batch)
                n, batch = n + len(batch), []
        writer.put(batch)
        n += len(batch)
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)
    return n


def iter_lmdb(path) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) of every record of the LMDB at ``path``, in key order, in one read
    transaction: for reading a whole database once (as compute_image_mean does)."""
    import lmdb
    try:
        env = lmdb.open(str(path), readonly=True, lock=False, subdir=True)
    except lmdb.Error as e:
        raise CaffeError(f"cannot open as LMDB ({e})", path=path) from None
    problem = truncated(env, path)
    if problem:
        env.close()
        raise CaffeError(problem, path=path)
    try:
        with env.begin() as txn:
            yield from txn.cursor().iternext(keys=True, values=True)
    finally:
        env.close()
