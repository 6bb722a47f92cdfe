"""Command-line flags that set config keys: the one path from an option to a setting.

    add_setting(parser, "--batch-size", key="score.batch_size", help="images per forward pass")

declares that ``--batch-size N`` sets ``score.batch_size``. The flag's type, its choices (shown in
--help) and, for a bool key, its ``--x/--no-x`` pair come from the config schema. A flag that is
given is merged into the config after the file and ``--set`` (so it wins, ``0`` and ``false``
included) and passes the schema's checks like any other value (``deepselfie.config._set``); a flag
not given leaves the config's value. Commands then read their settings from ``cfg`` only.

A list key's flag is repeatable: each use adds one item, and the items given replace the config's
list. Spellings are the caller's (``-fast`` and ``--fast`` both work for Caffe's tool).
"""
from __future__ import annotations

import argparse

from deepselfie.config import SCHEMA

GIVEN = "_settings_given"    # args attribute: {"section.key": (value, flag as typed)}


def schema_key(key: str):
    sec, _, name = key.partition(".")
    try:
        return SCHEMA[sec][name]
    except KeyError:
        raise ValueError(f"add_setting: {key!r} is not a config key") from None


class _SetKey(argparse.Action):
    """Records the value under the key it sets; nothing is stored for flags not given."""

    def __init__(self, option_strings, dest, *, key, **kw):
        self.key = key
        self.schema = schema_key(key)
        if self.schema.type is bool:
            option_strings = list(option_strings) + [
                "--no-" + s[2:] for s in option_strings if s.startswith("--")]
            kw["nargs"] = 0
        super().__init__(option_strings, dest, default=argparse.SUPPRESS, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        given = dict(getattr(namespace, GIVEN, None) or {})
        if self.schema.type is bool:
            value = not option_string.startswith("--no-")
        elif self.schema.type is list:
            before = given.get(self.key, ([], None))[0]
            value = before + [values]
        else:
            value = values
        given[self.key] = (value, option_string)
        setattr(namespace, GIVEN, given)

    def format_usage(self):
        return " | ".join(self.option_strings)


def add_setting(parser, *flags: str, key: str, help: str = "", metavar=None, **kw):
    """Add an option (``flags``, e.g. "--batch-size" or "-model", "--model") that sets config key
    ``key`` ("section.name") when given. ``help`` (the key's own help text when empty) is
    shown with the key appended."""
    k = schema_key(key)
    help = help or k.help
    if k.type in (int, float):
        kw.setdefault("type", k.type)
    elif k.type is list and k.item in (int, float):
        kw.setdefault("type", k.item)
    if k.choices and metavar is None:
        metavar = "{" + ",".join(map(str, k.choices)) + "}"
    if metavar is None:
        metavar = max(flags, key=len).lstrip("-").upper().replace("-", "_")
    if k.type is not bool:
        kw["metavar"] = metavar
    text = f"{help} ({key})" if key not in help else help
    dest = "setting:" + key
    return parser.add_argument(*flags, action=_SetKey, key=key, dest=dest, help=text, **kw)


def given_settings(args) -> list:
    """The settings the command line gave, as load_config's (where, key, value) triples."""
    given = getattr(args, GIVEN, None) or {}
    return [(flag, key, value) for key, (value, flag) in given.items()]


def as_set_options(args) -> list:
    """The given settings again, as ``--set key=value`` options (for a relaunched command);
    placed after the user's own --set options they keep their precedence."""
    import json
    out = []
    for _, key, value in given_settings(args):
        out += ["--set", f"{key}={json.dumps(value)}"]
    return out
