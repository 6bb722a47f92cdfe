"""Every golden nets case (tests/data/caffe-golden/nets and round2/nets, computed by real Caffe)
reproduced by the runtime: forward blobs within 1e-5, backward diffs within 1e-4 (relative to
the largest value). Cases are discovered from the folder, so new ones are checked too."""
import json

import numpy as np
import pytest

import models.caffe as caffe
from conftest import golden_cases
from golden import run_net_case

CASES = golden_cases("nets")            # "nets/NAME" and "round2/nets/NAME"


def test_golden_nets_are_present(golden):
    assert CASES, "no cases under caffe-golden/nets"


@pytest.mark.parametrize("name", CASES)
def test_net_case_matches_caffe(golden, name):
    case = golden / name
    fwd, bwd = run_net_case(case, caffe)
    assert set(fwd) == set(np.load(case / "blobs.npz").files)
    assert set(bwd) == set(np.load(case / "diffs.npz").files)   # backward ran, every diff compared
    bad = {k: v for k, v in fwd.items() if not v <= 1e-5}
    assert not bad, f"forward mismatch: {bad}"
    bad = {k: v for k, v in bwd.items() if not v <= 1e-4}
    assert not bad, f"backward mismatch: {bad}"
    meta = json.loads((case / "meta.json").read_text())
    net = caffe.Net(str(case / "net.prototxt"), caffe.TRAIN if meta.get("phase") == "TRAIN"
                    else caffe.TEST)
    assert net.outputs == meta["outputs"]   # Caffe lists outputs by name (a std::set)
    assert net.inputs == meta["inputs"]
