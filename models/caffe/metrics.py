"""A training run's metrics on disk as it trains: a JSON-lines file (one record per display, test
and snapshot, as the solver emits them) and a PNG of the curves (loss, test outputs, learning
rate), redrawn at most every ``min_interval_s`` seconds and once more at the end.

Resuming from iteration N keeps the records up to N and drops later ones (they belonged to the
run being replaced), so the file and the plot tell one continuous story.
"""
from __future__ import annotations

import json
import pathlib
import time

from .atomic import atomic_path, atomic_write


class TrainingMonitor:
    """A solver listener: ``solver.add_listener(TrainingMonitor(jsonl, png, start_iter))``."""

    def __init__(self, jsonl_path, png_path=None, *, start_iter: int = 0,
                 min_interval_s: float = 10.0):
        self.jsonl_path = pathlib.Path(jsonl_path)
        self.png_path = pathlib.Path(png_path) if png_path else None
        self.min_interval_s = float(min_interval_s)
        self.records = self._kept_records(start_iter)
        self.jsonl_path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write_text(self.jsonl_path, "".join(json.dumps(r) + "\n" for r in self.records))
        self._file = open(self.jsonl_path, "a", encoding="utf-8")
        self._last_draw = 0.0
        self._dirty = False

    def _kept_records(self, start_iter):
        if start_iter <= 0 or not self.jsonl_path.exists():
            return []
        kept = []
        for line in self.jsonl_path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:      # a line cut short by a crash
                continue
            if record.get("iter", 0) <= start_iter:
                kept.append(record)
        return kept

    def __call__(self, record: dict):
        self.records.append(record)
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        self._dirty = True
        if self.png_path and time.monotonic() - self._last_draw >= self.min_interval_s:
            self.draw()

    def close(self):
        if self._dirty and self.png_path:
            self.draw()
        self._file.close()

    def draw(self):
        """Redraw the PNG (atomically replaced, so a viewer never sees half a file)."""
        self._last_draw = time.monotonic()
        self._dirty = False
        fig = plot_records(self.records)
        if fig is None:
            return
        with atomic_path(self.png_path) as tmp:
            fig.savefig(tmp, dpi=90, format="png")
            import matplotlib.pyplot as plt
            plt.close(fig)


def plot_records(records):
    """A figure with the smoothed train loss and the test losses, the other test outputs (such as
    accuracy), and the learning rate, against the iteration; None when there is nothing yet."""
    train = [r for r in records if r.get("event") == "train"]
    tests = [r for r in records if r.get("event") == "test"]
    if not train and not tests:
        return None
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_out, ax_lr) = plt.subplots(3, 1, figsize=(8, 9), sharex=True)
    if train:
        ax_loss.plot([r["iter"] for r in train], [r["loss"] for r in train],
                     label="train loss (smoothed)")
    for name, points in _series(tests, losses=True).items():
        ax_loss.plot(*zip(*points), marker="o", label=f"test {name}")
    ax_loss.set_ylabel("loss")
    for name, points in _series(tests, losses=False).items():
        ax_out.plot(*zip(*points), marker="o", label=f"test {name}")
    ax_out.set_ylabel("test outputs")
    lr = [(r["iter"], r["lr"]) for r in train if r.get("lr") is not None]
    if lr:
        ax_lr.plot(*zip(*lr), color="tab:green", drawstyle="steps-post")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("iteration")
    for ax in (ax_loss, ax_out):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    return fig


def _series(tests, losses: bool) -> dict:
    """{"#net name": [(iter, value)]} for scalar test outputs that are (or are not) losses."""
    out: dict = {}
    for r in tests:
        weights = r.get("loss_weights", {})
        for name, value in r.get("outputs", {}).items():
            if isinstance(value, list) or (name in weights) != losses:
                continue
            key = f"#{r.get('net', 0)} {name}" if r.get("net", 0) else name
            out.setdefault(key, []).append((r["iter"], value))
    return out


def _atomic_write_text(path: pathlib.Path, text: str):
    atomic_write(path, text)
