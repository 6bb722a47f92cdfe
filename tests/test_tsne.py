"""deepselfie tsne: cached features of any blob, PCA + t-SNE, the grid image and the HTML map."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from deepselfie.cli import main
from models.selfie.features import collect_features
from models.selfie.score import Scorer, write_scores
from deepselfie.report.tsne_map import embed, grid_shape, snap_to_grid, tsne_map
from nets import bright_net, skimage_photos


def make_two_kinds(folder, n=14):
    """n crops of the astronaut and n of the coffee cup (64 x 64, slightly different each):
    two kinds of picture that the features should keep apart."""
    folder.mkdir(parents=True, exist_ok=True)
    photos = dict(skimage_photos())
    rs = np.random.RandomState(0)
    paths = []
    for kind in ("astronaut", "coffee"):
        img = photos[kind]
        h, w = img.shape[:2]
        for i in range(n):
            side = int(min(h, w) * rs.uniform(0.85, 1.0))
            y, x = rs.randint(0, h - side + 1), rs.randint(0, w - side + 1)
            crop = Image.fromarray(img[y:y + side, x:x + side]).resize((64, 64))
            p = folder / f"{kind}_{i:02d}.jpg"
            crop.save(p, quality=90)
            paths.append(p)
    return paths


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return bright_net(tmp_path_factory.mktemp("net"), with_fc7=True)


def test_cli_writes_the_map_and_caches_features(tmp_path, model, cli, capsys):
    deploy, weights = model
    paths = make_two_kinds(tmp_path / "imgs")
    (tmp_path / "imgs" / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    out = tmp_path / "map"
    args = ("tsne", tmp_path / "imgs", "--out", out, "--model", deploy, "--weights", weights,
            "--mean", "128,128,128", "--data-dir", tmp_path / "data",
            "--set", "tsne.method=sklearn", "--set", "tsne.thumb=32")
    r = cli(*args)
    assert r.returncode == 0, r.stderr
    assert f"{len(paths)} images mapped with sklearn from 32-d fc7 features" in r.stdout
    assert "1 skipped" in r.stdout and "broken.jpg" in r.stderr
    data = json.loads((out / "tsne.json").read_text())
    points = data["points"]
    assert len(points) == len(paths) and data["blob"] == "fc7"
    cols, rows = data["grid"]["cols"], data["grid"]["rows"]
    assert cols * rows >= len(paths)
    assert len({(p["col"], p["row"]) for p in points}) == len(points)   # one image per cell
    with Image.open(out / "tsne_grid.jpg") as im:
        assert im.size == (cols * 32, rows * 32)
    page = (out / "index.html").read_text()
    for p in points:
        assert (out / p["thumb"]).is_file() and (out / p["preview"]).is_file()
        assert p["path"] in page and 0 <= p["x"] <= 1 and 0 <= p["y"] <= 1
    # The two kinds of picture land apart: nearest neighbours on the map are of the same kind.
    xy = np.array([p["tsne"] for p in points])
    kind = np.array(["astronaut" in p["path"] for p in points])
    d = ((xy[:, None] - xy[None]) ** 2).sum(-1) + np.eye(len(xy)) * 1e9
    assert (kind[d.argmin(1)] == kind).mean() >= 0.9
    cache = list((tmp_path / "data" / "cache" / "features").glob("fc7-*.npz"))
    assert len(cache) == 1

    # Reruns in this process (the same entry point, without another interpreter's start-up).
    capsys.readouterr()
    assert main([str(a) for a in args]) == 0           # the same files: features from the cache
    assert "features from the cache" in capsys.readouterr().out
    os.utime(paths[0], ns=(1, 1))                      # a changed file: computed again
    assert main([str(a) for a in args]) == 0
    assert "from the cache" not in capsys.readouterr().out
    assert len(list(cache[0].parent.glob("fc7-*.npz"))) == 2


def test_missing_blob_names_the_available_ones(tmp_path, model, capsys):
    deploy, weights = model
    make_two_kinds(tmp_path / "imgs", n=2)
    rc = main([str(a) for a in ("tsne", tmp_path / "imgs", "--blob", "fc6", "--model", deploy,
                                "--weights", weights, "--mean", "128,128,128", "--out",
                                tmp_path / "map", "--data-dir", tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "deepselfie tsne: error:" in err and "no blob 'fc6'" in err
    assert "fc7" in err and "prob" in err
    assert not (tmp_path / "map").exists()


def test_map_from_a_scores_csv_shows_its_scores(tmp_path, model):
    deploy, weights = model
    scorer = Scorer(deploy, weights, mean="128,128,128")
    paths = make_two_kinds(tmp_path / "imgs", n=4)
    fake = [(p, round(i / 10, 3)) for i, p in enumerate(paths)]
    write_scores(fake, tmp_path / "scores.csv")
    res = tsne_map(scorer, tmp_path / "scores.csv", tmp_path / "map", blob="gap",
                   method="sklearn", show_progress=False)
    assert res["images"] == len(paths) and res["dims"] == 3
    points = json.loads((tmp_path / "map" / "tsne.json").read_text())["points"]
    assert {p["path"]: p["score"] for p in points} == {str(p): s for p, s in fake}


def test_features_are_the_blob_values_and_the_cache_returns_them(tmp_path, model):
    deploy, weights = model
    scorer = Scorer(deploy, weights, mean="128,128,128", batch_size=3)
    paths = make_two_kinds(tmp_path / "imgs", n=3)
    kept, feats, scores, failed, cached = collect_features(scorer, paths, "gap", tmp_path,
                                                           show_progress=False)
    assert not cached and not failed and feats.shape == (6, 3)
    x = np.concatenate([scorer.pre(scorer.load(p)) for p in paths])
    np.testing.assert_allclose(feats, x.mean(axis=(2, 3)), atol=1e-4)   # gap = channel means
    again = collect_features(scorer, paths, "gap", tmp_path, show_progress=False)
    assert again[4] and again[0] == kept
    np.testing.assert_array_equal(again[1], feats)
    np.testing.assert_array_equal(again[2], scores)


def test_embed_separates_clusters_with_pca_first():
    rs = np.random.RandomState(0)
    centers = rs.normal(0, 10, (3, 4096))
    x = np.concatenate([c + rs.normal(0, 1, (30, 4096)) for c in centers]).astype(np.float32)
    coords, method = embed(x, method="sklearn", seed=0)
    assert coords.shape == (90, 2) and method == "sklearn"
    label = np.repeat(np.arange(3), 30)
    d = ((coords[:, None] - coords[None]) ** 2).sum(-1) + np.eye(90) * 1e9
    assert (label[d.argmin(1)] == label).all()
    again, _ = embed(x, method="sklearn", seed=0)
    np.testing.assert_allclose(again, coords)          # deterministic with a seed
    few, how = embed(x[:3], method="sklearn")
    assert few.shape == (3, 2) and how == "pca"


def test_embed_with_opentsne():
    pytest.importorskip("openTSNE")
    rs = np.random.RandomState(0)
    centers = rs.normal(0, 10, (2, 256))
    x = np.concatenate([c + rs.normal(0, 1, (40, 256)) for c in centers]).astype(np.float32)
    coords, method = embed(x, method="opentsne", seed=0)
    assert coords.shape == (80, 2) and method == "opentsne"
    label = np.repeat(np.arange(2), 40)
    d = ((coords[:, None] - coords[None]) ** 2).sum(-1) + np.eye(80) * 1e9
    assert (label[d.argmin(1)] == label).all()


@pytest.mark.parametrize("exact_max", [10_000, 0])     # exact assignment, then greedy
def test_snap_to_grid_gives_each_point_its_own_nearby_cell(exact_max):
    cols, rows = grid_shape(100)
    assert (cols, rows) == (10, 10)
    # points already on a jittered grid keep their cells
    gy, gx = np.divmod(np.arange(100), 10)
    rs = np.random.RandomState(1)
    on_grid = np.stack([gx, gy], 1) + rs.uniform(-0.2, 0.2, (100, 2))
    cells = snap_to_grid(on_grid, cols, rows, exact_max=exact_max)
    assert sorted(cells) == list(range(100))
    assert (cells == gy * 10 + gx).mean() >= (1.0 if exact_max else 0.9)
    # clumped points still get distinct cells, near where they are
    clumps = np.concatenate([rs.normal(c, 0.05, (23, 2)) for c in ((0, 0), (1, 1), (0, 1))])
    cols, rows = grid_shape(len(clumps))
    cells = snap_to_grid(clumps, cols, rows, exact_max=exact_max)
    assert len(set(cells.tolist())) == len(clumps) and cells.max() < cols * rows
    cy, cx = np.divmod(cells, cols)
    centroids = np.array([[cx[i:i + 23].mean() / cols, cy[i:i + 23].mean() / rows]
                          for i in (0, 23, 46)])
    corners = np.array([(0, 0), (1, 1), (0, 1)])
    nearest = ((centroids[:, None] - corners[None]) ** 2).sum(-1).argmin(1)
    assert nearest.tolist() == [0, 1, 2]                # each clump sits in its own corner


def test_file_names_cannot_break_out_of_the_maps_json(tmp_path):
    """Issue 15 item 11: a file named <!--<script>.jpg blanked the page (only </ was escaped)."""
    from deepselfie.report.tsne_map import html_map
    names = ["<!--<script>.jpg", "</script><script>alert(1)</script>.jpg", "a&amp;b>.jpg",
             "line\u2028sep.jpg"]
    records = [{"path": n, "score": 0.5, "x": i / 4, "y": 0.5, "thumb": f"thumbs/{i}.jpg",
                "preview": f"thumbs/{i}.jpg"} for i, n in enumerate(names)]
    page = html_map(tmp_path, records, blob="fc7", method="sklearn").read_text()
    start = page.index('<script id="points" type="application/json">')
    data = page[start:].split(">", 1)[1].split("</script>", 1)[0]
    assert "<" not in data and ">" not in data and "&" not in data and "\u2028" not in data
    assert [p["path"] for p in json.loads(data)] == names
    assert page.count("<script") == 2 and page.count("</script>") == 2
