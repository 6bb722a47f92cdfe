"""deepselfie crop: the best-crop search over (scale, x, y) and the stage that writes crops."""
import json
import logging

import numpy as np
import pytest
from PIL import Image

from deepselfie.cli import main
from models.selfie.crop import CropSearch, crop_box, search_crop
from models.selfie.score import Scorer, load_bgr
from nets import bright_net, skimage_photos


@pytest.fixture(scope="module")
def scorer(tmp_path_factory):
    deploy, weights = bright_net(tmp_path_factory.mktemp("net"))
    return Scorer(deploy, weights, mean="128,128,128")


def test_crop_scores_at_least_the_original_on_real_photos(scorer):
    for name, rgb in skimage_photos():
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        result = search_crop(scorer, bgr, CropSearch(seed=0))
        assert result.score >= result.original_score, name
        # the original's score is what `deepselfie score` gives the whole image
        assert result.original_score == pytest.approx(float(scorer.score_images([bgr])[0]),
                                                      abs=1e-5), name
        x, y, w, h = result.box
        assert 0 <= x and 0 <= y and x + w <= bgr.shape[1] and y + h <= bgr.shape[0], name
        if not result.uncropped:
            assert w == h, name                        # the net's input is square
            crop = bgr[y:y + h, x:x + w]
            assert float(scorer.score_images([crop])[0]) == pytest.approx(result.score,
                                                                          abs=1e-5), name
        again = search_crop(scorer, bgr, CropSearch(seed=0))
        assert again == result, name                   # reproducible with a seed


def test_the_search_finds_the_bright_part(scorer):
    img = np.full((120, 200, 3), 40, np.uint8)
    img[50:110, 120:180] = 230                          # a bright 60 x 60 square, lower right
    result = search_crop(scorer, img, CropSearch(seed=1))
    x, y, w, h = result.box
    assert not result.uncropped and result.score > result.original_score + 0.2
    assert 120 <= x + w / 2 <= 180 and 50 <= y + h / 2 <= 110
    # mostly bright: the refinement found the small square, not just a grid cell near it
    assert img[y:y + h, x:x + w].mean() > 180


def test_the_whole_image_wins_when_no_crop_is_better(scorer):
    img = np.full((90, 160, 3), 100, np.uint8)          # every crop looks the same
    result = search_crop(scorer, img, CropSearch(seed=0))
    assert result.uncropped and result.box == (0, 0, 160, 90)
    assert result.score == result.original_score


def test_every_candidate_batch_is_one_forward(scorer, monkeypatch):
    sizes = []
    forward = scorer.net.forward

    def counting_forward(*a, **kw):
        sizes.append(len(kw["data"]))
        return forward(*a, **kw)

    monkeypatch.setattr(scorer.net, "forward", counting_forward)
    search = CropSearch(grid_scales=3, grid_steps=3, rounds=2, candidates=10, batch_size=40,
                        rescore=2, seed=3)
    rgb = dict(skimage_photos())["coffee"]              # 400 x 600
    result = search_crop(scorer, np.ascontiguousarray(rgb[:, :, ::-1]), search)
    assert result.forwards == len(sizes) == 1 + 2 + 1    # grid, 2 rounds, the rescore
    grid = {crop_box((s, fx, fy), 400, 600, 1.0) for s in (0.4, 0.7, 1.0)
            for fx in (0, 0.5, 1) for fy in (0, 0.5, 1)}
    assert len(grid) == 9 + 9 + 3                        # at scale 1 only x can move
    assert sizes[0] == len(grid) + 1                     # the whole grid and the original at once
    assert all(1 <= s <= 40 for s in sizes) and sizes[-1] == 2
    assert result.candidates == len(grid) + sum(sizes[1:-1])


def test_crop_box_stays_inside_and_keeps_the_aspect():
    for params in [(1, 0, 0), (1, 1, 1), (0.3, 0.5, 0.5), (0.5, 1, 0)]:
        x, y, w, h = crop_box(params, 300, 451, 1.0)
        assert w == h and x >= 0 and y >= 0 and x + w <= 451 and y + h <= 300
    assert crop_box((1, 0.5, 0.5), 300, 451, 1.0) == (76, 0, 300, 300)
    assert crop_box((1, 0, 0), 300, 600, 2.0) == (0, 0, 600, 300)


def test_cli_writes_crops_comparisons_and_json(tmp_path, cli, caplog):
    deploy, weights = bright_net(tmp_path)
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    photos = dict(skimage_photos())
    Image.fromarray(photos["coffee"]).save(folder / "coffee.jpg", quality=92)
    Image.fromarray(photos["chelsea"]).save(folder / "sub" / "chelsea.png")
    (folder / "notes.txt").write_text("not a photo")
    out = tmp_path / "crops"
    args = ("crop", folder, "--out", out, "--seed", "5", "--model", deploy, "--weights",
            weights, "--mean", "128,128,128")
    r = cli(*args)
    assert r.returncode == 0, r.stderr
    assert "2 cropped, 1 skipped" in r.stdout and "notes.txt" in r.stderr
    for stem, src in (("coffee", folder / "coffee.jpg"), ("sub/chelsea", folder / "sub" /
                                                          "chelsea.png")):
        record = json.loads((out / f"{stem}.json").read_text())
        original = load_bgr(src)
        box = record["box"]
        assert record["score"] >= record["original_score"] and record["seed"] == 5
        assert record["image"] == {"width": original.shape[1], "height": original.shape[0]}
        assert box["x"] + box["width"] <= original.shape[1]
        assert box["y"] + box["height"] <= original.shape[0]
        with Image.open(out / f"{stem}.crop.jpg") as im:
            assert im.size == (box["width"], box["height"])
        with Image.open(out / f"{stem}.compare.jpg") as im:
            assert im.width > im.height                 # original | crop, side by side
    index = json.loads((out / "crops.json").read_text())
    assert len(index["crops"]) == 2 and index["skipped"][0]["path"].endswith("notes.txt")

    # Reruns in this process (the same entry point, without another interpreter's start-up).
    first = (out / "coffee.json").read_text()
    caplog.set_level(logging.INFO, logger="deepselfie")
    assert main([str(a) for a in args]) == 0             # same inputs: reused, not recomputed
    assert "2 image(s) already cropped" in caplog.text
    assert (out / "coffee.json").read_text() == first
    (out / "coffee.json").unlink()                       # recomputed: the same seed, the same crop
    assert main([str(a) for a in args]) == 0
    assert (out / "coffee.json").read_text() == first


def test_crops_written_inside_the_source_folder_are_not_cropped_again(tmp_path):
    deploy, weights = bright_net(tmp_path)
    scorer = Scorer(deploy, weights, mean="128,128,128")
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(dict(skimage_photos())["rocket"]).save(folder / "rocket.jpg")
    from models.selfie.crop import crop_images
    for _ in range(2):
        records, failed = crop_images(scorer, folder, folder / "crops", CropSearch(rounds=1),
                                      show_progress=False)
        assert [r["path"] for r in records] == [str(folder / "rocket.jpg")] and not failed


def test_cli_refuses_a_missing_source(tmp_path, capsys):
    deploy, weights = bright_net(tmp_path)
    rc = main([str(a) for a in ("crop", tmp_path / "nope.jpg", "--model", deploy, "--weights",
                                weights, "--mean", "1,2,3")])
    err = capsys.readouterr().err
    assert rc == 2 and "nope.jpg" in err and "no such file" in err
