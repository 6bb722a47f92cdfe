"""The golden cases copied into the repository (tests/data/caffe-golden) are the shared ones:
when ../shared/caffe-golden is present, every file there is in the copy with the same bytes
(LMDB lock files aside: reader state, rewritten by opening). Without the shared folder the copy
is what the suite checks, so it must be there and complete."""
import hashlib
import pathlib

import pytest

from conftest import GOLDEN, SHARED_GOLDEN, require_golden


def _files(root: pathlib.Path) -> dict:
    return {str(p.relative_to(root)): p for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "lock.mdb"}


def _digest(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_copy_is_in_the_repository(golden):
    for kind in ("nets", "solvers", "data", "logs", "round2"):
        assert (golden / kind).is_dir(), kind
    assert (golden / "PROVENANCE.md").is_file()


def test_a_missing_golden_folder_fails_rather_than_skips(tmp_path):
    with pytest.raises(pytest.fail.Exception, match="missing"):
        require_golden(tmp_path / "caffe-golden")


def test_the_copy_has_every_shared_case_byte_for_byte():
    if not SHARED_GOLDEN.is_dir():
        pytest.skip(f"{SHARED_GOLDEN} is not present: the in-repo copy is the reference")
    shared, ours = _files(SHARED_GOLDEN), _files(GOLDEN)
    missing = sorted(set(shared) - set(ours))
    assert not missing, f"in {SHARED_GOLDEN} but not in {GOLDEN}: {missing}"
    differ = sorted(k for k in shared if _digest(shared[k]) != _digest(ours[k]))
    assert not differ, f"differ from {SHARED_GOLDEN}: {differ}"
