"""The demo report's own sections (what pictures.html_report adds above its sheets): how the
demo was made, the stages' summaries as a table, the held-out accuracy, the training curve and
the score by cue. Every value is HTML-escaped: a post, a file name or a server's answer can hold
any text."""
from __future__ import annotations

import html
import math

# Nested summaries (a stage's reasons, label's splits) are shown this many tables deep; deeper
# parts are written out as text.
MAX_DEPTH = 4

STAGES_STYLE = ("<style>.stages th,.stages td{text-align:left;vertical-align:top;"
                "padding:2px 8px}.stages>tbody>tr>*{border-top:1px solid #444}"
                ".kv th{font-weight:normal;color:#aaa}</style>")

MADE_HOW = (
    "<p>The posts, authors, followers, tags, dates and likes are <b>synthetic</b>: images "
    "are made from real portraits (scikit-image's astronaut, matplotlib's Grace Hopper) "
    "and photos without people, and each post's expected likes follow the cues the "
    "article reports (face about a third of the frame, filters, borders, good light, no "
    "groups, not too close) plus noise. Every stage ran through the same code a real run "
    "uses; only the Mastodon server was local.</p>")


def _text(value) -> str:
    """One value as escaped text: floats to 4 significant digits."""
    if isinstance(value, float) and math.isfinite(value) and not value.is_integer():
        value = f"{value:.4g}"
    return html.escape(str(value))


def value_html(value, depth: int = 0) -> str:
    """A summary value as HTML: a dict as a key/value table, a list as comma-separated items,
    anything else as escaped text."""
    if isinstance(value, dict) and value and depth < MAX_DEPTH:
        rows = "".join(f"<tr><th>{_text(k)}</th><td>{value_html(v, depth + 1)}</td></tr>"
                       for k, v in value.items())
        return f"<table class='kv'>{rows}</table>"
    if isinstance(value, (list, tuple)) and depth < MAX_DEPTH:
        return ", ".join(value_html(v, depth + 1) for v in value)
    return _text(value)


def stages_table(stages: dict) -> str:
    """One row per stage, its summary's keys and values beside it."""
    rows = []
    for stage, summary in stages.items():
        items = list(summary.items()) if isinstance(summary, dict) else [("", summary)]
        for i, (key, value) in enumerate(items or [("", "")]):
            head = (f"<th rowspan='{len(items)}'>{_text(stage)}</th>" if i == 0 else "")
            rows.append(f"<tr>{head}<td>{_text(key)}</td><td>{value_html(value)}</td></tr>")
    return (STAGES_STYLE + "<table class='stages'><tr><th>stage</th><th>what</th>"
            "<th>value</th></tr>" + "".join(rows) + "</table>")


def cue_table(table) -> str:
    """The held-out images' mean score with and without each cue."""
    rows = "".join(
        f"<tr><td>{_text(r['cue'])}</td><td>{r['with']:.3f}</td><td>{r['without']:.3f}</td>"
        f"<td>{int(r['n_with'])}</td><td>{r['effect_on_likes']:+.2f}</td></tr>" for r in table)
    return ("<img src='cues.png'><table><tr><th>cue</th><th>with</th><th>without</th>"
            "<th>images with</th><th>effect on likes (log)</th></tr>" + rows + "</table>")


def sections(stages: dict, *, accuracy: float, n_test: int, curve: bool, cues) -> list:
    """(heading, html) blocks for pictures.html_report."""
    return [
        ("How this demo was made", MADE_HOW),
        ("Stages", stages_table(stages)),
        ("Held-out accuracy",
         f"<p><b>{accuracy:.1%}</b> of the {int(n_test)} test-split images (authors the net "
         "never trained on) are on the right side of 0.5.</p>"),
        ("Training", "<img src='training_curve.png'>" if curve else "<p>(no curve)</p>"),
        ("Score by cue", cue_table(cues)),
    ]
