"""config.yaml: every path and threshold of every stage, validated against one schema.

The schema below is the single source of keys, types, defaults and allowed ranges; config.yaml at
the project root spells the same defaults out with comments (a test keeps the two equal). Loading
order: schema defaults, then the YAML file, then ``--set section.key=value`` overrides (values typed
like YAML), then the command's own flags (each declares the key it sets, deepselfie.cli.settings),
then ``--data-dir``. Every value, from wherever it comes, passes the same check (``_set``): an
unknown key, a wrong type or a value out of range raises UserError naming where it came from (the
file, ``--set`` or the flag) and the key; rules that tie keys together run once at the end.
"""
from __future__ import annotations

import copy
import difflib
import os
import pathlib
from dataclasses import dataclass
from typing import Callable

import yaml

from .errors import UserError


@dataclass(frozen=True)
class Rule:
    """What a value must be beyond its type: ``ok(value)`` is true, else the error says ``text``."""

    ok: Callable[[object], bool]
    text: str


def at_least(n) -> Rule:
    return Rule(lambda v: v >= n, f"must be >= {n}")


def between(lo, hi, *, open_lo=False, open_hi=False) -> Rule:
    def ok(v):
        return (lo < v if open_lo else lo <= v) and (v < hi if open_hi else v <= hi)
    if open_lo and open_hi:
        words = f"between {lo} and {hi} (exclusive)"
    elif open_lo or open_hi:
        words = f"in {'(' if open_lo else '['}{lo}, {hi}{')' if open_hi else ']'}"
    else:
        words = f"between {lo} and {hi}"
    return Rule(ok, f"must be {words}")


def above(n) -> Rule:
    return Rule(lambda v: v > n, f"must be > {n}")


def zero_or_at_least(n) -> Rule:
    return Rule(lambda v: v == 0 or v >= n, f"must be 0 (no limit) or at least {n}")


EVEN = Rule(lambda v: v >= 2 and v % 2 == 0, "must be an even number >= 2")
PLAIN_NAME = Rule(lambda v: bool(v) and v not in (".", "..") and "/" not in v and "\\" not in v,
                  "must be a plain folder name")
THREE_SCORES = Rule(lambda v: len(v) == 3 and all(0 <= t <= 1 for t in v),
                    "must be three scores between 0 and 1")


@dataclass(frozen=True)
class Key:
    """One setting: its type (int, float, str, bool, list, dict), default, help text and the rule
    its values must pass."""

    type: type
    default: object
    help: str = ""
    nullable: bool = False
    choices: tuple = ()
    item: type | None = None  # element type of a list
    rule: Rule | None = None


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
        "backend": _k(str, "torch", "engine of the nets of train, test, time, score, crop, "
                      "tsne and serve (the face detector always runs on torch)",
                      choices=("torch", "caffe")),
        "device": _k(str, "auto", "auto, cpu, cuda or cuda:N"),
        "fast": _k(bool, False, "bf16 autocast and channels_last (inexact, faster)"),
        "threads": _k(int, 0, "CPU threads for torch; 0 keeps torch's default", rule=at_least(0)),
        "max_blob_bytes": _k(int, 4 << 30, "largest blob a net may allocate, in bytes; a "
                             "prototxt asking for more is refused before allocating",
                             rule=at_least(1)),
        "compile": _k(str, "auto", "compiled inference (inductor, frozen weights): auto compiles "
                      "when the work pays for it", choices=("auto", "on", "off")),
    },
    "score": {
        "model": _k(str, None, "deploy prototxt; null = the model card's", nullable=True),
        "weights": _k(str, None, "trained .caffemodel (from deepselfie train)", nullable=True),
        "mean": _k(str, None, "mean.binaryproto, mean JSON or B,G,R; null = the model card's",
                   nullable=True),
        "resize": _k(str, "trained", "trained (as the model card says), squash, crop or "
                     "oversample", choices=("trained", "squash", "crop", "oversample")),
        "scale": _k(float, None, "input scale after the mean; null = the model card's (else 1)",
                    nullable=True),
        "fast_decode": _k(bool, False, "decode large JPEGs at reduced size (faster, other "
                          "pixels than training saw)"),
        "batch_size": _k(int, 16, "images per forward pass", rule=at_least(1)),
        "prepare": _k(str, "auto", "where images are decoded and prepared while the net runs: "
                      "threads, processes, or auto (processes for large jobs of a net on a "
                      "GPU, on 4 cores or more)",
                      choices=("auto", "threads", "processes")),
        "top": _k(int, 24, "images on the top-N contact sheet", rule=at_least(1)),
        "good_class": _k(int, 1, "softmax index of the 'good' class", rule=at_least(0)),
    },
    "label": {
        "run_name": _k(str, "selfie", "run folder under <data_dir>/runs; the label run's name",
                       rule=PLAIN_NAME),
        "min_age_days": _k(int, 30, "days a post must have been online (created_at to fetched_at)",
                           rule=at_least(0)),
        "min_followers": _k(int, 10, "fewest author followers for an eligible post",
                            rule=at_least(0)),
        "max_followers": _k(int, 100000, "most author followers for an eligible post",
                            rule=at_least(0)),
        "max_tags": _k(int, 10, "most tags for an eligible post", rule=at_least(0)),
        "min_faces": _k(int, 1, "fewest faces in the post's first image; 0 turns the check off",
                        rule=at_least(0)),
        "tag_bonus": _k(float, 0.05, "audience = followers * (1 + tag_bonus * number of tags)",
                        rule=at_least(0)),
        "group_size": _k(int, 100, "posts per audience group (even); top half good, bottom bad",
                         rule=EVEN),
        "train_ratio": _k(float, 0.8, "share of labeled posts for train (split by author)",
                          rule=between(0, 1, open_lo=True)),
        "val_ratio": _k(float, 0.1, "share for val", rule=between(0, 1)),
        "test_ratio": _k(float, 0.1, "share for test", rule=between(0, 1)),
        "seed": _k(int, 0, "seed of the author split, the LMDB order and the fill noise"),
        "new_height": _k(int, 256, "height of the images in the LMDBs", rule=at_least(1)),
        "new_width": _k(int, 256, "width of the images in the LMDBs", rule=at_least(1)),
        "resize_mode": _k(str, "squash", "DIGITS resize mode",
                          choices=("squash", "crop", "fill", "half_crop")),
        "encoding": _k(str, "jpg", "Datum payload: jpg or png (encoded) or raw (BGR pixels)",
                       choices=("jpg", "png", "raw")),
        "jpeg_quality": _k(int, 95, "JPEG quality of encoded records (cv::imencode's default)",
                           rule=between(1, 100)),
        "processes": _k(int, 0, "workers (threads) that decode and encode images; 0 = one per "
                        "CPU", rule=at_least(0)),
        "commit_every": _k(int, 1000, "LMDB records per transaction", rule=at_least(1)),
    },
    "train": {
        "sigint_effect": _k(str, "stop", "what SIGINT (Ctrl-C) does to training",
                            choices=("stop", "snapshot", "none")),
        "sighup_effect": _k(str, "snapshot", "what SIGHUP does to training",
                            choices=("stop", "snapshot", "none")),
        "metrics": _k(bool, True, "write <snapshot_prefix>_metrics.jsonl and _curve.png"),
        "curve_interval_s": _k(float, 10.0, "least seconds between redraws of the curve PNG",
                               rule=at_least(0)),
        "compile": _k(bool, False, "train with the net's forward and backward compiled "
                      "(models.caffe.compiled_train; kernels cached under the data dir's "
                      "cache/inductor); eager where a net cannot compile"),
    },
    "scrape": {
        "source": _k(str, "mastodon", "where posts come from", choices=("mastodon", "folder")),
        "servers": _k(list, ["https://mastodon.social"], "Mastodon-API servers (Mastodon, "
                      "Pixelfed) whose hashtag timelines are read", item=str),
        "tags": _k(list, ["selfie"], "hashtags to collect, without #", item=str),
        "tokens": _k(dict, {}, "access token per server URL (Pixelfed needs one); a value "
                     "$NAME reads the environment variable NAME"),
        "page_size": _k(int, 40, "statuses per timeline page (the API allows at most 40)",
                        rule=between(1, 40)),
        "only_media": _k(bool, True, "ask only for posts with media attachments"),
        "page_interval": _k(float, 3.0, "least seconds between timeline pages (after the "
                            "first) per server: Mastodon allows 300 per 15 minutes",
                            rule=at_least(0)),
        "max_posts": _k(int, 0, "stop after this many new posts per run; 0 = no limit",
                        rule=at_least(0)),
        "max_pages": _k(int, 1000, "most timeline pages per tag and server in one run (the "
                        "next run goes on from there); 0 = no limit", rule=at_least(0)),
        "concurrency": _k(int, 4, "image downloads at the same time", rule=at_least(1)),
        "timeout": _k(float, 30.0, "seconds to wait for a server to connect or send data",
                      rule=above(0)),
        "deadline": _k(float, 120.0, "most seconds one request may take, from sending it to "
                       "the body's last byte (slow senders are cut off)", rule=above(0)),
        "allow_hosts": _k(list, [], "hosts (or host:port) that media and redirects may come "
                          "from although they are not public addresses; the configured "
                          "servers always may", item=str),
        "retries": _k(int, 5, "retries on timeouts, connection errors and 5xx", rule=at_least(0)),
        "backoff": _k(float, 1.0, "first retry delay in seconds; doubles each retry, jittered",
                      rule=at_least(0)),
        "max_wait": _k(float, 900.0, "longest wait for a rate limit, in seconds",
                       rule=at_least(0)),
        "max_bytes": _k(int, 20_000_000, "largest image file accepted, in bytes",
                        rule=at_least(1)),
        "max_pixels": _k(int, 50_000_000, "most pixels an image may have (decompression bombs)",
                         rule=at_least(1)),
        "min_side": _k(int, 128, "smallest width or height an image may have, in pixels",
                       rule=at_least(0)),
        "refresh_home": _k(bool, False, "re-read each post seen on another server from its "
                           "home server (fresher counts; one more request per post)"),
        "user_agent": _k(str, "deepselfie/0.1 (research scraper; honors #nobot and #noindex)",
                         "User-Agent sent with every request"),
        "folder": _k(str, None, "folder source: the folder of images", nullable=True),
        "metadata": _k(str, None, "folder source: the CSV describing the images",
                       nullable=True),
    },
    "fetch": {
        "timeout": _k(float, 30.0, "seconds to wait for a weights server to connect or send",
                      rule=above(0)),
        "deadline": _k(float, 7200.0, "most seconds one weights download may take in all "
                       "(retries included); a rerun resumes what arrived", rule=above(0)),
        "max_bytes": _k(int, 1_000_000_000, "largest download whose size is not published "
                        "(--url with --sha1/--sha256); published files are capped at their size",
                        rule=at_least(1)),
        "retries": _k(int, 5, "retries on a broken connection", rule=at_least(0)),
    },
    "faces": {
        "min_face_size": _k(int, 20, "smallest face to find, in pixels of the image as detected",
                            rule=at_least(1)),
        "scale_factor": _k(float, 0.709, "image pyramid step, between 0 and 1",
                           rule=between(0, 1, open_lo=True, open_hi=True)),
        "thresholds": _k(list, [0.6, 0.7, 0.95], "P-Net, R-Net, O-Net score thresholds",
                         item=float, rule=THREE_SCORES),
        "max_side": _k(int, 1024, "detect on a copy whose longer side is at most this; 0 = as is",
                       rule=zero_or_at_least(12)),
        "batch_size": _k(int, 8, "images per detector batch", rule=at_least(1)),
        "wheel": _k(str, None, "a local facenet-pytorch wheel to convert instead of downloading it",
                    nullable=True),
        "index_url": _k(str, None, "package index for downloading the wheel; null = pip's",
                        nullable=True),
    },
    "crop": {
        "min_scale": _k(float, 0.4, "smallest crop, relative to the largest that fits",
                        rule=between(0, 1, open_lo=True)),
        "grid_scales": _k(int, 3, "coarse grid: crop scales", rule=at_least(1)),
        "grid_steps": _k(int, 3, "coarse grid: positions along x and along y", rule=at_least(1)),
        "rounds": _k(int, 3, "refinement rounds around the best, each halving the step",
                     rule=at_least(0)),
        "candidates": _k(int, 16, "crops scored per refinement round", rule=at_least(1)),
        "batch_size": _k(int, 32, "most candidates in one forward pass", rule=at_least(1)),
        "rescore": _k(int, 3, "best crops scored again from the full-resolution image",
                      rule=at_least(1)),
        "seed": _k(int, 0, "random seed of the refinement jitter"),
        "out_dir": _k(str, None, "where crops go; default <data_dir>/crops", nullable=True),
    },
    "tsne": {
        "blob": _k(str, "fc7", "the net's blob whose values are the features"),
        "pca_dims": _k(int, 50, "PCA dimensions before t-SNE", rule=at_least(1)),
        "perplexity": _k(float, 30.0, "t-SNE perplexity (lowered for small sets)",
                         rule=above(0)),
        "method": _k(str, "auto", "auto (openTSNE when importable), opentsne or sklearn",
                     choices=("auto", "opentsne", "sklearn")),
        "seed": _k(int, 0, "random seed of PCA and t-SNE"),
        "thumb": _k(int, 64, "grid image: pixels per thumbnail", rule=at_least(1)),
        "exact_max": _k(int, 2000, "grid snapping is exact up to this many images, greedy above",
                        rule=at_least(0)),
        "threads": _k(int, 0, "t-SNE threads; 0 = every core above 1000 images, one below",
                      rule=at_least(0)),
        "out_dir": _k(str, None, "where the map goes; default <data_dir>/tsne", nullable=True),
        "cache_dir": _k(str, None, "feature cache; default <data_dir>/cache/features",
                        nullable=True),
    },
    "serve": {
        "host": _k(str, "127.0.0.1", "address to listen on"),
        "port": _k(int, 8000, "port to listen on (0 = any free port)", rule=between(0, 65535)),
        "reference": _k(str, None, "scores.csv or a folder scored at startup: percentiles "
                        "are among these", nullable=True),
        "max_bytes": _k(int, 20_000_000, "largest upload in bytes (413 above)", rule=at_least(1)),
        "max_pixels": _k(int, 50_000_000, "largest image in pixels (400 above)", rule=at_least(1)),
        "crop": _k(bool, True, "search the best crop of each upload (crop section settings)"),
        "concurrent": _k(int, 8, "uploads decoded and scored at once; more wait their turn",
                         rule=at_least(1)),
        "memory_mb": _k(int, 1536, "memory for decoding and scoring uploads at once, in MB "
                        "(from each image's header); uploads wait for room", rule=at_least(1)),
        "body_memory_mb": _k(int, 64, "upload bodies held in memory at once, in MB; more "
                             "are spooled to temporary files", rule=at_least(1)),
        "read_seconds": _k(float, 60.0, "most seconds a client may take to send its upload",
                           rule=above(0)),
        "backlog": _k(int, 128, "connections waiting to be accepted (the listen backlog)",
                      rule=at_least(1)),
    },
}


def _ratio_sum(c) -> float:
    return sum(c["label"][k] for k in ("train_ratio", "val_ratio", "test_ratio"))


# Rules that tie keys together; checked once, after every source of values is merged. Each is
# (the keys it ties, the first named in the error; ok(cfg); what it must be).
CROSS_RULES = [
    (("label.max_followers", "label.min_followers"),
     lambda c: c["label"]["max_followers"] >= c["label"]["min_followers"],
     lambda c: f"must be >= label.min_followers ({c['label']['min_followers']})"),
    (("label.train_ratio", "label.val_ratio", "label.test_ratio"),
     lambda c: abs(_ratio_sum(c) - 1) <= 1e-6,
     lambda c: f"train, val and test ratios must sum to 1, not {_ratio_sum(c):g}"),
]


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

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.origins: dict[str, str] = {}   # "section.key" -> where its value came from

    def with_settings(self, values: dict, where: str) -> "Config":
        """A copy with {"section.key": value} set through the same checks as ``--set``; None
        values are left out (they mean "keep the config's"), paths become strings."""
        new = Config({sec: Section(copy.deepcopy(dict(vals))) for sec, vals in self.items()})
        new.source, new.origins = self.source, dict(self.origins)
        for dotted, value in values.items():
            if value is not None:
                _set(new, dotted, os.fspath(value) if isinstance(value, os.PathLike) else value,
                     where)
        check_cross_rules(new)
        return new

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
    if key.rule is not None and not key.rule.ok(value):
        raise UserError(f"{key.rule.text}, not {value!r}", path=where, field=name)
    return value


def _unknown(name: str, known, where: str):
    close = difflib.get_close_matches(name, list(known), n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return UserError(f"unknown key{hint}", path=where, field=name)


def _set(cfg: "Config", dotted: str, value, where: str):
    """The one way a value enters the config: key known, type right, rule passed."""
    sec, _, name = dotted.partition(".")
    if sec not in SCHEMA:
        raise _unknown(sec, SCHEMA, where)
    if name not in SCHEMA[sec]:
        raise _unknown(dotted, [f"{sec}.{k}" for k in SCHEMA[sec]], where)
    cfg[sec][name] = _check_value(value, SCHEMA[sec][name], where, dotted)
    cfg.origins[dotted] = where


def _merge(cfg: "Config", data, where: str):
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
            _set(cfg, f"{sec}.{name}", value, where)


def check_cross_rules(cfg: "Config"):
    for keys, ok, text in CROSS_RULES:
        if not ok(cfg):
            wheres = [cfg.origins[k] for k in keys if k in cfg.origins]
            raise UserError(text(cfg), path=wheres[-1] if wheres else cfg.source or "config",
                            field=keys[0])


MAX_CONFIG_BYTES = 1 << 20      # a config is a page of settings; more is not one


class _Loader(yaml.SafeLoader):
    """YAML's safe loader, but a key given twice in one mapping is an error (PyYAML keeps the
    last one silently: half a config would be ignored without a word)."""


def _mapping_once(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:      # the keys written here (a merged << may be overridden)
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=deep)
        try:
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} is given twice", key_node.start_mark)
            seen.add(key)
        except TypeError:       # an unhashable key: construct_mapping says so
            break
    return loader.construct_mapping(node, deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_once)


def _yaml(text: str):
    """``text`` parsed as YAML (the safe subset, keys once); RecursionError for nesting past
    Python's stack (the callers say so in one line)."""
    return yaml.load(text, Loader=_Loader)


def parse_override(text: str):
    """'section.key=value' -> ('section', 'key', value typed like YAML)."""
    if "=" not in text:
        raise UserError("expected section.key=value", path="--set", field=text)
    dotted, raw = text.split("=", 1)
    parts = dotted.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise UserError("expected section.key=value", path="--set", field=text)
    try:
        value = _yaml(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise UserError(f"value is not valid YAML ({getattr(e, 'problem', e)})", path="--set",
                        field=dotted) from None
    except RecursionError:
        raise UserError("value is nested too deeply", path="--set", field=dotted) from None
    return parts[0], parts[1], value


def load_config(path: str | os.PathLike | None = "config.yaml", *, data_dir=None,
                overrides=(), settings=(), required: bool = False) -> Config:
    """Defaults <- YAML file <- ``--set`` overrides <- ``settings`` <- ``--data-dir``.

    ``settings`` are (where, "section.key", value) triples: the flags a command was given
    (deepselfie.cli.settings), each checked exactly as a ``--set`` value and named by ``where``.

    A missing file is an error when ``required`` (the user named it); otherwise the defaults apply.
    """
    cfg = Config({sec: Section(vals) for sec, vals in schema_defaults().items()})
    if path is not None:
        p = pathlib.Path(path)
        if p.is_file():
            try:
                size = p.stat().st_size
                if size > MAX_CONFIG_BYTES:
                    raise UserError(f"is {size:,} bytes; a config file is at most "
                                    f"{MAX_CONFIG_BYTES:,}", path=p)
                data = _yaml(p.read_text(encoding="utf-8"))
            except yaml.YAMLError as e:
                mark = getattr(e, "problem_mark", None)
                loc = f"{p}:{mark.line + 1}:{mark.column + 1}" if mark else str(p)
                raise UserError(f"not valid YAML: {getattr(e, 'problem', e)}", path=loc) from None
            except RecursionError:
                raise UserError("not a config: nested too deeply", path=p) from None
            except (OSError, UnicodeDecodeError) as e:
                raise UserError(f"cannot read: {e}", path=p) from None
            _merge(cfg, data, str(p))
            cfg.source = str(p)
        elif required or p.exists():
            raise UserError("config file not found", path=p)
    for text in overrides:
        sec, name, value = parse_override(text)
        _set(cfg, f"{sec}.{name}", value, "--set")
    for where, dotted, value in settings:
        _set(cfg, dotted, value, where)
    if data_dir is not None:
        cfg["paths"]["data_dir"] = str(data_dir)
    check_cross_rules(cfg)
    return cfg
