"""``deepselfie train | test | time``: Caffe's command-line tool, with the caffe tool's flags
(single-dash spellings too: ``deepselfie train -solver s.prototxt -weights w.caffemodel``):

    deepselfie train --solver S [--weights W1,W2 | --snapshot X.solverstate] [--gpu 0|0,1|all]
                     [--backend torch|caffe] [--fast] [--sigint_effect E] [--sighup_effect E]
    deepselfie test  --model M --weights W [--iterations 50] [--gpu 0]
    deepselfie time  --model M [--iterations 50] [--gpu 0]

--backend, --fast, --sigint_effect and --sighup_effect set runtime.backend, runtime.fast and
train.* (deepselfie.cli.settings). This module stays light (--help imports it); the runtime comes
in when a command runs.
"""
from __future__ import annotations

from deepselfie.console import summary

from . import ANY_ENGINE
from .settings import add_setting, as_set_options


def _flag(parser, name, **kw):
    """An option spelled both ways: Caffe's ``-name`` and the usual ``--name``."""
    parser.add_argument(f"-{name}", f"--{name}", dest=name, **kw)


def _setting(parser, name, key, help):
    """A config setting spelled both ways."""
    add_setting(parser, f"-{name}", f"--{name}", key=key, help=help)


def register(subparsers, common):
    t = subparsers.add_parser(
        "train", parents=[common], help="train a net from a Caffe solver prototxt (caffe train)",
        description="Train as `caffe train` does: the solver prototxt drives everything; paths "
                    "in it are relative to the working directory. Snapshots, the log, the "
                    "metrics (JSON lines) and the training-curve PNG go beside snapshot_prefix.")
    _flag(t, "solver", required=True, metavar="SOLVER.prototxt", help="the solver definition")
    _flag(t, "weights", metavar="W1[,W2...]",
          help="fine-tune from these .caffemodel files (layers matched by name)")
    _flag(t, "snapshot", metavar="X.solverstate", help="resume training from a solver state")
    _device_flags(t)
    _setting(t, "backend", "runtime.backend", "torch (this runtime) or caffe (real pycaffe)")
    _setting(t, "sigint_effect", "train.sigint_effect",
             "on SIGINT (Ctrl-C): stop (then snapshot_after_train writes a snapshot), snapshot "
             "and go on, or none")
    _setting(t, "sighup_effect", "train.sighup_effect", "on SIGHUP")
    t.set_defaults(func=run_train)

    s = subparsers.add_parser(
        "test", parents=[common], help="score a trained net on its TEST phase (caffe test)",
        description="Run the TEST phase of a net for N batches and print each output averaged "
                    "over them, as `caffe test` does.")
    _flag(s, "model", required=True, metavar="NET.prototxt", help="the net definition")
    _flag(s, "weights", required=True, metavar="W1[,W2...]", help="the trained .caffemodel")
    _flag(s, "iterations", type=int, default=50, metavar="N", help="batches to run (50)")
    _device_flags(s)
    s.set_defaults(func=run_test)

    m = subparsers.add_parser(
        "time", parents=[common], help="time a net's layers forward and backward (caffe time)",
        description="Run forward and backward passes of a net (TRAIN phase) and print each "
                    "layer's average forward and backward time, as `caffe time` does.")
    _flag(m, "model", required=True, metavar="NET.prototxt", help="the net definition")
    _flag(m, "iterations", type=int, default=50, metavar="N", help="passes to time (50)")
    _device_flags(m)
    m.set_defaults(func=run_time)


def _device_flags(p):
    _flag(p, "gpu", metavar="0|0,1|all", default=None,
          help="GPU ids, or all (falls back to the CPU with a warning when CUDA is missing); "
               "default: the solver's solver_mode, else runtime.device")
    _setting(p, "fast", "runtime.fast", "bf16 autocast and channels_last (faster, not "
             "bit-exact); --no-fast: exact")
    _flag(p, "level", type=int, default=0, help="the net state's level (0)")
    _flag(p, "stage", default="", metavar="S1,S2", help="the net state's stages")
    p.set_defaults(nets=ANY_ENGINE)


# ---------------------------------------------------------------- CLI glue

def run_train(args, cfg):
    from models.caffe.tool import train
    _write_model_card(args.solver)
    result = train(
        args.solver, weights=args.weights, snapshot=args.snapshot, gpu=args.gpu,
        backend=cfg.runtime.backend, fast=cfg.runtime.fast,
        sigint_effect=cfg.train.sigint_effect, sighup_effect=cfg.train.sighup_effect,
        level=args.level, stages=_stages(args.stage), default_device=cfg.runtime.device,
        metrics=cfg.train.metrics, curve_interval_s=cfg.train.curve_interval_s,
        relaunch_argv=_relaunch_argv(args), report=summary, compile=cfg.train.compile,
        compile_cache=cfg.data_dir / "cache" / "inductor")
    return result if isinstance(result, int) else 0


def _write_model_card(solver):
    """The model card beside the snapshots (models.selfie.card), so that score, crop, tsne and
    serve need only --weights. A net the card cannot describe trains all the same."""
    from deepselfie.console import get_logger
    from deepselfie.errors import UserError
    from models.selfie.card import write_card
    log = get_logger("train")
    try:
        path = write_card(solver)
    except (UserError, OSError) as e:
        log.warning("no model card written: %s", e)
        return
    if path is None:
        log.warning("no model card written: the TEST net has no Data layer to describe")
    else:
        log.info("model card: %s", path)


def run_test(args, cfg):
    from models.caffe.tool import test
    test(args.model, args.weights, args.iterations, gpu=args.gpu,
         fast=cfg.runtime.fast, level=args.level,
         stages=_stages(args.stage), default_device=cfg.runtime.device, report=summary,
         compile=cfg.runtime.compile, compile_cache=cfg.data_dir / "cache" / "inductor")
    return 0


def run_time(args, cfg):
    from models.caffe.tool import time_model
    time_model(args.model, args.iterations, gpu=args.gpu, fast=cfg.runtime.fast, level=args.level,
               stages=_stages(args.stage), default_device=cfg.runtime.device,
               report=summary)
    return 0


def _stages(text):
    return [s for s in (text or "").split(",") if s]


def _relaunch_argv(args) -> list:
    """This train command again, for the per-GPU processes (the global options go after the
    command name: they belong to each command's parser)."""
    argv = ["-m", "deepselfie", "train", "--solver", args.solver]
    if args.config:
        argv += ["--config", args.config]
    if args.data_dir:
        argv += ["--data-dir", args.data_dir]
    for item in args.overrides:
        argv += ["--set", item]
    argv += as_set_options(args)            # the settings flags, after --set as they were
    argv += ["-v"] * args.verbose + (["-q"] if args.quiet else [])
    for name in ("weights", "snapshot", "gpu"):
        value = getattr(args, name)
        if value is not None:
            argv += [f"--{name}", str(value)]
    argv += ["--level", str(args.level)]
    if args.stage:
        argv += ["--stage", args.stage]
    return argv
