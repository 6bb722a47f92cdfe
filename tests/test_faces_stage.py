"""`deepselfie faces`: the catalog's images marked with their faces, resumably; one photo as
JSON or drawn; bad input ends in one line and exit code 2."""
import json

import numpy as np
import pytest
from PIL import Image

from deepselfie.config import load_config
from faces_support import iou, models_dir, photo  # noqa: F401
from deepselfie.catalog import Catalog

ASTRONAUT_FACE = (178, 58, 268, 180)


def _store(data_dir, cat, name, rgb, fmt="JPEG", raw=None):
    """Put an image into the content-addressed store and the images table."""
    import hashlib
    import io
    buf = io.BytesIO()
    if raw is None:
        Image.fromarray(rgb).save(buf, format=fmt, quality=95)
        raw = buf.getvalue()
    sha = hashlib.sha256(raw).hexdigest()
    rel = f"images/{sha[:2]}/{sha}.{fmt.lower()}"
    (data_dir / rel).parent.mkdir(parents=True, exist_ok=True)
    (data_dir / rel).write_bytes(raw)
    h, w = (rgb.shape[:2] if rgb is not None else (1, 1))
    cat.add_image(sha, rel, w, h, len(raw), fmt.lower())
    return sha


@pytest.fixture
def data_dir(tmp_path):
    d = tmp_path / "data"
    with Catalog(d / "catalog.sqlite") as cat:
        shas = {
            "astronaut": _store(d, cat, "astronaut", photo("astronaut")),
            "coffee": _store(d, cat, "coffee", photo("coffee")),
            "hopper_png": _store(d, cat, "hopper", photo("grace_hopper"), fmt="PNG"),
            "broken": _store(d, cat, "broken", None, raw=b"\xff\xd8\xff\xe0 not a jpeg"),
        }
    (d / "shas.json").write_text(json.dumps(shas))
    return d


def _opts(data_dir, models_dir, *more):
    return ["--data-dir", data_dir, "--set", f"paths.models_dir={models_dir}",
            "--set", "faces.batch_size=2", *more]


def test_the_stage_marks_each_image_with_its_faces_and_resumes(cli, data_dir, models_dir):
    shas = json.loads((data_dir / "shas.json").read_text())
    res = cli("faces", *_opts(data_dir, models_dir))
    assert res.returncode == 0, res.stderr
    last = res.stdout.strip().splitlines()[-1]
    assert last.startswith("faces: scanned 3 images") and "2 with faces (2 faces)" in last
    assert "1 unreadable" in last and shas["broken"][:12] in res.stderr
    with Catalog(data_dir / "catalog.sqlite") as cat:
        scans = {sha: cat.face_scan(sha) for sha in shas.values()}
        assert {sha for sha, scan in scans.items() if scan} == {
            shas["astronaut"], shas["coffee"], shas["hopper_png"]}
        assert scans[shas["coffee"]]["n_faces"] == 0
        assert scans[shas["coffee"]]["largest_share"] == 0
        a = scans[shas["astronaut"]]
        assert a["n_faces"] == 1 and "mtcnn facenet-pytorch-2.6.0" in a["detector"]
        (face,) = a["faces"]
        box = face.box
        assert iou(box, ASTRONAUT_FACE) > 0.5 and face.score > 0.99
        assert a["largest_share"] == pytest.approx(
            (box[2] - box[0]) * (box[3] - box[1]) / (512 * 512), rel=1e-3)
        marks = face.landmarks
        assert len(marks) == 5 and all(len(p) == 2 for p in marks)
        (run,) = cat.runs("faces")
        assert run["status"] == "done" and run["summary"]["faces"] == 2
        _store(data_dir, cat, "chelsea", photo("chelsea"))

    again = cli("faces", *_opts(data_dir, models_dir))                  # only what is new
    assert again.returncode == 0, again.stderr
    assert "scanned 1 images" in again.stdout and "3 scanned before" in again.stdout

    rescan = cli("faces", "--rescan", *_opts(data_dir, models_dir))
    assert rescan.returncode == 0 and "scanned 4 images" in rescan.stdout
    with Catalog(data_dir / "catalog.sqlite") as cat:
        scans = [cat.face_scan(image.sha256) for image in cat.images_to_scan(rescan=True)]
        assert sum(len(scan["faces"]) for scan in scans if scan) == 2
        assert cat.counts()["face_scans"] == 4


def test_an_interrupted_scan_keeps_the_batches_it_finished(data_dir, models_dir, monkeypatch,
                                                          capsys):
    from models.faces import stage
    from models.faces.detect import FaceDetector
    cfg = load_config(None, data_dir=data_dir, overrides=[
        f"paths.models_dir={models_dir}", "faces.batch_size=1"])
    calls = []
    real = FaceDetector.detect

    def detect_then_interrupt(self, images):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, images)
    monkeypatch.setattr(FaceDetector, "detect", detect_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        stage.scan(cfg)
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith("faces: scanned 1 images") and line.endswith(
        "(interrupted: run again to go on)")
    with Catalog(data_dir / "catalog.sqlite") as cat:
        assert cat.counts()["face_scans"] == 1
        assert [run["status"] for run in cat.runs()] == ["interrupted"]
    monkeypatch.setattr(FaceDetector, "detect", real)
    result = stage.scan(cfg)
    assert result["already_scanned"] == 1 and result["scanned"] == 2


def test_one_photo_as_json_and_drawn(cli, tmp_path, models_dir):
    src = tmp_path / "me.png"
    Image.fromarray(photo("astronaut")).save(src)
    out = tmp_path / "drawn.png"
    res = cli("faces", "--image", src, "--json", "--draw", out, "--data-dir", tmp_path,
              "--set", f"paths.models_dir={models_dir}")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert list(doc) == ["faces"] and len(doc["faces"]) == 1
    face = doc["faces"][0]
    assert sorted(face) == ["box", "landmarks", "score"]
    assert iou(face["box"], ASTRONAUT_FACE) > 0.5 and 0.99 < face["score"] <= 1
    assert len(face["landmarks"]) == 5 and all(len(p) == 2 for p in face["landmarks"])
    drawn = np.asarray(Image.open(out).convert("RGB"))
    assert drawn.shape == (512, 512, 3)
    x1, y1, x2, y2 = (round(v) for v in face["box"])
    assert (drawn != photo("astronaut")).any(axis=2)[y1:y2, x1:x2].any()   # the box is drawn
    assert (drawn == photo("astronaut")).all(axis=2)[300:, 300:].all()     # the rest is not


def test_coordinates_are_those_of_the_original_large_photo(cli, tmp_path, models_dir):
    src = tmp_path / "big.jpg"
    Image.fromarray(photo("astronaut")).resize((2048, 2048)).save(src, quality=95)
    res = cli("faces", "--image", src, "--json", "--data-dir", tmp_path,
              "--set", f"paths.models_dir={models_dir}")
    assert res.returncode == 0, res.stderr
    (face,) = json.loads(res.stdout)["faces"]
    assert iou(face["box"], [v * 4 for v in ASTRONAUT_FACE]) > 0.5


@pytest.mark.parametrize("args,needle", [
    (["--image", "{tmp}/missing.jpg"], "missing.jpg: file not found"),
    (["--image", "{tmp}/notes.txt"], "notes.txt: not a readable image"),
    (["--json"], "--json: goes with --image PATH"),
    (["--image", "{tmp}/ok.png", "--draw", "{tmp}/out.xyz"], "out.xyz: --draw: unknown image"),
    (["--image", "{tmp}/ok.png", "--draw", "{tmp}/no/such/out.png"], "--draw: folder does not"),
    (["--set", "faces.thresholds=[0.6, 0.7]"], "faces.thresholds: must be three scores"),
    (["--set", "faces.scale_factor=1.5"], "faces.scale_factor: must be between 0 and 1"),
    ([], "catalog.sqlite: no catalog here"),
])
def test_bad_input_is_one_line_and_exit_code_2(cli, tmp_path, models_dir, args, needle):
    (tmp_path / "notes.txt").write_text("hello")
    Image.fromarray(photo("coffee")).save(tmp_path / "ok.png")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    res = cli("faces", *args, "--data-dir", tmp_path / "empty",
              "--set", f"paths.models_dir={models_dir}")
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], res.stderr
    assert not (tmp_path / "empty").exists() or needle.startswith("catalog")


def test_an_empty_catalog_and_the_stage_script(tmp_path):
    import subprocess
    Catalog(tmp_path / "catalog.sqlite").close()
    from conftest import ROOT
    res = subprocess.run(["bash", str(ROOT / "scripts" / "faces.sh"), "--data-dir", tmp_path],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == ("faces: nothing to do: the catalog has no downloaded images "
                                  "yet (run `deepselfie scrape`)")
