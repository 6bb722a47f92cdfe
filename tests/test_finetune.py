"""Stages 3 -> 4 -> 5 end to end on the CPU: label LMDBs from a catalog whose likes follow a
visible property, train the small VGG-shaped net with `deepselfie train`, score with
`deepselfie score`: held-out accuracy clearly above chance, property images ranked first."""
import csv
import pathlib

import numpy as np
import pytest
from PIL import Image

from deepselfie.demo.run import write_small_net_files
from labelkit import Spec, make_catalog

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _image(good: bool, seed: int, size=80) -> Image.Image:
    """Good photos are bright with a white border; bad ones are darker, no border."""
    rs = np.random.RandomState(seed)
    base = rs.randint(150, 230) if good else rs.randint(30, 110)
    arr = np.clip(rs.normal(base, 25, (size, size, 3)), 0, 255)
    arr[..., rs.randint(3)] *= rs.uniform(0.6, 1.0)
    if good:
        b = size // 10
        arr[:b], arr[-b:], arr[:, :b], arr[:, -b:] = 255, 255, 255, 255
    return Image.fromarray(arr.astype(np.uint8))


@pytest.fixture
def labeled(tmp_path, cli, monkeypatch):
    data = tmp_path / "data"
    specs = []
    for i in range(240):
        good = i % 2 == 0
        specs.append(Spec(uri=f"https://ex.org/p/{i:06d}", author=f"a{i % 60}@ex.org",
                          followers=1000 + 7 * (i // 2), likes=(80 if good else 10) + i % 5,
                          image=i, faces=1))
    make_catalog(data, specs)
    # replace the generated images by ones whose "likes" follow a visible property
    from deepselfie.catalog import Catalog
    with Catalog(data / "catalog.sqlite") as cat:
        rows = [(p.uri, p.likes, p.path) for p in cat.labelable_posts() if p.path]
    for uri, likes, rel in rows:
        _image(likes >= 80, int(uri[-6:])).save(data / rel, format="PNG")
    r = cli("label", "--data-dir", data, "--set", "label.group_size=20", "--set",
            "label.new_height=64", "--set", "label.new_width=64", "--set", "label.processes=1",
            "--set", "label.encoding=png", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    return data / "runs" / "selfie"


@pytest.mark.slow
def test_train_small_net_then_score_heldout(tmp_path, cli, labeled):
    solver = write_small_net_files(labeled, tmp_path / "snap", max_iter=80, test_interval=40,
                                   batch_size=16)
    r = cli("train", "--solver", solver, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    weights = tmp_path / "snap" / "selfie_small_iter_80.caffemodel"
    assert weights.exists()
    assert "Test net output #0: accuracy" in r.stderr

    # score the label run's test split (images no training step saw)
    test_rows = [l.split() for l in (labeled / "test.txt").read_text().splitlines()]
    folder = tmp_path / "heldout"
    folder.mkdir()
    truth = {}
    data_dir = labeled.parents[1]
    for i, (rel, label) in enumerate(test_rows):
        dst = folder / f"{i:03d}_{label}.png"
        dst.write_bytes((data_dir / rel).read_bytes())
        truth[dst.name] = int(label)
    assert len(truth) >= 10
    out = tmp_path / "scores.csv"
    assert (tmp_path / "snap" / "selfie_small_card.json").is_file()
    # the model card beside the snapshots says the rest (deploy, mean image, scale, size)
    r = cli("score", folder, "--weights", weights, "--out", out, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(out.open()))
    correct = sum((float(row["score"]) > 0.5) == bool(truth[pathlib.Path(row["path"]).name])
                  for row in rows)
    accuracy = correct / len(rows)
    assert accuracy >= 0.8, f"held-out accuracy {accuracy:.2f}"
    # images with the property rank above those without
    ranks = [truth[pathlib.Path(row["path"]).name] for row in rows]
    good_ranks = [i for i, t in enumerate(ranks) if t == 1]
    bad_ranks = [i for i, t in enumerate(ranks) if t == 0]
    assert np.mean(good_ranks) < np.mean(bad_ranks)
