"""The Caffe runtime (models/caffe) depends on nothing else in the project: no module under it
imports the application (deepselfie), the stages (scrape, label) or the other models
(models.faces, models.selfie). Checked on the source with ast, relative imports resolved."""
import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
RUNTIME = ROOT / "models" / "caffe"
FORBIDDEN = ("deepselfie", "scrape", "label", "models.faces", "models.selfie")


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(path: pathlib.Path, module: str | None = None) -> set[str]:
    """Every module ``path`` (the module named ``module``) imports, as an absolute dotted name
    (relative ones resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = (module or _module_name(path)).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module
            names.add(prefix)
            names.update(f"{prefix}.{alias.name}" for alias in node.names)
    return names


def _forbidden(name: str) -> bool:
    return any(name == f or name.startswith(f + ".") for f in FORBIDDEN)


def test_runtime_imports_nothing_from_the_rest_of_the_project():
    files = sorted(RUNTIME.rglob("*.py"))
    assert len(files) > 20
    bad = {str(f.relative_to(ROOT)): sorted(n for n in imported_modules(f) if _forbidden(n))
           for f in files}
    assert not {f: n for f, n in bad.items() if n}


def test_the_check_sees_absolute_and_relative_imports(tmp_path):
    """The checker itself: it would flag both spellings of a forbidden import."""
    assert "models.caffe.layer" in imported_modules(RUNTIME / "layers" / "vision.py")
    probe = tmp_path / "probe.py"
    probe.write_text("from deepselfie.errors import UserError\nfrom ... import faces\n"
                     "import label.stage\nfrom .. import glog\n")
    names = imported_modules(probe, "models.caffe.layers.probe")
    assert {n for n in names if _forbidden(n)} == {
        "deepselfie.errors", "deepselfie.errors.UserError", "models.faces", "label.stage"}
    assert "models.caffe.glog" in names


@pytest.mark.parametrize("module", ["deepselfie.errors", "deepselfie.files", "deepselfie.cli",
                                    "models.caffe.errors"])
def test_error_and_file_helpers_stay_light(module):
    """The application's error and file helpers come from the runtime, which loads its engine
    (torch) only when a net, solver or layer is asked for."""
    code = f"import sys, {module}; assert 'torch' not in sys.modules, sorted(sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]


def test_user_error_is_a_caffe_error_with_the_same_line():
    from deepselfie.errors import UserError
    from models.caffe.errors import CaffeError
    a = UserError("bad value", path="net.prototxt", field="layer 'x'")
    b = CaffeError("bad value", path="net.prototxt", field="layer 'x'")
    assert isinstance(a, CaffeError) and str(a) == str(b) == "net.prototxt: layer 'x': bad value"
    assert a.exit_code == b.exit_code == 2
    assert (b.path, b.field, b.detail) == ("net.prototxt", "layer 'x'", "bad value")
