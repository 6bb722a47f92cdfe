"""config.yaml: every path and threshold of every stage, validated against one schema.

The schema below is the single source of keys, types and defaults; config.yaml at the project root
spells the same defaults out with comments (a test keeps the two equal). Loading order: schema
defaults, then the YAML file, then ``--set section.key=value`` overrides (values typed like YAML),
then ``--data-dir``. An unknown key or a wrong type raises UserError naming the file and the key.
"""
from __future__ import annotations

import difflib
import os
import pathlib
from dataclasses import dataclass

import yaml

from .errors import UserError


@dataclass(frozen=True)
class Key:
    """One setting: its type (int, float, str, bool, list, dict), default and help text."""

    type: type
    default: object
    help: str = ""
    nullable: bool = False
    choices: tuple = ()
    item: type | None = None  # element type of a list


def _k(type_, default, help="", **kw):
    return Key(type_, default, help, **kw)


# Each stage owns its section. Keep config.yaml in step (tests/test_config.py checks it).
SCHEMA: dict[str, dict[str, Key]] = {
    "paths": {
        "data_dir": _k(str, "data", "catalog.sqlite, images/, runs/ and LMDBs live here"),
        "models_dir": _k(str, None, "downloaded and converted weights; default <data_dir>/models",
                         nullable=True),
    },
    "runtime": {
        "backend": _k(str, "torch", "engine for Caffe nets", choices=("torch", "caffe")),
        "device": _k(str, "auto", "auto, cpu, cuda or cuda:N"),
        "fast": _k(bool, False, "bf16 autocast and channels_last (inexact, faster)"),
        "threads": _k(int, 0, "CPU threads for torch; 0 keeps torch's default"),
        "compile": _k(str, "auto", "compiled inference (inductor, frozen weights): auto compiles "
                      "when the work pays for it", choices=("auto", "on", "off")),
    },
    "score": {
        "model": _k(str, "prototxt/selfie_vgg16_deploy.prototxt", "deploy prototxt"),
        "weights": _k(str, None, "trained .caffemodel (from deepselfie train)", nullable=True),
        "mean": _k(str, None, "mean.binaryproto, mean JSON or B,G,R used in training",
                   nullable=True),
        "resize": _k(str, "squash", "squash, crop or oversample",
                     choices=("squash", "crop", "oversample")),
        "scale": _k(float, 1.0, "input scale after the mean (the training transform_param)"),
        "batch_size": _k(int, 16, "images per forward pass"),
        "top": _k(int, 24, "images on the top-N contact sheet"),
        "good_class": _k(int, 1, "softmax index of the 'good' class"),
    },
    "label": {
        "run_name": _k(str, "selfie", "run folder under <data_dir>/runs; the label run's name"),
        "min_age_days": _k(int, 30, "days a post must have been online (created_at to fetched_at)"),
        "min_followers": _k(int, 10, "fewest author followers for an eligible post"),
        "max_followers": _k(int, 100000, "most author followers for an eligible post"),
        "max_tags": _k(int, 10, "most tags for an eligible post"),
        "min_faces": _k(int, 1, "fewest faces in the post's first image; 0 turns the check off"),
        "tag_bonus": _k(float, 0.05, "audience = followers * (1 + tag_bonus * number of tags)"),
        "group_size": _k(int, 100, "posts per audience group (even); top half good, bottom bad"),
        "train_ratio": _k(float, 0.8, "share of labeled posts for train (split by author)"),
        "val_ratio": _k(float, 0.1, "share for val"),
        "test_ratio": _k(float, 0.1, "share for test"),
        "seed": _k(int, 0, "seed of the author split, the LMDB order and the fill noise"),
        "new_height": _k(int, 256, "height of the images in the LMDBs"),
        "new_width": _k(int, 256, "width of the images in the LMDBs"),
        "resize_mode": _k(str, "squash", "DIGITS resize mode",
                          choices=("squash", "crop", "fill", "half_crop")),
        "encoding": _k(str, "jpg", "Datum payload: jpg or png (encoded) or raw (BGR pixels)",
                       choices=("jpg", "png", "raw")),
        "jpeg_quality": _k(int, 95, "JPEG quality of encoded records (cv::imencode's default)"),
        "processes": _k(int, 0, "processes that decode and encode images; 0 = one per CPU"),
        "commit_every": _k(int, 1000, "LMDB records per transaction"),
    },
    "train": {
        "sigint_effect": _k(str, "stop", "what SIGINT (Ctrl-C) does to training",
                            choices=("stop", "snapshot", "none")),
        "sighup_effect": _k(str, "snapshot", "what SIGHUP does to training",
                            choices=("stop", "snapshot", "none")),
        "metrics": _k(bool, True, "write <snapshot_prefix>_metrics.jsonl and _curve.png"),
        "curve_interval_s": _k(float, 10.0, "least seconds between redraws of the curve PNG"),
    },
    "scrape": {
        "source": _k(str, "mastodon", "where posts come from", choices=("mastodon", "folder")),
        "servers": _k(list, ["https://mastodon.social"], "Mastodon-API servers (Mastodon, "
                      "Pixelfed) whose hashtag timelines are read", item=str),
        "tags": _k(list, ["selfie"], "hashtags to collect, without #", item=str),
        "tokens": _k(dict, {}, "access token per server URL (Pixelfed needs one); a value "
                     "$NAME reads the environment variable NAME"),
        "page_size": _k(int, 40, "statuses per timeline page (the API allows at most 40)"),
        "only_media": _k(bool, True, "ask only for posts with media attachments"),
        "page_interval": _k(float, 3.0, "least seconds between timeline pages (after the "
                            "first) per server: Mastodon allows 300 per 15 minutes"),
        "max_posts": _k(int, 0, "stop after this many new posts per run; 0 = no limit"),
        "concurrency": _k(int, 4, "image downloads at the same time"),
        "timeout": _k(float, 30.0, "seconds to wait for a server to connect or send data"),
        "retries": _k(int, 5, "retries on timeouts, connection errors and 5xx"),
        "backoff": _k(float, 1.0, "first retry delay in seconds; doubles each retry, jittered"),
        "max_wait": _k(float, 900.0, "longest wait for a rate limit, in seconds"),
        "max_bytes": _k(int, 20_000_000, "largest image file accepted, in bytes"),
        "max_pixels": _k(int, 50_000_000, "most pixels an image may have (decompression bombs)"),
        "min_side": _k(int, 128, "smallest width or height an image may have, in pixels"),
        "refresh_home": _k(bool, False, "re-read each post seen on another server from its "
                           "home server (fresher counts; one more request per post)"),
        "user_agent": _k(str, "deepselfie/0.1 (research scraper; honors #nobot and #noindex)",
                         "User-Agent sent with every request"),
        "folder": _k(str, None, "folder source: the folder of images", nullable=True),
        "metadata": _k(str, None, "folder source: the CSV describing the images",
                       nullable=True),
    },
    "faces": {
        "min_face_size": _k(int, 20, "smallest face to find, in pixels of the image as detected"),
        "scale_factor": _k(float, 0.709, "image pyramid step, between 0 and 1"),
        "thresholds": _k(list, [0.6, 0.7, 0.95], "P-Net, R-Net, O-Net score thresholds",
                         item=float),
        "max_side": _k(int, 1024, "detect on a copy whose longer side is at most this; 0 = as is"),
        "batch_size": _k(int, 8, "images per detector batch"),
        "wheel": _k(str, None, "a local facenet-pytorch wheel to convert instead of downloading it",
                    nullable=True),
        "index_url": _k(str, None, "package index for downloading the wheel; null = pip's",
                        nullable=True),
    },
    "crop": {
        "min_scale": _k(float, 0.4, "smallest crop, relative to the largest that fits"),
        "grid_scales": _k(int, 3, "coarse grid: crop scales"),
        "grid_steps": _k(int, 3, "coarse grid: positions along x and along y"),
        "rounds": _k(int, 3, "refinement rounds around the best, each halving the step"),
        "candidates": _k(int, 16, "crops scored per refinement round"),
        "batch_size": _k(int, 32, "most candidates in one forward pass"),
        "rescore": _k(int, 3, "best crops scored again from the full-resolution image"),
        "seed": _k(int, 0, "random seed of the refinement jitter"),
        "out_dir": _k(str, None, "where crops go; default <data_dir>/crops", nullable=True),
    },
    "tsne": {
        "blob": _k(str, "fc7", "the net's blob whose values are the features"),
        "pca_dims": _k(int, 50, "PCA dimensions before t-SNE"),
        "perplexity": _k(float, 30.0, "t-SNE perplexity (lowered for small sets)"),
        "method": _k(str, "auto", "auto (openTSNE when importable), opentsne or sklearn",
                     choices=("auto", "opentsne", "sklearn")),
        "seed": _k(int, 0, "random seed of PCA and t-SNE"),
        "thumb": _k(int, 64, "grid image: pixels per thumbnail"),
        "exact_max": _k(int, 2000, "grid snapping is exact up to this many images, greedy above"),
        "threads": _k(int, 0, "t-SNE threads; 0 = every core above 1000 images, one below"),
        "out_dir": _k(str, None, "where the map goes; default <data_dir>/tsne", nullable=True),
        "cache_dir": _k(str, None, "feature cache; default <data_dir>/cache/features",
                        nullable=True),
    },
    "serve": {
        "host": _k(str, "127.0.0.1", "address to listen on"),
        "port": _k(int, 8000, "port to listen on (0 = any free port)"),
        "reference": _k(str, None, "scores.csv or a folder scored at startup: percentiles "
                        "are among these", nullable=True),
        "max_bytes": _k(int, 20_000_000, "largest upload in bytes (413 above)"),
        "max_pixels": _k(int, 50_000_000, "largest image in pixels (400 above)"),
        "crop": _k(bool, True, "search the best crop of each upload (crop section settings)"),
        "concurrent": _k(int, 8, "uploads decoded and scored at once; more wait their turn"),
    },
}


def schema_defaults() -> dict:
    return {sec: {k: key.default for k, key in keys.items()} for sec, keys in SCHEMA.items()}


class Section(dict):
    """A config section: a dict whose keys also read as attributes."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class Config(dict):
    """The validated configuration: ``cfg.label.min_followers`` or ``cfg["label"]["..."]``."""

    source: str | None = None

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def data_dir(self) -> pathlib.Path:
        return pathlib.Path(os.path.expanduser(self["paths"]["data_dir"]))

    @property
    def models_dir(self) -> pathlib.Path:
        md = self["paths"]["models_dir"]
        return pathlib.Path(os.path.expanduser(md)) if md else self.data_dir / "models"

    @property
    def catalog_path(self) -> pathlib.Path:
        return self.data_dir / "catalog.sqlite"

    @property
    def images_dir(self) -> pathlib.Path:
        return self.data_dir / "images"

    @property
    def runs_dir(self) -> pathlib.Path:
        return self.data_dir / "runs"


def _type_name(t):
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false",
            list: "a list", dict: "a mapping"}[t]


def _check_value(value, key: Key, where: str, name: str):
    """Return value coerced to key's type, or raise UserError naming where and name."""
    if value is None:
        if key.nullable:
            return None
        raise UserError(f"must be {_type_name(key.type)}, not null", path=where, field=name)
    t = key.type
    if t is str and isinstance(value, bool) and {"on", "off"} <= set(key.choices):
        value = "on" if value else "off"   # YAML 1.1 reads a bare on/off as true/false
    ok = isinstance(value, t) and not (t in (int, float) and isinstance(value, bool))
    if t is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise UserError(f"must be {_type_name(t)}, not {value!r}", path=where, field=name)
    if key.choices and value not in key.choices:
        raise UserError(f"must be one of {', '.join(map(str, key.choices))}, not {value!r}",
                        path=where, field=name)
    if t is list and key.item is not None:
        item_key = Key(key.item, None)
        value = [_check_value(v, item_key, where, f"{name}[{i}]") for i, v in enumerate(value)]
    return value


def _unknown(name: str, known, where: str):
    close = difflib.get_close_matches(name, list(known), n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return UserError(f"unknown key{hint}", path=where, field=name)


def _merge(cfg: dict, data, where: str):
    if data is None:
        return
    if not isinstance(data, dict):
        raise UserError("must be a mapping of sections", path=where, field="(top level)")
    for sec, values in data.items():
        if sec not in SCHEMA:
            raise _unknown(str(sec), SCHEMA, where)
        if values is None:
            continue
        if not isinstance(values, dict):
            raise UserError("must be a mapping of keys", path=where, field=str(sec))
        for name, value in values.items():
            full = f"{sec}.{name}"
            if name not in SCHEMA[sec]:
                raise _unknown(full, [f"{sec}.{k}" for k in SCHEMA[sec]], where)
            cfg[sec][name] = _check_value(value, SCHEMA[sec][name], where, full)


def parse_override(text: str):
    """'section.key=value' -> ('section', 'key', value typed like YAML)."""
    if "=" not in text:
        raise UserError("expected section.key=value", path="--set", field=text)
    dotted, raw = text.split("=", 1)
    parts = dotted.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise UserError("expected section.key=value", path="--set", field=text)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise UserError(f"value is not valid YAML ({e.problem})", path="--set", field=dotted)
    return parts[0], parts[1], value


def load_config(path: str | os.PathLike | None = "config.yaml", *, data_dir=None,
                overrides=(), required: bool = False) -> Config:
    """Defaults <- YAML file <- ``--set`` overrides <- ``--data-dir``.

    A missing file is an error when ``required`` (the user named it); otherwise the defaults apply.
    """
    cfg = Config({sec: Section(vals) for sec, vals in schema_defaults().items()})
    if path is not None:
        p = pathlib.Path(path)
        if p.is_file():
            try:
                data = yaml.safe_load(p.read_text(encoding="utf-8"))
            except yaml.YAMLError as e:
                mark = getattr(e, "problem_mark", None)
                loc = f"{p}:{mark.line + 1}:{mark.column + 1}" if mark else str(p)
                raise UserError(f"not valid YAML: {getattr(e, 'problem', e)}", path=loc)
            except (OSError, UnicodeDecodeError) as e:
                raise UserError(f"cannot read: {e}", path=p)
            _merge(cfg, data, str(p))
            cfg.source = str(p)
        elif required or p.exists():
            raise UserError("config file not found", path=p)
    for text in overrides:
        sec, name, value = parse_override(text)
        _merge(cfg, {sec: {name: value}}, "--set")
    if data_dir is not None:
        cfg["paths"]["data_dir"] = str(data_dir)
    return cfg
