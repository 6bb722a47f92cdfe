"""An LMDB of Caffe Datum records, written as convert_imageset writes it.

Record i of a list gets the key ``%08d_<path as in the list file>`` (the order is the list's; the
caller shuffles the list first, as ``--shuffle`` does), the value is a serialized Datum: raw
records carry channels/height/width, data (uint8 C x H x W, BGR), label and encoded=false; encoded
records carry only data (the image file's bytes), label and encoded=true, as ReadImageToDatum
leaves them. Puts go in transactions of ``commit_every`` records (convert_imageset: 1000); the map
grows by doubling when full, as Caffe's LMDB wrapper does. The Datum and LMDB codecs are the
runtime's (models/caffe/datum.py, models/caffe/db.py); this module plans, resumes and publishes.

Resumable: the database is built in ``<name>.partial/`` next to its final place, with the plan's
hash in ``<name>.partial/PLAN``. Every committed batch survives an interruption; a rerun with the
same plan continues after the last committed record; ``publish`` moves the finished database into
place, so a complete database is never replaced by a half-written one.
"""
from __future__ import annotations

import contextlib
import pathlib
import shutil
from dataclasses import dataclass

from deepselfie.console import progress
from deepselfie.errors import UserError
from models.caffe.datum import decode_datum, encode_datum
from models.caffe.db import LMDBWriter
from models.caffe.db import iter_lmdb as read_lmdb

from .image import EncodeSettings, Payload, encode_chunk
from .workers import Workers, as_workers

CHUNK = 16                      # images per task sent to a worker process


@dataclass(frozen=True)
class Record:
    """One line of a list file, and where to read its image."""

    key: str                    # "%08d_<list path>"
    source: str                 # the file to read
    label: int
    noise_key: str = ""         # fixes fill/half_crop padding noise for this image


def record_key(index: int, list_path: str) -> str:
    return f"{index:08d}_{list_path}"


def make_datum(payload: Payload, label: int) -> bytes:
    """The record convert_imageset writes for this payload (the runtime's Datum codec)."""
    return encode_datum(payload.data, label, encoded=payload.encoded,
                        shape=(payload.channels, payload.height, payload.width))


def parse_datum(value: bytes):
    """A stored value -> (label, Payload)."""
    datum = decode_datum(value)
    return datum.label, Payload(datum.data, datum.encoded, datum.channels, datum.height,
                                datum.width)


def partial_path(path) -> pathlib.Path:
    path = pathlib.Path(path)
    return path.with_name(path.name + ".partial")


def _payloads(records, settings: EncodeSettings, workers: Workers):
    """Payloads for records, in order; the image work is spread over the workers."""
    jobs = [(r.source, r.noise_key) for r in records]
    tasks = [(settings, jobs[i:i + CHUNK]) for i in range(0, len(jobs), CHUNK)]
    for out in workers.map(encode_chunk, tasks):
        yield from out


def build_lmdb(path, records: list[Record], settings: EncodeSettings, *, plan: str,
               processes: int | Workers = 1, commit_every: int = 1000, desc: str = "lmdb") -> int:
    """Write (or finish writing) records into ``<path>.partial``; return how many were resumed.

    ``processes``: how many processes encode images, or a Workers pool to use."""
    partial = partial_path(path)
    marker = partial / "PLAN"
    writer, done = None, 0
    if partial.is_dir() and marker.is_file() and marker.read_text() == plan:
        writer = LMDBWriter(partial)
        done, last = writer.committed()
        expected = records[done - 1].key.encode() if 0 < done <= len(records) else None
        if done > len(records) or (done and last != expected):
            writer.close()
            writer, done = None, 0
    if writer is None:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        writer = LMDBWriter(partial)
        marker.write_text(plan)
    workers, own = as_workers(processes)
    try:
        todo = records[done:]
        batch = []
        with progress(total=len(records), initial=done, desc=desc, unit="img") as bar, \
                contextlib.closing(_payloads(todo, settings, workers)) as payloads:
            for record, payload in zip(todo, payloads):
                if not isinstance(payload, Payload):
                    raise UserError(f"cannot use this image: {payload[1]}", path=payload[0])
                batch.append((record.key.encode(), make_datum(payload, record.label)))
                if len(batch) >= commit_every:
                    writer.put(batch)
                    bar.update(len(batch))
                    batch = []
            if batch:
                writer.put(batch)
                bar.update(len(batch))
    finally:
        writer.close()
        if own:
            workers.close()
    return done


def publish(path):
    """Move a finished ``<path>.partial`` to path, replacing what was there."""
    path = pathlib.Path(path)
    partial = partial_path(path)
    (partial / "PLAN").unlink(missing_ok=True)
    old = path.with_name(path.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        path.rename(old)
    partial.rename(path)
    shutil.rmtree(old, ignore_errors=True)


def iter_lmdb(path):
    """(key, label, Payload) for every record of an LMDB, in key order (as the Data layer reads)."""
    for key, value in read_lmdb(path):
        label, payload = parse_datum(value)
        yield key.decode(), label, payload
