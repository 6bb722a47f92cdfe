"""The items of the prefetching data layers and how each becomes one row of a batch.

- ``DatumRecords``: Data's items, (key, value) records of a database, read as Datum.
- ``ImageFiles``: ImageData's items, (path, label) lines of its list file.
- ``payload(item)`` / ``with_payload(item, value)``: the bulk of an item (a record's value),
  which a decode worker receives through shared memory.
- ``fill_rows``: load, check and transform items into rows of a batch, with random numbers
  drawn beforehand (in Caffe's order) by the layer.

Nothing here imports torch and everything pickles, so a decode worker process
(``decode_pool``) can hold a layer's reader and transformer and make rows for it.
"""
from __future__ import annotations

from . import image
from .datum import decode_datum
from .errors import CaffeError
from .prefetch import check_cancelled
from .proto import caffe_pb2


class LayerError:
    """Makes a layer's CaffeError: ``error(message, field=None)``, naming the layer's source
    and the layer. Holds no reference to the layer (the prefetch thread and the decode workers
    keep it, and a net that is dropped must be collectable)."""

    def __init__(self, source, where: str):
        self.source, self.where = source, where

    def __call__(self, message, field=None):
        return CaffeError(message, path=self.source,
                          field=self.where + (f": {field}" if field else ""))


class DatumRecords:
    """Data's items: (key, value) records of a database, read as Datum."""

    def __init__(self, source: str, transformer, error):
        self.source, self.transformer, self.error = source, transformer, error

    def describe(self, record):
        return f"record {record[0].decode('utf-8', 'replace')!r} of {self.source}"

    # a decode worker gets the value through shared memory, not its pipe (``decode_pool``)
    @staticmethod
    def payload(record):
        return record[1]

    @staticmethod
    def with_payload(record, value):
        return record[0], value

    def shape(self, record):
        """The C x H x W ``load(record)`` will give, where its Datum's fields or its image's
        header say it without decoding; None otherwise (and for a malformed record: ``load``
        says what is wrong)."""
        try:
            datum = decode_datum(record[1])
        except ValueError:
            return None
        if not datum.encoded:
            shape = (datum.channels, datum.height, datum.width)
            return shape if min(shape) > 0 else None
        hwc = image.decoded_shape(datum.data, self.transformer.flag)
        return None if hwc is None else (hwc[2], hwc[0], hwc[1])

    def load(self, record):
        """-> (C x H x W image, label)"""
        try:
            datum = decode_datum(record[1])
        except ValueError as e:
            raise self.error(f"{self.describe(record)}: {e}") from None
        try:
            img = self.transformer.datum_image(datum)
        except image.ImageError as e:
            raise self.error(f"{self.describe(record)}: cannot decode its image ({e})") from None
        except ValueError as e:
            raise self.error(f"{self.describe(record)}: {e}") from None
        return img, datum.label


class ImageFiles:
    """ImageData's items: (path, label) lines, read from ``root_folder + path``."""

    def __init__(self, param: caffe_pb2.ImageDataParameter, error):
        self.root = param.root_folder
        self.flag = image.COLOR if param.is_color else image.GRAYSCALE
        self.size = (param.new_height, param.new_width) if param.new_height > 0 else None
        self.error = error

    def describe(self, line):
        return f"image {self.root + line[0]!r}"

    @staticmethod
    def payload(line):
        return None          # a line is small: it goes to a decode worker as it is

    def shape(self, line):
        """The C x H x W ``load(line)`` will give, from the file's header; None where only
        decoding can tell (or the file cannot be read: ``load`` says why)."""
        try:
            with open(self.root + line[0], "rb") as f:
                hwc = image.decoded_shape(f.read(1 << 16), self.flag)
        except OSError:
            return None
        if hwc is None:
            return None
        return (hwc[2],) + (self.size or hwc[:2])

    def load(self, line):
        path = self.root + line[0]          # Caffe joins them as strings
        try:
            img = image.read(path, self.flag)
        except FileNotFoundError:
            hint = ""
            if self.root and not self.root.endswith("/"):
                hint = " (root_folder is prefixed as is: end it with '/')"
            raise CaffeError(f"image not found{hint}", path=path,
                             field=self.error.where) from None
        except (image.ImageError, OSError) as e:
            raise CaffeError(f"cannot read the image ({e})", path=path,
                             field=self.error.where) from None
        if self.size:
            img = image.resize(img, *self.size)
        return img.transpose(2, 0, 1), line[1]


def fill_rows(reader, transformer, jobs, data, labels, first_shape) -> None:
    """For each job ``(i, item, draws)`` (or ``(i, item, draws, img, label)`` with the item
    already loaded): load the item, check it has the batch's shape (set by the batch's first
    image, ``first_shape``) and write its transformed image to ``data[i]``, its label to
    ``labels[i]``."""
    shape = data.shape[1:]
    for i, item, draws, *loaded in jobs:
        check_cancelled()          # a closed layer / an exiting process: stop between rows
        img, label = loaded if loaded else reader.load(item)
        if transformer.output_shape(img.shape) != shape:
            raise reader.error(
                f"{reader.describe(item)} is {'x'.join(map(str, img.shape))} (C x H x W) "
                f"but this batch's first image is {'x'.join(map(str, first_shape))}; "
                "without crop_size every image in a batch must have the same size")
        transformer.transform(img, draws, data[i])
        labels[i] = label
