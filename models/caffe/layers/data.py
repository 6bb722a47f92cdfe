"""Data layers: the net's sources of images and labels.

- ``Data``: records of Datum from an LMDB (or LevelDB), raw or encoded, read in key order and
  wrapping around at the end.
- ``ImageData``: a list file of ``path label`` lines, images read from disk (optionally resized
  to new_height x new_width, gray with ``is_color: false``, shuffled with ``shuffle: true``).
- ``MemoryData``: arrays handed over with ``net.set_input_arrays(data, labels)``.
- ``DummyData``: blobs of a given shape filled by fillers.

Data and ImageData make their batches in a background thread (``prefetch.Prefetcher``), each
batch shaped by its first image and transformed by ``transform_param`` (``DataTransformer``).
The random numbers a layer uses come from generators seeded off ``caffe.set_random_seed`` in
Caffe's order, and are drawn in record order, so a run is the same for any number of decode
workers.
"""
from __future__ import annotations

import collections
import pathlib
import weakref

import numpy as np
import torch

from .. import db, glog, rng
from ..data_items import DatumRecords, ImageFiles, LayerError
from ..decode_pool import DecodePool
from ..errors import CaffeError
from ..filler import fill
from ..layer import Layer, register
from ..prefetch import Prefetcher, decode_workers
from ..proto import caffe_pb2
from ..transformer import DataTransformer


def _world():
    """(rank, size) under torch.distributed, else (0, 1): Caffe's solver_rank / solver_count."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _layer_error(layer):
    """The layer's error maker, without a reference to the layer (see ``LayerError``)."""
    return LayerError(layer.source, f"layer {layer.name!r} ({layer.type})")


class _BatchMaker:
    """Runs in the prefetch thread: takes the next ``batch_size`` items, draws their random
    numbers in order, then has the decode pool load and transform them into one batch. With
    decode workers, one batch stays in flight: the next one is read and handed out before
    the one returned is waited for (an error is raised in the batch's turn)."""

    def __init__(self, items, reader, transformer, batch_size, pool):
        self.items = items              # iterator of items
        self.reader = reader            # DatumRecords or ImageFiles
        self.transformer = transformer
        self.batch_size = batch_size
        self.pool = pool
        self.pending = collections.deque()   # batches in flight: tickets, or what they raised

    def _submit(self):
        t, reader = self.transformer, self.reader
        items = [next(self.items) for _ in range(self.batch_size)]
        draws = t.draw_many(len(items))
        jobs = [(i, items[i], draws[i]) for i in range(len(items))]
        # the batch takes its first image's shape: with workers, read off its header where
        # that is sure, so that this thread decodes nothing (workers verify every row)
        shape = reader.shape(items[0]) if self.pool.workers > 1 else None
        if shape is None:
            first, first_label = reader.load(items[0])
            jobs[0] += (first, first_label)
            shape = first.shape
        return self.pool.submit(jobs, (len(items),) + t.output_shape(shape), shape)

    def _submit_caught(self):
        try:
            return self._submit()
        except Exception as e:
            return e

    def __call__(self):
        if self.pool.workers == 1:
            return self.pool.collect(self._submit())
        while len(self.pending) < self.pool.in_flight:
            self.pending.append(self._submit_caught())
        current = self.pending.popleft()
        if isinstance(current, Exception):
            raise current
        return self.pool.collect(current)


class _PrefetchingData(Layer):
    """What Data and ImageData share: a transformer, a batch maker in a prefetch thread."""
    bottoms = (0, 0)
    is_source = True
    # The blobs take each batch as it is, as Caffe's BasePrefetchingDataLayer::Forward hands its
    # prefetch buffer to the top (set_cpu_data) instead of copying it: a batch's array is made
    # for one pass only. An array of ``net.blobs["data"].data`` taken earlier keeps the batch it
    # showed (its memory is not reused while it lives).
    hands_over_tops = True

    def _start(self, items, reader, first_image, batch_size):
        self.transformer.check(first_image.shape)
        shape = (batch_size,) + self.transformer.output_shape(first_image.shape)
        glog.info(self.log_where, "output data size: " + ",".join(map(str, shape)))
        self._shapes = [shape, (batch_size,)][:len(self.param.top)]
        self.transformer.init_rand()   # BasePrefetchingDataLayer::LayerSetUp's second InitRand
        rng.caffe_rng_rand()   # Caffe seeds the prefetch thread here; keep the stream in step
        pool = DecodePool(decode_workers(), reader, self.transformer, name=f"decode-{self.name}")
        maker = _BatchMaker(items, reader, self.transformer, batch_size, pool)
        self.decode_pool = pool
        self._prefetcher = Prefetcher(maker, self.param.data_param.prefetch,
                                      name=f"prefetch-{self.name}")
        weakref.finalize(self, _shutdown, self._prefetcher, pool)

    def top_shapes(self):
        return self._shapes

    def forward(self, bottoms, params):
        data, labels = self._prefetcher.next()
        tops = [torch.from_numpy(data), torch.from_numpy(labels)]
        return tops[:len(self.param.top)]


def _shutdown(prefetcher, pool):
    prefetcher.close()
    pool.close()


@register
class Data(_PrefetchingData):
    type = "Data"
    tops = (1, 2)
    log_where = "data_layer.cpp:45"

    def setup(self, bottoms):
        dp = self.param.data_param
        if dp.batch_size <= 0:
            raise self.error("batch_size must be positive", "data_param.batch_size")
        if not dp.source:
            raise self.error("needs a database: data_param.source", "data_param.source")
        db_reader = db.open_db(dp.source, self._backend(dp),
                               where=f"layer {self.name!r} ({self.type}) data_param.source")
        self.transformer = DataTransformer(self.param.transform_param, self.phase,
                                           _layer_error(self))
        records = DatumRecords(dp.source, self.transformer, _layer_error(self))
        first = records.load((b"<first record>", db_reader.first()))[0]
        skip = 0
        if dp.rand_skip:
            skip = rng.caffe_rng_rand() % dp.rand_skip
            glog.info("data_layer.cpp:56", f"Skipping first {skip} data points.")
        rank, size = _world()
        keep_all = size == 1 or self.phase == caffe_pb2.TEST
        self._start(self._records(db_reader, skip, rank, size, keep_all), records, first,
                    dp.batch_size)

    def _backend(self, dp):
        source = pathlib.Path(dp.source)
        if not dp.HasField("backend") and (source / "data.mdb").exists():
            return db.LMDB   # Caffe's default is LevelDB; an LMDB there is what was meant
        if dp.backend == caffe_pb2.DataParameter.LEVELDB and (source / "data.mdb").exists():
            raise self.error(f"{dp.source} is an LMDB database: set backend: LMDB",
                             "data_param.backend")
        return db.LEVELDB if dp.backend == caffe_pb2.DataParameter.LEVELDB else db.LMDB

    @staticmethod
    def _records(reader, skip, rank, size, keep_all):
        it = reader.cycle()
        for _ in range(skip):
            next(it)
        offset = 0
        for record in it:                   # with several GPUs each rank takes every size-th
            if keep_all or offset % size == rank:
                yield record
            offset += 1


@register
class ImageData(_PrefetchingData):
    type = "ImageData"
    tops = (2, 2)
    log_where = "image_data_layer.cpp:85"

    def setup(self, bottoms):
        p = self.param.image_data_param
        if (p.new_height > 0) != (p.new_width > 0):
            raise self.error("new_height and new_width must be set together",
                             "image_data_param")
        if p.batch_size <= 0:
            raise self.error("batch_size must be positive", "image_data_param.batch_size")
        self.transformer = DataTransformer(self.param.transform_param, self.phase,
                                           _layer_error(self))
        glog.info("image_data_layer.cpp:38", f"Opening file {p.source}")
        lines = self._read_list(p.source)
        stream = None
        if p.shuffle:
            glog.info("image_data_layer.cpp:46", "Shuffling data")
            stream = rng.Stream(rng.caffe_rng_rand())
            rng.shuffle(lines, stream)
        glog.info("image_data_layer.cpp:57", f"A total of {len(lines)} images.")
        start = 0
        if p.rand_skip:
            start = rng.caffe_rng_rand() % p.rand_skip
            glog.info("image_data_layer.cpp:63", f"Skipping first {start} data points.")
            if start >= len(lines):
                raise self.error(f"rand_skip drew {start}, but the list has only "
                                 f"{len(lines)} images", "image_data_param.rand_skip")
        files = ImageFiles(p, _layer_error(self))
        first = files.load(lines[start])[0]
        self._start(self._cycle(lines, start, stream), files, first, p.batch_size)

    def _read_list(self, source):
        """Caffe's list file: per line a path, the last space, an integer label."""
        try:
            text = pathlib.Path(source).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise CaffeError("list file not found (paths are relative to the working directory)",
                             path=source, field=f"layer {self.name!r} (ImageData) "
                             "image_data_param.source") from None
        except (OSError, UnicodeDecodeError) as e:
            raise CaffeError(f"cannot read the list file ({e})", path=source) from None
        lines = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            path, _, label = line.rstrip("\r").rpartition(" ")
            try:
                value = int(label)
            except ValueError:
                raise CaffeError(f"expected 'path label' with an integer label, got {line!r}",
                                 path=f"{source}:{n}") from None
            if not -(1 << 31) <= value < (1 << 31):     # Caffe reads it into an int
                raise CaffeError(f"label {label[:30]} does not fit Caffe's 32-bit int",
                                 path=f"{source}:{n}")
            lines.append((path, value))
        if not lines:
            raise CaffeError("the list file names no images", path=source,
                             field=f"layer {self.name!r} (ImageData)")
        return lines

    @staticmethod
    def _cycle(lines, start, stream):
        i = start
        while True:
            yield lines[i]
            i += 1
            if i >= len(lines):             # the end: start again (reshuffled, as Caffe does)
                i = 0
                if stream is not None:
                    rng.shuffle(lines, stream)


@register
class MemoryData(Layer):
    """Batches taken in turn from arrays given by ``net.set_input_arrays(data, labels)``; as in
    Caffe, no transformation is applied to them, and the label top becomes N x 1 x 1 x 1."""
    type = "MemoryData"
    bottoms = (0, 0)
    tops = (2, 2)
    is_source = True

    def setup(self, bottoms):
        p = self.param.memory_data_param
        self.batch_size = p.batch_size
        self.shape = (p.channels, p.height, p.width)
        if min((self.batch_size,) + self.shape) <= 0:
            raise self.error("batch_size, channels, height and width must be specified and "
                             "positive", "memory_data_param")
        DataTransformer(self.param.transform_param, self.phase, self.error)  # Caffe draws its seed
        self._data = None

    def top_shapes(self):
        return [(self.batch_size,) + self.shape, (self.batch_size,)]

    def reset(self, data, labels):
        data = np.ascontiguousarray(data, dtype=np.float32)
        labels = np.ascontiguousarray(labels, dtype=np.float32)
        where = "set_input_arrays"
        if data.ndim != 4 or data.shape[1:] != self.shape:
            raise self.error(f"data must be N x {' x '.join(map(str, self.shape))}, got "
                             f"{data.shape}", where)
        n = data.shape[0]
        if labels.shape[:1] != (n,) or labels.size != n:
            raise self.error(f"labels must be N or N x 1 x 1 x 1 with N = {n}, got "
                             f"{labels.shape}", where)
        if n % self.batch_size:
            raise self.error(f"the number of items ({n}) must be a multiple of batch_size "
                             f"{self.batch_size}", where)
        if self.param.HasField("transform_param"):
            glog.warning("memory_data_layer.cpp:56",
                         "MemoryData does not transform array data on Reset()")
        self._data, self._labels, self._n, self._pos = data, labels.reshape(n), n, 0

    def forward(self, bottoms, params):
        if self._data is None:
            raise self.error("has no data: call net.set_input_arrays(data, labels) first")
        i, b = self._pos, self.batch_size
        data = torch.from_numpy(self._data[i:i + b].copy())
        labels = torch.from_numpy(self._labels[i:i + b].reshape(b, 1, 1, 1).copy())
        self._pos = (i + b) % self._n
        return [data, labels]


@register
class DummyData(Layer):
    """Tops of the shapes in ``dummy_data_param``, filled by ``data_filler`` (one for all tops
    or one per top; constant 0 by default). Constant tops are filled once, others every pass."""
    type = "DummyData"
    bottoms = (0, 0)
    tops = (1, None)
    is_source = True

    def setup(self, bottoms):
        p = self.param.dummy_data_param
        n = len(self.param.top)
        if len(p.data_filler) not in (0, 1, n):
            raise self.error(f"give 0, 1 or {n} data_filler(s), got {len(p.data_filler)}",
                             "dummy_data_param.data_filler")
        legacy = [p.num, p.channels, p.height, p.width]
        if any(len(f) for f in legacy):
            if len(p.shape):
                raise self.error("use shape or num/channels/height/width, not both",
                                 "dummy_data_param")
            if any(len(f) not in (1, n) for f in legacy):
                raise self.error(f"num, channels, height and width each need 1 or {n} values",
                                 "dummy_data_param")
            self._shapes = [tuple(int(f[0] if len(f) == 1 else f[i]) for f in legacy)
                            for i in range(n)]
        else:
            if len(p.shape) not in (1, n):
                raise self.error(f"give 1 or {n} shape(s), got {len(p.shape)}",
                                 "dummy_data_param.shape")
            self._shapes = [tuple(int(d) for d in p.shape[0 if len(p.shape) == 1 else i].dim)
                            for i in range(n)]
        default = caffe_pb2.FillerParameter(type="constant", value=0)
        fillers = list(p.data_filler) or [default]
        self._fillers = [fillers[0 if len(fillers) == 1 else i] for i in range(n)]
        self._where = f"{self.source}: layer {self.name!r} data_filler"
        self._tops = [fill(s, f, "cpu", self._where) if f.type == "constant" else None
                      for s, f in zip(self._shapes, self._fillers)]

    def top_shapes(self):
        return self._shapes

    def forward(self, bottoms, params):
        return [t if f.type == "constant" else fill(s, f, "cpu", self._where)
                for t, s, f in zip(self._tops, self._shapes, self._fillers)]
