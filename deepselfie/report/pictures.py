"""Pictures of a ranking: contact sheets (top N, worst N), the best-to-worst continuum, the score
histogram and an HTML report that puts them together."""
from __future__ import annotations

import html
import pathlib

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from deepselfie.files import atomic_path, atomic_write

from models.selfie.score import UnreadableImage, load_bgr


def thumbnail(path, size: int) -> Image.Image:
    """A square thumbnail: the center square of the image, resized."""
    try:
        rgb = load_bgr(path)[:, :, ::-1]
    except UnreadableImage:
        return Image.new("RGB", (size, size), (128, 128, 128))
    h, w = rgb.shape[:2]
    side = min(h, w)
    y, x = (h - side) // 2, (w - side) // 2
    return Image.fromarray(np.ascontiguousarray(rgb[y:y + side, x:x + side])).resize(
        (size, size), Image.BILINEAR)


def _font(size):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def score_color(score: float) -> tuple:
    """Red (0) through yellow to green (1)."""
    s = min(1.0, max(0.0, float(score)))
    return (int(255 * min(1, 2 * (1 - s))), int(255 * min(1, 2 * s)), 40)


def contact_sheet(items, cols: int = 6, thumb: int = 160, label: bool = True,
                  pad: int = 4) -> Image.Image:
    """A grid of thumbnails for [(path, score)], row by row, each with its score."""
    items = list(items)
    cols = max(1, min(cols, len(items) or 1))
    rows = max(1, -(-len(items) // cols))
    bar = 18 if label else 0
    sheet = Image.new("RGB", (cols * (thumb + pad) + pad, rows * (thumb + bar + pad) + pad),
                      (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    font = _font(12)
    for i, (path, score) in enumerate(items):
        r, c = divmod(i, cols)
        x, y = pad + c * (thumb + pad), pad + r * (thumb + bar + pad)
        sheet.paste(thumbnail(path, thumb), (x, y))
        if label:
            draw.rectangle([x, y + thumb, x + thumb - 1, y + thumb + bar - 1],
                           fill=score_color(score))
            draw.text((x + 4, y + thumb + 3), f"{i + 1}. {score:.3f}", fill=(0, 0, 0), font=font)
    return sheet


def continuum(items, cols: int = 20, thumb: int = 64) -> Image.Image:
    """Every image from best to worst, row by row, as the article shows its test set."""
    return contact_sheet(items, cols=cols, thumb=thumb, label=False, pad=1)


def histogram(scores, out, title="score distribution"):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    ax.hist(np.asarray(scores, dtype=float), bins=20, range=(0, 1), color="#4a90d9")
    ax.set_xlabel("P(good)")
    ax.set_ylabel("images")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def save_image(img: Image.Image, out) -> pathlib.Path:
    out = pathlib.Path(out)
    with atomic_path(out) as tmp:
        img.save(tmp, format=Image.registered_extensions().get(out.suffix.lower(), "PNG"))
    return out


def html_report(out_dir, results, failed=(), *, title="deepselfie scores", top=24,
                worst=24, sections=()) -> pathlib.Path:
    """index.html with the top-N and worst-N sheets, the continuum, the histogram and a table
    of every image (thumbnails in thumbs/). ``sections`` adds (heading, html) blocks."""
    out_dir = pathlib.Path(out_dir)
    (out_dir / "thumbs").mkdir(parents=True, exist_ok=True)
    results = list(results)
    save_image(contact_sheet(results[:top]), out_dir / "top.jpg")
    if worst:
        save_image(contact_sheet(results[::-1][:worst]), out_dir / "worst.jpg")
    save_image(continuum(results), out_dir / "continuum.jpg")
    histogram([s for _, s in results], out_dir / "histogram.png")
    rows = []
    for i, (path, score) in enumerate(results):
        name = f"{i:05d}.jpg"
        save_image(thumbnail(path, 96), out_dir / "thumbs" / name)
        rows.append(f"<tr><td>{i + 1}</td><td><img src='thumbs/{name}' width=96 height=96>"
                    f"</td><td style='color:rgb{score_color(score)}'>{score:.4f}</td>"
                    f"<td>{html.escape(str(path))}</td></tr>")
    skipped = "".join(f"<li>{html.escape(str(p))}: {html.escape(r)}</li>" for p, r in failed)
    extra = "".join(f"<h2>{html.escape(h)}</h2>{body}" for h, body in sections)
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;background:#111;color:#eee;margin:2em}}
img{{max-width:100%}} table{{border-collapse:collapse}} td{{padding:2px 8px}}
a{{color:#8cf}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{len(results)} images scored{f", {len(failed)} skipped" if failed else ""}.
Score = the net's probability that the photo is a "good" (well liked) one.</p>
{extra}
<h2>Best {min(top, len(results))}</h2><img src="top.jpg">
{f'<h2>Worst {min(worst, len(results))}</h2><img src="worst.jpg">' if worst else ''}
<h2>Best to worst</h2><img src="continuum.jpg">
<h2>Distribution</h2><img src="histogram.png">
<h2>Every image</h2><table><tr><th>rank</th><th></th><th>score</th><th>file</th></tr>
{''.join(rows)}</table>
{f'<h2>Skipped</h2><ul>{skipped}</ul>' if failed else ''}
</body></html>
"""
    return atomic_write(out_dir / "index.html", page)


def side_by_side(image_bgr: np.ndarray, box, original_score: float, crop_bgr: np.ndarray,
                 crop_score: float, height: int = 400) -> Image.Image:
    """Original (with the crop box drawn) | best crop, both at ``height``, scores printed."""
    pad, bar = 8, 26
    left = Image.fromarray(np.ascontiguousarray(image_bgr[:, :, ::-1]))
    right = Image.fromarray(np.ascontiguousarray(crop_bgr[:, :, ::-1]))
    f = height / left.height
    left = left.resize((max(1, round(left.width * f)), height), Image.BILINEAR)
    right = right.resize((max(1, round(right.width * height / right.height)), height),
                         Image.BILINEAR)
    x, y, w, h = box
    draw = ImageDraw.Draw(left)
    line = max(2, height // 150)
    draw.rectangle([x * f, y * f, (x + w) * f - 1, (y + h) * f - 1], outline=(255, 220, 0),
                   width=line)
    sheet = Image.new("RGB", (left.width + right.width + 3 * pad, height + bar + 2 * pad),
                      (24, 24, 24))
    sheet.paste(left, (pad, pad))
    sheet.paste(right, (left.width + 2 * pad, pad))
    draw = ImageDraw.Draw(sheet)
    font = _font(16)
    for x0, text, score in ((pad, "original", original_score),
                            (left.width + 2 * pad, "best crop", crop_score)):
        draw.text((x0, height + pad + 4), f"{text}: {score:.3f}", fill=score_color(score),
                  font=font)
    return sheet
