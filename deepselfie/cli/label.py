"""``deepselfie label``: labels, author-disjoint splits, LMDBs and the mean (see label.stage)."""

from .settings import add_setting


def register(subparsers, common):
    p = subparsers.add_parser(
        "label", parents=[common], help="label posts by like rank and write the Caffe LMDBs",
        description="Label eligible posts good/bad by like rank within audience groups, split "
                    "them by author and write train/val/test LMDBs of Caffe Datum, list files, "
                    "labels.csv and the train mean into <data_dir>/runs/<label.run_name>/. "
                    "Thresholds and sizes come from the label section of config.yaml "
                    "(--set label.KEY=VALUE overrides). Rerunning resumes or reuses what is "
                    "already written.")
    add_setting(p, "--run", key="label.run_name", metavar="NAME",
                help="run folder name under <data_dir>/runs")
    p.set_defaults(func=run)


def run(args, cfg):
    from label.stage import run_label
    run_label(cfg)
    return 0
