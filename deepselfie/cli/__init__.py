"""``deepselfie``: one command, a subcommand per stage.

Each stage module registers its subcommands with ``register(subparsers, common)`` and gives each a
``func(args, cfg) -> int | None``. Stage modules import their heavy dependencies inside ``func`` so
that ``deepselfie --help`` stays fast. A UserError (or the runtime's CaffeError) ends in one line
on stderr and exit code 2.

Options that are settings are declared with ``settings.add_setting(parser, "--flag", key=...)``:
main merges the flags given into the config (after the file and --set) before the command runs,
so a command reads its settings from ``cfg`` only. A command that builds Caffe nets says so with
``parser.set_defaults(nets=ANY_ENGINE)`` (or ``TORCH_ENGINE``); main then applies ``runtime.*``
(backend, threads) once, before the command runs.
"""
from __future__ import annotations

import argparse
import importlib
import sys

import logging

from deepselfie import __version__
from deepselfie.config import load_config
from deepselfie.console import setup_logging
from deepselfie.errors import CaffeError, UserError
from models.caffe.limits import set_max_blob_bytes

from .settings import given_settings

log = logging.getLogger("deepselfie")

ANY_ENGINE = "any"      # the command's nets run on runtime.backend
TORCH_ENGINE = "torch"  # the command needs the torch engine (it feeds torch tensors to its nets)

# The modules that register subcommands, in the order --help lists them.
STAGE_MODULES = [
    "deepselfie.cli.scrape",  # scrape, catalog
    "deepselfie.cli.faces",   # faces
    "deepselfie.cli.label",   # label
    "deepselfie.cli.caffe",   # train, test, time: Caffe's tool
    "deepselfie.cli.score",   # score, fetch-weights
    "deepselfie.cli.beyond",  # crop, tsne, serve
    "deepselfie.cli.demo",    # demo
]


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``deepselfie train: error: ... (see --help)``, exit 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def common_options() -> argparse.ArgumentParser:
    """The global options every stage takes."""
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("global options")
    g.add_argument("--config", metavar="FILE", default=None,
                   help="config file (default: config.yaml when present, else built-in defaults)")
    g.add_argument("--data-dir", metavar="DIR", default=None,
                   help="where the catalog, images, LMDBs and runs go (default: paths.data_dir)")
    g.add_argument("--set", metavar="SECTION.KEY=VALUE", action="append", default=[],
                   dest="overrides", help="override a config value (repeatable; typed like YAML)")
    g.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    g.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    return common


def _register_config(sub, common):
    p = sub.add_parser("config", parents=[common], help="show the effective configuration",
                       description="Print the validated configuration (defaults, config file, "
                                   "--set overrides) as YAML, or one value with --get.")
    p.add_argument("--get", metavar="SECTION.KEY", help="print one value")
    p.set_defaults(func=_run_config)


def _run_config(args, cfg):
    import json

    import yaml
    if args.get:
        sec, _, key = args.get.partition(".")
        if sec not in cfg or key not in cfg[sec]:
            raise UserError("no such key", path="--get", field=args.get)
        value = cfg[sec][key]
        print(value if isinstance(value, str) else json.dumps(value))
        return 0
    print(f"# effective configuration (from {cfg.source or 'built-in defaults'})")
    print(yaml.safe_dump({k: dict(v) for k, v in cfg.items()}, sort_keys=False).rstrip())
    return 0


def build_parser() -> Parser:
    parser = Parser(prog="deepselfie",
                    description="What a deep neural network thinks about your #selfie: "
                                "scrape, filter faces, label, train and score.")
    parser.add_argument("--version", action="version", version=f"deepselfie {__version__}")
    sub = parser.add_subparsers(title="stages", dest="command", metavar="COMMAND",
                                parser_class=Parser)
    common = common_options()
    _register_config(sub, common)
    for name in STAGE_MODULES:
        importlib.import_module(name).register(sub, common)
    return parser


def config_for(args):
    """The command's configuration: defaults <- config file <- --set <- its flags <- --data-dir."""
    return load_config(args.config or "config.yaml", data_dir=args.data_dir,
                       overrides=args.overrides, settings=given_settings(args),
                       required=args.config is not None)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    setup_logging(args.verbose, args.quiet)
    prog = f"deepselfie {args.command}"
    try:
        cfg = config_for(args)
        set_max_blob_bytes(cfg.runtime.max_blob_bytes)   # every net any command builds
        if getattr(args, "nets", None):
            apply_runtime(cfg, args.nets)
        rc = args.func(args, cfg)
    except CaffeError as e:   # the runtime's, or the application's UserError
        print(f"{prog}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


def apply_runtime(cfg, engine: str = ANY_ENGINE) -> None:
    """runtime.backend and runtime.threads, for a command that builds Caffe nets: the one place
    they take effect (device and fast mode go to each net; the runtime's global mode stays)."""
    from models.caffe import backend
    name = cfg.runtime.backend
    if engine == TORCH_ENGINE and name != "torch":
        log.warning("runtime.backend %s: this command's nets run on the torch engine", name)
        name = "torch"
    if name == "caffe" and not backend.available():
        raise UserError("caffe: real pycaffe is not importable here; build BVLC Caffe's python "
                        "module, or set runtime.backend: torch",
                        path=cfg.origins.get("runtime.backend") or cfg.source or "config",
                        field="runtime.backend")
    backend.set_backend(name)
    if cfg.runtime.threads > 0:
        import torch
        torch.set_num_threads(cfg.runtime.threads)


if __name__ == "__main__":
    sys.exit(main())
