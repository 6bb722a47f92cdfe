"""A t-SNE map of what the net sees: features of one blob (fc7 by default) for every image, PCA to
50 dimensions, t-SNE to 2-D, then two pictures of it:

    tsne_grid.jpg   thumbnails snapped to a regular grid (the article's map): each image gets the
                    grid cell nearest its t-SNE position, no two images the same cell
    index.html      an interactive map: thumbnails at their t-SNE positions; hovering one shows
                    it bigger with its score

Features are cached on disk, keyed by the file list (paths, sizes, mtimes), the model, the
weights, the preprocessing and the blob, so a second run with another perplexity is quick.
"""
from __future__ import annotations

import concurrent.futures as cf
import html
import json
import math
import os
import pathlib

import numpy as np

from deepselfie.console import get_logger
from deepselfie.embed import json_for_html
from deepselfie.errors import UserError
from deepselfie.files import atomic_write

from models.selfie.features import collect_features
from models.selfie.score import list_images, read_scores

log = get_logger("tsne")


# ---- PCA + t-SNE --------------------------------------------------------------------------------

def _has_opentsne() -> bool:
    try:
        import openTSNE  # noqa: F401
        return True
    except ImportError:
        return False


EXACT_MAX = 300       # up to this many points scikit-learn's exact t-SNE is the quickest
THREADS_FROM = 1000   # t-SNE uses every core from this many points on (n_jobs=0)


def embed(features, *, pca_dims=50, perplexity=30.0, method="auto", seed=0, n_jobs=0):
    """N x D features -> (N x 2 coordinates, the method used). PCA to ``pca_dims`` first, then
    t-SNE: openTSNE (FFT-accelerated) when ``method`` is opentsne, or auto and it is importable
    and there are more than EXACT_MAX points; else scikit-learn's (exact up to EXACT_MAX points,
    Barnes-Hut above). ``n_jobs`` threads; 0 = every core for large maps, one for small."""
    from sklearn.decomposition import PCA
    if method not in ("auto", "opentsne", "sklearn"):
        raise UserError("must be auto, opentsne or sklearn", path="tsne.method", field=method)
    if method == "opentsne" and not _has_opentsne():
        raise UserError("openTSNE is not installed: pip install openTSNE, or use "
                        "--set tsne.method=sklearn", path="tsne.method")
    x = np.asarray(features, dtype=np.float32)
    n = len(x)
    if n == 0:
        return np.zeros((0, 2)), "none"
    x = x.reshape(n, -1)
    dims = min(pca_dims, n, x.shape[1])
    if x.shape[1] > dims:
        x = PCA(n_components=dims, random_state=seed).fit_transform(x)
    if n < 4 or not np.isfinite(x).all() or np.ptp(x, axis=0).max() == 0:
        # Too few (or identical) images for t-SNE: the first two principal directions.
        flat = np.zeros((n, 2))
        flat[:, :min(2, x.shape[1])] = x[:, :2]
        return flat, "pca"
    perplexity = float(min(perplexity, max(1.0, (n - 1) / 3)))
    if not n_jobs:
        # Threads pay off on large maps only; on small ones their start-up and spinning cost
        # more than the work (many times more on a busy machine).
        n_jobs = (os.cpu_count() or 1) if n > THREADS_FROM else 1
    if method == "opentsne" or (method == "auto" and n > EXACT_MAX and _has_opentsne()):
        import openTSNE
        tsne = openTSNE.TSNE(n_components=2, perplexity=perplexity, random_state=seed,
                             n_jobs=n_jobs, verbose=False)
        return np.asarray(tsne.fit(np.ascontiguousarray(x, dtype=np.float64))), "opentsne"
    from sklearn.manifold import TSNE
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
                random_state=seed, n_jobs=n_jobs,
                method="exact" if n <= EXACT_MAX else "barnes_hut")
    return tsne.fit_transform(x), "sklearn"


# ---- snapping to a grid -------------------------------------------------------------------------

def grid_shape(n: int) -> tuple[int, int]:
    cols = max(1, math.ceil(math.sqrt(n)))
    return cols, max(1, math.ceil(n / cols))


def _unit_square(coords) -> np.ndarray:
    c = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    if len(c) == 0:
        return c
    lo, span = c.min(axis=0), np.ptp(c, axis=0)
    return (c - lo) / np.where(span > 0, span, 1.0)


def snap_to_grid(coords, cols: int, rows: int, exact_max: int = 2000) -> np.ndarray:
    """Give each point its own cell of a cols x rows grid, near its position: an optimal
    assignment (least total squared distance) up to ``exact_max`` points, above that greedy
    (points closest to a cell centre first, each taking the nearest free cell). -> N cell indices
    (row * cols + col)."""
    pos = _unit_square(coords) * [cols, rows]           # in cell units
    n = len(pos)
    if n > cols * rows:
        raise ValueError(f"{n} points do not fit {cols} x {rows} cells")
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    pos = np.minimum(pos, [cols - 1e-9, rows - 1e-9])
    if n <= exact_max:
        from scipy.optimize import linear_sum_assignment
        cy, cx = np.divmod(np.arange(cols * rows), cols)
        cost = (pos[:, :1] - (cx + 0.5)) ** 2 + (pos[:, 1:] - (cy + 0.5)) ** 2
        rows_idx, cells = linear_sum_assignment(cost)
        out = np.empty(n, dtype=np.int64)
        out[rows_idx] = cells
        return out
    return _snap_greedy(pos, cols, rows)


def _snap_greedy(pos, cols, rows) -> np.ndarray:
    free = np.ones((rows, cols), dtype=bool)
    home = np.floor(pos).astype(int)
    off_centre = ((pos - home - 0.5) ** 2).sum(axis=1)
    out = np.empty(len(pos), dtype=np.int64)
    for i in np.argsort(off_centre, kind="stable"):
        px, py = pos[i]
        hx, hy = home[i]
        r = 0
        while True:
            y0, y1 = max(0, hy - r), min(rows, hy + r + 1)
            x0, x1 = max(0, hx - r), min(cols, hx + r + 1)
            if free[y0:y1, x0:x1].any():
                # A nearer free cell can sit one ring further out (a corner is farther than an
                # edge): look one ring beyond before choosing.
                y0, y1 = max(0, y0 - 1), min(rows, y1 + 1)
                x0, x1 = max(0, x0 - 1), min(cols, x1 + 1)
                ys, xs = np.nonzero(free[y0:y1, x0:x1])
                ys, xs = ys + y0, xs + x0
                j = int(np.argmin((xs + 0.5 - px) ** 2 + (ys + 0.5 - py) ** 2))
                free[ys[j], xs[j]] = False
                out[i] = ys[j] * cols + xs[j]
                break
            r += 1
    return out


# ---- pictures -----------------------------------------------------------------------------------

def _thumbnails(paths, sizes, workers=4):
    """For each path, one square thumbnail per size (the image decoded once)."""
    from .pictures import thumbnail

    def make(p):
        big = thumbnail(p, max(sizes))
        return [big if s == max(sizes) else big.resize((s, s)) for s in sizes]

    with cf.ThreadPoolExecutor(workers) as pool:
        return list(pool.map(make, paths))


def grid_image(thumbs, cells, cols, rows, size):
    from PIL import Image
    sheet = Image.new("RGB", (cols * size, rows * size), (20, 20, 20))
    for im, cell in zip(thumbs, cells):
        r, c = divmod(int(cell), cols)
        sheet.paste(im, (c * size, r * size))
    return sheet


MAP_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; background: #111; color: #eee; margin: 1.5em; }}
#map {{ position: relative; width: {side}px; height: {side}px; background: #1a1a1a; }}
#map img {{ position: absolute; width: {dot}px; height: {dot}px; cursor: pointer;
           transition: transform .1s; }}
#map img:hover {{ transform: scale(2); z-index: 10; outline: 2px solid #fc0; }}
#preview {{ position: fixed; top: 1.5em; right: 1.5em; width: 280px; background: #222;
           padding: 10px; border-radius: 6px; display: none; }}
#preview img {{ width: 256px; height: 256px; }}
#preview .score {{ font-size: 1.4em; }}
#preview .path {{ font-size: .8em; word-break: break-all; color: #aaa; }}
a {{ color: #8cf; }}
</style></head><body>
<h1>{title}</h1>
<p>{n} images placed by t-SNE of the net's <code>{blob}</code> features ({method}); similar
images sit together. Hover an image to see it bigger with its score. The same map snapped to a
grid: <a href="tsne_grid.jpg">tsne_grid.jpg</a>.</p>
<div id="map"></div>
<div id="preview"><img alt=""><div class="score"></div><div class="path"></div></div>
<script id="points" type="application/json">{points}</script>
<script>
const points = JSON.parse(document.getElementById("points").textContent);
const map = document.getElementById("map"), preview = document.getElementById("preview");
const side = {side} - {dot};
for (const p of points) {{
  const img = document.createElement("img");
  img.src = p.thumb; img.loading = "lazy"; img.alt = p.path;
  img.style.left = (p.x * side) + "px"; img.style.top = (p.y * side) + "px";
  img.addEventListener("mouseenter", () => {{
    preview.querySelector("img").src = p.preview;
    preview.querySelector(".score").textContent = "score " + p.score.toFixed(3);
    preview.querySelector(".path").textContent = p.path;
    preview.style.display = "block";
  }});
  map.appendChild(img);
}}
</script>
</body></html>
"""


def html_map(out_dir, records, *, blob, method, side=900, dot=36) -> pathlib.Path:
    """index.html: ``records`` are dicts with path, score, x, y (in [0, 1]), thumb, preview."""
    points = json_for_html([{k: r[k] for k in ("path", "score", "x", "y", "thumb", "preview")}
                            for r in records])
    page = MAP_PAGE.format(title="deepselfie t-SNE map", n=len(records), blob=html.escape(blob),
                           method=html.escape(method), side=side, dot=dot, points=points)
    return atomic_write(pathlib.Path(out_dir) / "index.html", page)


# ---- the stage ----------------------------------------------------------------------------------

def tsne_map(scorer, source, out_dir, *, blob="fc7", cache_dir=None, pca_dims=50,
             perplexity=30.0, method="auto", seed=0, thumb=64, exact_max=2000, threads=0,
             show_progress=True) -> dict:
    """The t-SNE stage for a folder of images or a scores.csv (its scores are shown; for a
    folder the net's scores are). Writes tsne.json, tsne_grid.jpg, index.html, thumbs/ and
    previews/ under out_dir; returns a summary dict."""
    from .pictures import save_image

    source = pathlib.Path(source)
    csv_scores = None
    if source.suffix.lower() == ".csv" and source.is_file():
        rows = read_scores(source)
        paths = [p for p, _ in rows]
        csv_scores = {str(p): s for p, s in rows}
    else:
        paths = list_images(source, exclude=out_dir)       # not our own thumbnails
    if not paths:
        raise UserError("no images", path=source)
    kept, features, scores, failed, cached = collect_features(scorer, paths, blob, cache_dir,
                                                               show_progress)
    if len(kept) < 2:
        raise UserError(f"a map needs at least 2 readable images, found {len(kept)}",
                        path=source)
    if csv_scores is not None:
        scores = np.array([csv_scores.get(str(p), s) for p, s in zip(kept, scores)])
    coords, used = embed(features, pca_dims=pca_dims, perplexity=perplexity, method=method,
                         seed=seed, n_jobs=threads)
    cols, rows = grid_shape(len(kept))
    cells = snap_to_grid(coords, cols, rows, exact_max=exact_max)
    unit = _unit_square(coords)

    out_dir = pathlib.Path(out_dir)
    for sub in ("thumbs", "previews"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    thumbs = _thumbnails(kept, (thumb, 256), workers=scorer.workers)
    records = []
    for i, (p, (small, big)) in enumerate(zip(kept, thumbs)):
        name = f"{i:05d}.jpg"
        save_image(small, out_dir / "thumbs" / name)
        save_image(big, out_dir / "previews" / name)
        r, c = divmod(int(cells[i]), cols)
        records.append({"path": str(p), "score": round(float(scores[i]), 6),
                        "x": round(float(unit[i, 0]), 5), "y": round(float(unit[i, 1]), 5),
                        "tsne": [round(float(v), 4) for v in coords[i]], "col": c, "row": r,
                        "thumb": f"thumbs/{name}", "preview": f"previews/{name}"})
    grid = save_image(grid_image([t[0] for t in thumbs], cells, cols, rows, thumb),
                      out_dir / "tsne_grid.jpg")
    page = html_map(out_dir, records, blob=blob, method=used)
    data = {"blob": blob, "method": used, "features": list(features.shape), "grid":
            {"cols": cols, "rows": rows, "thumb": thumb}, "points": records,
            "skipped": [{"path": str(p), "reason": r} for p, r in failed]}
    atomic_write(out_dir / "tsne.json", json.dumps(data, indent=1) + "\n")
    return {"images": len(kept), "skipped": len(failed), "cached": cached, "method": used,
            "grid": grid, "page": page, "json": out_dir / "tsne.json", "dims": features.shape[1]}
