"""The demo's report sections and its training files, without running the demo (test_demo.py
runs the whole thing, slow)."""
from html.parser import HTMLParser

from deepselfie.demo import report
from deepselfie.demo.run import ROOT, write_small_net_files
from models.caffe.proto import caffe_pb2
from models.caffe.protoio import read_prototxt

HOSTILE = "<script>alert('x')</script>&"


class _Cells(HTMLParser):
    """Every tag opened and the text of each cell."""

    def __init__(self):
        super().__init__()
        self.tags, self.cells, self._cell = [], [], None

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag in ("td", "th"):
            self._cell = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.cells.append(self._cell)
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


def _parse(text):
    parser = _Cells()
    parser.feed(text)
    parser.close()
    return parser


def test_the_stages_are_a_table_and_every_value_is_escaped():
    stages = {
        "scrape": {"posts_new": 12, "tag_errors": {"count": 1, "reasons": {HOSTILE: 1}},
                   "seconds": 1.23456},
        "label": {"run": HOSTILE, "excluded": {"too recent": 3}, "mean_value_bgr": [1.5, 2.25]},
        HOSTILE: {HOSTILE: HOSTILE},
    }
    page = report.stages_table(stages)
    assert "<script" not in page and "&lt;script&gt;" in page
    parsed = _parse(page)
    assert "script" not in parsed.tags
    assert {"scrape", "label", "posts_new", "12", "1.235", "too recent", "3",
            "1.5, 2.25"} <= set(parsed.cells)
    assert parsed.cells.count(HOSTILE) == 5          # each hostile key and value, as text


def test_the_cue_table_and_the_sections_are_escaped():
    cues = [{"cue": HOSTILE, "with": 0.61, "without": 0.4, "n_with": 7, "effect_on_likes": 0.3}]
    blocks = report.sections({"faces": {"scanned": 3}}, accuracy=0.75, n_test=8, curve=False,
                             cues=cues)
    assert [heading for heading, _ in blocks] == [
        "How this demo was made", "Stages", "Held-out accuracy", "Training", "Score by cue"]
    body = "".join(html for _, html in blocks)
    assert "<script" not in body and "75.0%" in body
    assert HOSTILE in _parse(body).cells


def test_the_small_net_files_are_changed_through_protobuf(tmp_path):
    run_dir = tmp_path / "runs" / "demo"
    solver_path = write_small_net_files(run_dir, tmp_path / "train", max_iter=7,
                                        test_interval=3, batch_size=5)
    solver = read_prototxt(solver_path, caffe_pb2.SolverParameter)
    assert solver.net == str(tmp_path / "train" / "train_val.prototxt")
    assert (solver.max_iter, solver.test_interval, solver.snapshot) == (7, 3, 0)
    assert solver.snapshot_prefix == str(tmp_path / "train" / "selfie_small")
    assert solver.type == "Adam" and solver.test_iter == [4]     # the rest is the shipped file's
    net = read_prototxt(solver.net, caffe_pb2.NetParameter)
    data = [layer for layer in net.layer if layer.type == "Data"]
    assert sorted(layer.data_param.source for layer in data) == [
        str(run_dir / "train_lmdb"), str(run_dir / "val_lmdb")]
    assert {layer.data_param.batch_size for layer in data} == {5}
    assert {layer.transform_param.mean_file for layer in data} == {
        str(run_dir / "mean.binaryproto")}
    shipped = read_prototxt(ROOT / "prototxt" / "selfie_small_train_val.prototxt",
                            caffe_pb2.NetParameter)
    for layer in shipped.layer:            # apart from those fields, the shipped net unchanged
        if layer.type == "Data":
            layer.data_param.source = str(run_dir / layer.data_param.source.split("/")[-1])
            layer.data_param.batch_size = 5
            layer.transform_param.mean_file = str(run_dir / "mean.binaryproto")
    assert net == shipped
