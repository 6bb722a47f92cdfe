"""benchmarks/bench_finetune.py, the script a session with a GPU runs for VGG16 fine-tuning img/s
and MFU: its FLOP count follows the net's backward plan, and it runs end to end (tiny, on the
CPU, eager: the compiled step is tested in test_compiled_train.py) printing a row per mode."""
import json
import subprocess
import sys

import pytest

import models.caffe as caffe
from conftest import ROOT
from models.caffe import compiled

sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_finetune  # noqa: E402


def test_training_flops_are_three_passes_but_the_first_layers_input_gradient():
    net = caffe.Net(bench_finetune.train_net(1, 224), caffe.TRAIN)
    forward = compiled.forward_flops(net)
    conv1_1 = 2.0 * 224 * 224 * 64 * 3 * 3 * 3
    assert forward == pytest.approx(30.95e9, rel=0.01)          # VGG16's well-known ~31 GFLOP
    assert bench_finetune.training_flops(net) == pytest.approx(3 * forward - conv1_1)


def test_it_runs_and_reports_img_s_and_mfu(tmp_path):
    out = tmp_path / "rows.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_finetune.py"),
                        "--device", "cpu", "--batch", "2", "--size", "32", "--iters", "1",
                        "--warmup", "1", "--no-compiled", "--json", str(out)],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = json.loads(out.read_text())
    assert [row["mode"] for row in rows] == ["fast (bf16)", "fp32"]     # bf16 first: the GPU row
    for row in rows:
        assert row["img_s"] > 0 and 0 < row["mfu"] < 2 and row["peak_from"].startswith("a measured")
    assert "MFU" in r.stdout and all(row["run"] == "eager" for row in rows)
