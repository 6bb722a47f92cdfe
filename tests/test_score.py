"""deepselfie score: preprocessing, ranking, bad files, pictures and the report."""
import csv
import json

import numpy as np
import pytest
from PIL import Image

import models.caffe as caffe
from deepselfie.errors import UserError
from models.selfie.score import Preprocess, Scorer, load_bgr, read_mean

# A deploy net whose "good" probability grows with brightness: global average, then a fixed
# 2-way inner product.
BRIGHT_NET = """
name: "bright"
layer { name: "input" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 16 dim: 16 } } }
layer { name: "gap" type: "Pooling" bottom: "data" top: "gap" pooling_param { pool: AVE global_pooling: true } }
layer { name: "fc" type: "InnerProduct" bottom: "gap" top: "fc" inner_product_param { num_output: 2 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


@pytest.fixture
def bright_model(tmp_path):
    deploy = tmp_path / "deploy.prototxt"
    deploy.write_text(BRIGHT_NET)
    net = caffe.Net(str(deploy), caffe.TEST)
    net.params["fc"][0].data[...] = np.array([[-0.02] * 3, [0.02] * 3])
    net.params["fc"][1].data[...] = 0
    weights = tmp_path / "bright.caffemodel"
    net.save(str(weights))
    return deploy, weights


def make_images(folder, levels=(30, 90, 150, 210)):
    folder.mkdir(parents=True, exist_ok=True)
    rs = np.random.RandomState(0)
    paths = []
    for i, level in enumerate(levels):
        arr = np.clip(rs.normal(level, 20, (40 + i, 50, 3)), 0, 255).astype(np.uint8)
        p = folder / f"img_{level}.{'png' if i % 2 else 'jpg'}"
        Image.fromarray(arr).save(p)
        paths.append(p)
    return paths


def test_brighter_images_rank_higher(tmp_path, bright_model):
    deploy, weights = bright_model
    make_images(tmp_path / "imgs")
    for mode in ("squash", "crop", "oversample"):
        scorer = Scorer(deploy, weights, mean="128,128,128", resize=mode, batch_size=3)
        results, failed = scorer.score_paths(sorted((tmp_path / "imgs").iterdir()),
                                             show_progress=False)
        assert not failed
        assert [p.name for p, _ in results] == ["img_210.png", "img_150.jpg", "img_90.png",
                                                "img_30.jpg"], mode
        assert results[0][1] > 0.5 > results[-1][1]


def test_bad_files_are_skipped_and_reported(tmp_path, bright_model, cli):
    deploy, weights = bright_model
    folder = tmp_path / "mixed"
    make_images(folder / "sub", levels=(60, 200))
    (folder / "notes.txt").write_text("not an image")
    good = folder / "sub" / "img_200.png"
    (folder / "truncated.jpg").write_bytes((folder / "sub" / "img_60.jpg").read_bytes()[:300])
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[..., 3] = 0                                   # fully transparent: white after compositing
    Image.fromarray(rgba, "RGBA").save(folder / "alpha.png")
    out = tmp_path / "scores.csv"
    r = cli("score", folder, "--model", deploy, "--weights", weights, "--mean", "128,128,128",
            "--out", out, "--grid", tmp_path / "top.jpg", "--top", "2", "--worst", "2",
            "--continuum", tmp_path / "continuum.jpg", "--report", tmp_path / "report")
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(out.open()))
    assert [row["rank"] for row in rows] == ["1", "2", "3"]
    names = [row["path"].split("/")[-1] for row in rows]
    assert names[0] == "alpha.png" and set(names) == {"alpha.png", "img_200.png", "img_60.jpg"}
    assert "notes.txt" in r.stderr and "truncated.jpg" in r.stderr
    assert "3 scored, 2 skipped" in r.stdout
    for f in ("top.jpg", "worst.jpg", "continuum.jpg", "report/index.html",
              "report/histogram.png"):
        assert (tmp_path / f).stat().st_size > 0, f
    html = (tmp_path / "report" / "index.html").read_text()
    assert "img_200.png" in html and "Skipped" in html
    assert good.exists()


def test_json_output(tmp_path, bright_model, cli):
    deploy, weights = bright_model
    make_images(tmp_path / "imgs", levels=(50, 220))
    r = cli("score", tmp_path / "imgs", "--model", deploy, "--weights", weights,
            "--mean", "128,128,128", "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout[: r.stdout.rindex("]") + 1])
    assert [set(row) for row in rows] == [{"path", "score", "rank"}] * 2
    assert rows[0]["path"].endswith("img_220.png") and rows[0]["rank"] == 1


def test_missing_weights_and_mean_are_clear(tmp_path, bright_model, cli):
    deploy, _ = bright_model
    r = cli("score", tmp_path, "--model", deploy)
    assert r.returncode == 2 and "--weights" in r.stderr
    with pytest.raises(UserError, match="no mean"):
        read_mean(None)
    with pytest.raises(UserError, match="3 values"):
        read_mean("1,2")


def test_mean_from_binaryproto_and_json(tmp_path, golden):
    mean = read_mean(str(golden / "data" / "raw_meanfile_crop" / "mean.binaryproto"))
    expected = np.load(golden / "data" / "raw_meanfile_crop" / "expected.npz")["mean"]
    np.testing.assert_allclose(mean, expected.reshape(3, -1).mean(1), rtol=1e-5)
    j = tmp_path / "mean.json"
    j.write_text(json.dumps({"bgr": [1, 2, 3]}))
    np.testing.assert_array_equal(read_mean(str(j)), [1, 2, 3])


def test_preprocess_is_bgr_mean_subtracted_chw():
    rgb = np.zeros((10, 20, 3), np.uint8)
    rgb[..., 0] = 200                                   # red
    from PIL import Image as I
    import io
    buf = io.BytesIO()
    I.fromarray(rgb).save(buf, format="PNG")
    buf.seek(0)
    bgr = load_bgr(buf)
    assert bgr[0, 0].tolist() == [0, 0, 200]
    x = Preprocess(8, 8, np.array([10, 20, 30], np.float32), "squash")(bgr)
    assert x.shape == (1, 3, 8, 8)
    np.testing.assert_allclose(x[0, :, 0, 0], [-10, -20, 170])
    x = Preprocess(8, 8, np.zeros(3, np.float32), "oversample", base=12)(bgr)
    assert x.shape == (10, 3, 8, 8)


@pytest.mark.parametrize("text, problem", [
    ("path,score\n" + "a" * 300_000 + ",0.5\n", "near line 2: not a CSV deepselfie can read "
                                                "(field larger than field limit"),
    ("path,score\na\x00b.jpg,0.5\n", "line 2: path 'a\\x00b.jpg' is empty or holds a NUL byte"),
    ("path,score\n,0.5\n", "line 2: path '' is empty"),
    ("path,score\na.jpg,nan\n", "line 2: score 'nan' is not a finite number"),
    ("path,score\na.jpg,-inf\n", "line 2: score '-inf' is not a finite number"),
    ("path,score\na.jpg," + "9" * 100 + "x\n", "line 2: score '" + "9" * 39 + "... is not a number"),
], ids=["field_over_the_limit", "nul_in_path", "empty_path", "nan", "minus_inf", "long_junk"])
def test_hostile_scores_csv_is_one_line_naming_file_and_line(tmp_path, text, problem):
    """A scores.csv from anywhere (t-SNE's --scores, serve's reference): one UserError line."""
    from deepselfie.errors import UserError
    from models.selfie.score import read_scores
    path = tmp_path / "scores.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UserError) as e:
        read_scores(path)
    assert str(e.value).startswith(f"{path}: {problem}")
    assert "\n" not in str(e.value)


def test_scores_csv_with_a_byte_order_mark_reads(tmp_path):
    """A spreadsheet's UTF-8 export starts with a BOM: the header still reads as path,score."""
    from models.selfie.score import read_scores
    path = tmp_path / "scores.csv"
    path.write_text("\ufeffpath,score,rank\nb.jpg,0.25,2\na.jpg,0.75,1\n", encoding="utf-8")
    assert [(p.name, s) for p, s in read_scores(path)] == [("b.jpg", 0.25), ("a.jpg", 0.75)]
