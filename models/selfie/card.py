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
import pathlib
import re

from deepselfie.errors import UserError
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


def read_card(path) -> dict:
    path = pathlib.Path(path)
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError("file not found", path=path) from None
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"not a model card (JSON: {e})", path=path) from None
    if not isinstance(card, dict) or card.get("card") != CARD_VERSION or \
            not isinstance(card.get("transform"), dict):
        raise UserError(f"not a model card (expected version {CARD_VERSION} with a transform)",
                        path=path)
    card["path"] = str(path)
    return card


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
