"""The model card: what scoring needs to know about a trained net, written beside its snapshots.

``deepselfie train`` writes one card per snapshot prefix, ``<snapshot_prefix>_card.json``, before
the first iteration (so an interrupted run has one too). Every ``<prefix>_iter_N.caffemodel``
finds it by its name; a ``<weights>.json`` beside one snapshot (same name, ``.json``) wins over
the prefix's card. It says how the net was fed at TEST time:

  deploy        the deploy net: by convention the train_val's name with ``train_val``
                (``trainval``, ``train_test``) replaced by ``deploy``, beside it; else
                ``deploy.prototxt`` in its folder; null when neither exists (pass --model)
  transform     the TEST Data layer's transform_param: scale, crop_size, mean_file (absolute),
                mean_value
  label_run     the folder of the LMDB the TEST Data layer reads (``data_param.source``'s
                parent) and, from its manifest.json, image_size [H, W], resize_mode, encoding,
                jpeg_quality and seed: how a file became a record
  input_size    [H, W] the net sees (crop_size, or the records' size)
  classes       the label stage's class names by index (["bad", "good"])

Paths are absolute, resolved as Caffe resolves them (against the working directory of the
training run).
"""
from __future__ import annotations

import json
import math
import pathlib
import re

from deepselfie.errors import UserError, shortened
from deepselfie.files import atomic_write

CARD_VERSION = 1
CLASSES = ["bad", "good"]           # the label stage's labels 0 and 1
SUFFIX = "_card.json"
_ITER = re.compile(r"^(?P<prefix>.*)_iter_\d+\.caffemodel(\.h5)?$")


def card_path(snapshot_prefix) -> pathlib.Path:
    return pathlib.Path(f"{snapshot_prefix}{SUFFIX}")


def candidates(weights) -> list[pathlib.Path]:
    """Where the card of a snapshot may be, in the order they are tried."""
    w = pathlib.Path(weights)
    out = [w.with_suffix(".json")]
    m = _ITER.match(w.name)
    if m:
        out.append(card_path(w.with_name(m["prefix"])))
    return out


def find_card(weights) -> dict | None:
    """The card that goes with a .caffemodel, or None when there is none."""
    for p in candidates(weights):
        if p.is_file():
            return read_card(p)
    return None


MAX_CARD_BYTES = 1 << 20            # a card is a page of JSON


def read_card(path) -> dict:
    """A model card, its fields checked (a card can come with weights from anywhere): one
    UserError line naming the file and the field otherwise."""
    path = pathlib.Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_CARD_BYTES:
            raise UserError(f"not a model card ({size:,} bytes; a card is at most "
                            f"{MAX_CARD_BYTES:,})", path=path)
        card = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError("file not found", path=path) from None
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"not a model card (JSON: {e})", path=path) from None
    except RecursionError:
        raise UserError("not a model card (JSON nested too deeply)", path=path) from None
    if not isinstance(card, dict) or card.get("card") != CARD_VERSION or \
            not isinstance(card.get("transform"), dict):
        raise UserError(f"not a model card (expected version {CARD_VERSION} with a transform)",
                        path=path)
    _check_fields(card, path)
    card["path"] = str(path)
    return card


def _number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _whole(lo, hi):
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _text_or_none(v):
    return v is None or (isinstance(v, str) and "\0" not in v)


_SIDE = _whole(1, 1 << 16)
# field -> (what it must be, the test); a field a card lacks is left to its users' defaults
_FIELDS = {
    "deploy": ("a path or null", _text_or_none),
    "snapshot_prefix": ("a path", lambda v: isinstance(v, str) and "\0" not in v),
    "image_size": ("null or [height, width], whole numbers from 1 to 65536",
                   lambda v: v is None or (isinstance(v, list) and len(v) == 2
                                           and all(map(_SIDE, v)))),
    "resize_mode": ("one of squash, crop, fill, half_crop",
                    lambda v: v in ("squash", "crop", "fill", "half_crop")),
    "encoding": ("null or one of jpg, png, raw", lambda v: v in (None, "jpg", "png", "raw")),
    "jpeg_quality": ("a whole number from 0 to 100", _whole(0, 100)),
    "seed": ("a whole number", _whole(-(1 << 63), (1 << 64) - 1)),
    "classes": ("null or a list of names",
                lambda v: v is None or (isinstance(v, list) and len(v) <= 1000
                                        and all(isinstance(c, str) for c in v))),
    "transform.scale": ("a finite number", _number),
    "transform.crop_size": ("a whole number from 0 to 65536", _whole(0, 1 << 16)),
    "transform.mean_file": ("a path or null", _text_or_none),
    "transform.mean_value": ("a list of at most 4 finite numbers",
                             lambda v: isinstance(v, list) and len(v) <= 4
                             and all(map(_number, v))),
}


_REQUIRED = ("transform.scale",)


def _check_fields(card: dict, path) -> None:
    for name, (what, ok) in _FIELDS.items():
        where, _, key = name.rpartition(".")
        holder = card[where] if where else card
        if key not in holder and name in _REQUIRED:
            raise UserError(f"missing (it must be {what})", path=path, field=name)
        if key in holder and not ok(holder[key]):
            raise UserError(f"must be {what}, not {shortened(json.dumps(holder[key]))}",
                            path=path, field=name)


def missing_card_message(weights) -> str:
    names = " or ".join(p.name for p in candidates(weights))
    return (f"no model card ({names}, written by deepselfie train) beside these weights: pass "
            "--model DEPLOY --mean MEAN [--scale S] [--resize squash|crop|oversample]")


# ---------------------------------------------------------------- writing

def _abs(path: str, cwd: pathlib.Path) -> str:
    p = pathlib.Path(path)
    return str(p if p.is_absolute() else (cwd / p).resolve())


def _test_data_layer(net):
    """The Data layer that feeds the TEST phase (an explicit TEST rule first, then one without
    rules); None when the net has none."""
    from models.caffe.proto import caffe_pb2
    data = [layer for layer in net.layer if layer.type == "Data"]
    for layer in data:
        if any(rule.HasField("phase") and rule.phase == caffe_pb2.TEST for rule in layer.include):
            return layer
    for layer in data:
        if not layer.include and not any(rule.HasField("phase") and rule.phase == caffe_pb2.TEST
                                         for rule in layer.exclude):
            return layer
    return None


def deploy_beside(train_val: pathlib.Path) -> pathlib.Path | None:
    """The deploy net by convention (see the module's docstring)."""
    for word in ("train_val", "trainval", "train_test"):
        if word in train_val.name:
            p = train_val.with_name(train_val.name.replace(word, "deploy"))
            if p.is_file():
                return p
    p = train_val.with_name("deploy.prototxt")
    return p if p.is_file() else None


def _label_run(source: pathlib.Path) -> dict:
    """How the records of the LMDB at ``source`` were made, from its run's manifest.json."""
    run = source.parent
    try:
        settings = json.loads((run / "manifest.json").read_text())["settings"]
        return {"label_run": str(run), "label_run_name": settings.get("run_name", run.name),
                "image_size": [int(settings["new_height"]), int(settings["new_width"])],
                "resize_mode": settings.get("resize_mode", "squash"),
                "encoding": settings.get("encoding", "jpg"),
                "jpeg_quality": int(settings.get("jpeg_quality", 95)),
                "seed": int(settings.get("seed", 0)), "classes": CLASSES}
    except (OSError, ValueError, KeyError, TypeError):
        return {"label_run": None, "image_size": None, "resize_mode": "squash",
                "encoding": None, "jpeg_quality": 95, "seed": 0, "classes": None}


def make_card(solver_path, cwd=None, deploy=None) -> dict | None:
    """The card for a solver prototxt (None when its TEST net has no Data layer to learn from)."""
    from models.caffe import protoio
    from models.caffe.solver import read_solver_param
    from models.caffe.upgrade import upgrade_net
    cwd = pathlib.Path(cwd or pathlib.Path.cwd())
    param = read_solver_param(solver_path)
    net_file = param.test_net[0] if len(param.test_net) else (param.net or param.train_net)
    if not net_file:
        return None
    train_val = pathlib.Path(_abs(net_file, cwd))
    net = upgrade_net(protoio.read_prototxt(train_val), str(train_val))
    layer = _test_data_layer(net)
    if layer is None:
        return None
    tp = layer.transform_param
    transform = {"scale": float(tp.scale), "crop_size": int(tp.crop_size),
                 "mean_file": _abs(tp.mean_file, cwd) if tp.HasField("mean_file") else None,
                 "mean_value": [float(v) for v in tp.mean_value],
                 "force_color": bool(tp.force_color), "force_gray": bool(tp.force_gray)}
    run = _label_run(pathlib.Path(_abs(layer.data_param.source, cwd)))
    size = run["image_size"]
    crop = transform["crop_size"]
    deploy = pathlib.Path(_abs(str(deploy), cwd)) if deploy else deploy_beside(train_val)
    return {"card": CARD_VERSION, "solver": _abs(str(solver_path), cwd),
            "train_val": str(train_val), "deploy": str(deploy) if deploy else None,
            "snapshot_prefix": _abs(param.snapshot_prefix, cwd), "transform": transform,
            **run, "input_size": [crop, crop] if crop else size}


def write_card(solver_path, cwd=None, deploy=None) -> pathlib.Path | None:
    """Write ``<snapshot_prefix>_card.json`` for a solver (``deploy`` overrides the convention);
    its path, or None when there is nothing to describe."""
    card = make_card(solver_path, cwd, deploy)
    if card is None:
        return None
    path = card_path(card["snapshot_prefix"])
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(card, indent=1) + "\n")
    return path
