"""The label stage end to end on hand-made catalogs: a known answer, reruns, resume, the CLI."""
import csv
import hashlib
import io
import json

import numpy as np
import pytest
from PIL import Image

from deepselfie.config import load_config
from label import lmdb_writer
from label.lmdb_writer import iter_lmdb
from label.mean import read_binaryproto
from label.resize import cv_resize_linear
from label.stage import run_label
from labelkit import Spec, make_catalog, lmdb_items
from deepselfie.catalog import Catalog

SETTINGS = ["label.group_size=4", "label.tag_bonus=0.5", "label.min_followers=10",
            "label.max_followers=1000", "label.max_tags=3", "label.min_faces=1",
            "label.min_age_days=30", "label.train_ratio=0.5", "label.val_ratio=0.25",
            "label.test_ratio=0.25", "label.new_height=20", "label.new_width=16",
            "label.processes=1", "label.commit_every=2"]

P = "https://example.org/p/"
SPECS = [
    # uri, author, followers, likes, tags                 audience
    Spec(P + "01", "alice", 100, 5, [], image=1),                     # 100
    Spec(P + "02", "bob", 80, 1, ["a"], image=2, fmt="JPEG"),          # 120
    Spec(P + "03", "carol", 50, 9, ["a", "b"], image=3, size=(41, 17)),  # 100 (after 01: uri)
    Spec(P + "04", "dave", 200, 3, [], image=4, size=(16, 20)),        # 200
    Spec(P + "05", "erin", 150, 3, ["a"], image=5),                    # 225
    Spec(P + "06", "frank", 90, 7, [], image=6, fmt="JPEG"),           # 90
    Spec(P + "07", "gina", 60, 7, ["a"], image=7, size=(12, 50)),      # 90 (after 06: uri)
    Spec(P + "08", "hank", 40, 100, [], image=8, faces=3),             # 40
    Spec(P + "09", "ivan", 30, 2, [], image=9),                        # 30: last, partial group
    # left out
    Spec(P + "10", "x1", 500, 50, [], image=10, age_days=10),          # too recent
    Spec(P + "11", "x2", 5, 50, [], image=11),                         # followers < 10
    Spec(P + "12", "x3", 5000, 50, [], image=12),                      # followers > 1000
    Spec(P + "13", "x4", 500, 50, ["a", "b", "c", "d"], image=13),     # 4 tags > 3
    Spec(P + "14", "x5", 500, 50, [], image=14, faces=0),              # no face
    Spec(P + "15", "x6", 500, 50, [], image=15, faces=None),           # never face-scanned
    Spec(P + "16", "x7", 500, 50, [], image=None),                     # nothing downloaded
    Spec(P + "17", "x8", 500, 50, [], image=1, age_days=40),           # same image as 01
]
# (group, rank, label) by the article's rule, worked out by hand:
# by audience: 05 225, 04 200, 02 120, 01 100, 03 100 | 06 90, 07 90, 08 40 | 09 left out
# group 0 by likes: 01 5, 04 3, 05 3 (uri), 02 1;  group 1: 08 100, 03 9, 06 7, 07 7 (uri)
EXPECTED = {"01": (0, 0, 1), "04": (0, 1, 1), "05": (0, 2, 0), "02": (0, 3, 0),
            "08": (1, 0, 1), "03": (1, 1, 1), "06": (1, 2, 0), "07": (1, 3, 0)}
AUDIENCE = {"01": 100, "02": 120, "03": 100, "04": 200, "05": 225, "06": 90, "07": 90, "08": 40}
AUTHORS = {"01": "alice", "02": "bob", "03": "carol", "04": "dave", "05": "erin", "06": "frank",
           "07": "gina", "08": "hank"}


def _config(data_dir, *extra):
    return load_config(None, data_dir=data_dir, overrides=SETTINGS + list(extra))


@pytest.fixture
def catalog_dir(tmp_path):
    data = tmp_path / "data"
    make_catalog(data, SPECS)
    return data


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _folder_state(run):
    """Every published file's bytes in the run folder, LMDBs as their key/value pairs."""
    state = {}
    for p in sorted(run.iterdir()):
        if p.name.endswith(".partial"):
            continue
        if p.is_dir():
            state[p.name] = lmdb_items(p)
        else:
            state[p.name] = p.read_bytes()
    return state


def _expected_splits(seed=0):
    """The documented rule: authors in sha256(seed, name) order; 8 authors of one post each
    with ratios 0.5/0.25/0.25 -> the first 4 train, the next 2 val, the last 2 test."""
    order = sorted(AUTHORS.values(),
                   key=lambda a: hashlib.sha256(f"{seed}\0{a}".encode()).hexdigest())
    return {a: "train" if i < 4 else "val" if i < 6 else "test" for i, a in enumerate(order)}


def test_known_answer_labels_groups_splits_and_lmdbs(catalog_dir):
    cfg = _config(catalog_dir, "label.encoding=raw")
    result = run_label(cfg, quiet=True)
    run = catalog_dir / "runs" / "selfie"

    rows = _csv(run / "labels.csv")
    got = {r["uri"][-2:]: (int(r["group"]), int(r["rank"]), int(r["label"])) for r in rows}
    assert got == EXPECTED
    assert [r["uri"][-2:] for r in rows] == ["01", "04", "05", "02", "08", "03", "06", "07"]
    for r in rows:
        key = r["uri"][-2:]
        assert float(r["audience"]) == AUDIENCE[key] and r["author"] == AUTHORS[key]
    splits = _expected_splits()
    assert {r["author"]: r["split"] for r in rows} == splits
    assert result["excluded"] == {"too recent": 1, "followers out of range": 2,
                                  "too many tags": 1, "too few faces": 1,
                                  "not face-scanned": 1, "no image": 1, "duplicate image": 1}
    assert result["eligible"] == 9 and result["labeled"] == 8 and result["groups"] == 2

    # the catalog holds the same group, rank, label and split
    with Catalog(catalog_dir / "catalog.sqlite") as cat:
        stored = {uri[-2:]: (r.group, r.rank, r.label, r.split)
                  for uri, r in cat.labels("selfie").items()}
    assert stored == {k: v + (splits[AUTHORS[k]],) for k, v in EXPECTED.items()}

    # list files and LMDBs: the same rows as labels.csv, keyed like convert_imageset
    for split in ("train", "val", "test"):
        want = {(r["path"], int(r["label"])) for r in rows if r["split"] == split}
        lines = [line.rsplit(" ", 1) for line in (run / f"{split}.txt").read_text().splitlines()]
        assert {(p, int(lab)) for p, lab in lines} == want
        records = list(iter_lmdb(run / f"{split}_lmdb"))
        assert [k for k, _, _ in records] == [f"{i:08d}_{p}" for i, (p, _) in enumerate(lines)]
        assert [lab for _, lab, _ in records] == [int(lab) for _, lab in lines]
        for (key, _, payload), (path, _) in zip(records, lines):
            assert not payload.encoded and (payload.channels, payload.height,
                                            payload.width) == (3, 20, 16)
            src = np.asarray(Image.open(catalog_dir / path).convert("RGB"))
            want_px = cv_resize_linear(src, 16, 20)[:, :, ::-1].transpose(2, 0, 1)
            assert np.frombuffer(payload.data, np.uint8).reshape(3, 20, 16).tolist() == \
                want_px.tolist()

    # the mean over train, as numpy computes it
    train = [np.frombuffer(p.data, np.uint8).reshape(3, 20, 16).astype(np.float64)
             for _, _, p in iter_lmdb(run / "train_lmdb")]
    mean = read_binaryproto(run / "mean.binaryproto")
    assert mean.shape == (3, 20, 16) and mean.dtype == np.float32
    np.testing.assert_allclose(mean, np.mean(train, axis=0), rtol=0, atol=1e-4)
    info = json.loads((run / "mean.json").read_text())
    np.testing.assert_allclose(info["mean_value_bgr"], np.mean(train, axis=(0, 2, 3)),
                               atol=1e-5)
    assert info["images"] == len(train) == 4


def test_jpeg_records_decode_to_the_size_asked_for(catalog_dir):
    run_label(_config(catalog_dir, "label.resize_mode=fill"), quiet=True)
    run = catalog_dir / "runs" / "selfie"
    csv_train = {(r["path"], int(r["label"])) for r in _csv(run / "labels.csv")
                 if r["split"] == "train"}
    records = list(iter_lmdb(run / "train_lmdb"))
    assert {(k.split("_", 1)[1], lab) for k, lab, _ in records} == csv_train
    decoded = []
    for _, _, payload in records:
        assert payload.encoded and payload.data[:2] == b"\xff\xd8"
        assert (payload.channels, payload.height, payload.width) == (0, 0, 0)
        with Image.open(io.BytesIO(payload.data)) as im:
            assert im.format == "JPEG" and im.size == (16, 20) and im.mode == "RGB"
            decoded.append(np.asarray(im)[:, :, ::-1].transpose(2, 0, 1).astype(np.float64))
    mean = read_binaryproto(run / "mean.binaryproto")
    np.testing.assert_allclose(mean, np.mean(decoded, axis=0), rtol=0, atol=1e-4)


def test_rerun_is_idempotent_and_a_changed_setting_rebuilds(catalog_dir):
    cfg = _config(catalog_dir)
    first = run_label(cfg, quiet=True)
    run = catalog_dir / "runs" / "selfie"
    before = _folder_state(run)
    assert first["rebuilt"] == ["train", "val", "test"]
    again = run_label(_config(catalog_dir), quiet=True)
    assert again["rebuilt"] == []
    assert _folder_state(run) == before
    # from scratch, in another folder: the same bytes
    other = run_label(_config(catalog_dir), run_name="copy", quiet=True)
    assert other["rebuilt"] == ["train", "val", "test"]
    copy = _folder_state(catalog_dir / "runs" / "copy")
    assert {k: v for k, v in copy.items() if k != "manifest.json"} == \
        {k: v for k, v in before.items() if k != "manifest.json"}
    changed = run_label(_config(catalog_dir, "label.seed=7"), quiet=True)
    assert changed["rebuilt"] == ["train", "val", "test"]
    assert not list(run.glob("*.partial")) and not list(run.glob("*.old"))


def test_an_interrupted_build_resumes_after_its_last_commit(catalog_dir, monkeypatch):
    clean = run_label(_config(catalog_dir), run_name="clean", quiet=True)
    assert clean["splits"]["train"]["records"] == 4

    calls = []
    real = lmdb_writer.encode_chunk

    def interrupted(task):
        calls.append(len(task[1]))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(task)

    monkeypatch.setattr(lmdb_writer, "CHUNK", 1)
    monkeypatch.setattr(lmdb_writer, "encode_chunk", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_label(_config(catalog_dir), quiet=True)
    run = catalog_dir / "runs" / "selfie"
    # train came first: its first batch of 2 is committed; nothing was published yet
    assert len(lmdb_items(run / "train_lmdb.partial")) == 2
    assert not (run / "train_lmdb").exists() and not (run / "labels.csv").exists()
    with Catalog(catalog_dir / "catalog.sqlite") as cat:
        assert cat.runs("label")[-1]["status"] == "interrupted"

    calls.clear()
    monkeypatch.setattr(lmdb_writer, "encode_chunk", lambda task: calls.append(1) or real(task))
    resumed = run_label(_config(catalog_dir), quiet=True)
    assert len(calls) == 8 - 2                       # only what was not committed
    state = _folder_state(run)
    reference = _folder_state(catalog_dir / "runs" / "clean")
    assert {k: v for k, v in state.items() if k != "manifest.json"} == \
        {k: v for k, v in reference.items() if k != "manifest.json"}
    assert resumed["splits"] == clean["splits"]


def test_cli_runs_the_stage_and_prints_one_summary(catalog_dir, cli):
    args = ["label", "--data-dir", catalog_dir]
    for s in SETTINGS:
        args += ["--set", s]
    r = cli(*args, "--set", "label.processes=2")
    assert r.returncode == 0, r.stderr
    out = r.stdout.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("label: run selfie: 9 of 17 posts eligible")
    assert "2 groups of 4: 4 good, 4 bad" in out[0]
    assert (catalog_dir / "runs" / "selfie" / "train_lmdb" / "data.mdb").is_file()


def _one_error_line(r, *needles):
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("override,needles", [
    ("label.group_size=5", ["label.group_size", "even"]),
    ("label.val_ratio=0.3", ["ratios must sum to 1"]),
    ("label.max_followers=5", ["label.max_followers", ">= label.min_followers"]),
    ("label.resize_mode=stretch", ["label.resize_mode", "squash"]),
    ("label.encoding=webp", ["label.encoding"]),
    ("label.new_width=0", ["label.new_width", ">= 1"]),
])
def test_bad_settings_are_one_line_and_exit_2(catalog_dir, cli, override, needles):
    args = ["label", "--data-dir", catalog_dir]
    for s in SETTINGS:
        args += ["--set", s]
    _one_error_line(cli(*args, "--set", override), *needles)
    assert not (catalog_dir / "runs").exists()


def test_missing_catalog_is_one_line_and_exit_2(tmp_path, cli):
    _one_error_line(cli("label", "--data-dir", tmp_path / "nothing"), "no catalog here")


def test_too_few_posts_for_a_group_is_one_line(catalog_dir, cli):
    _one_error_line(cli("label", "--data-dir", catalog_dir, "--set", "label.group_size=100",
                        "--set", "label.min_faces=0"), "nothing to label", "group_size = 100")


def test_a_corrupt_image_is_one_line_and_the_last_good_run_is_kept(catalog_dir, cli):
    args = ["label", "--data-dir", catalog_dir]
    for s in SETTINGS:
        args += ["--set", s]
    assert cli(*args).returncode == 0
    run = catalog_dir / "runs" / "selfie"
    before = _folder_state(run)
    rows = _csv(run / "labels.csv")
    victim = catalog_dir / rows[0]["path"]
    victim.write_bytes(b"this is not an image")
    line = _one_error_line(cli(*args, "--set", "label.seed=9"), str(victim), "cannot use")
    assert "Traceback" not in line
    assert _folder_state(run) == before              # nothing already written was lost
    victim.unlink()
    _one_error_line(cli(*args, "--set", "label.seed=9"), "missing from the image store",
                    str(victim))
    assert _folder_state(run) == before


def test_the_stage_script_runs_the_same_command(tmp_path):
    import os
    import subprocess
    from conftest import ROOT
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run(["bash", str(ROOT / "scripts" / "label.sh"), "--data-dir",
                        tmp_path / "none"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and "deepselfie label: error:" in r.stderr
    assert "no catalog here" in r.stderr
