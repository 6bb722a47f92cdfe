"""Only the catalog (deepselfie/catalog.py) speaks SQL: every other module of the program asks it
through its methods, so the schema can change in one place."""
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("deepselfie", "scrape", "label", "models")
CATALOG = ROOT / "deepselfie" / "catalog.py"

# SQL statements (as the catalog writes them: upper-case keywords) and the ways to run them.
SQL = re.compile(
    r"\bSELECT\b[\s\S]{0,200}?\bFROM\b|\bINSERT\s+(OR\s+\w+\s+)?INTO\b|\bUPDATE\s+\w+\s+SET\b"
    r"|\bDELETE\s+FROM\b|\b(CREATE|DROP|ALTER)\s+(TABLE|INDEX)\b|\bPRAGMA\b"
    r"|\.execute(many|script)?\(|\bsqlite3\b")


def offences(root: pathlib.Path) -> list[str]:
    found = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            if path == CATALOG or path.name.endswith("_pb2.py"):   # protoc's output
                continue
            text = path.read_text(encoding="utf-8")
            for m in SQL.finditer(text):
                line = text.count("\n", 0, m.start()) + 1
                found.append(f"{path.relative_to(root)}:{line}: {m.group(0)[:40]!r}")
    return found


def test_no_module_outside_the_catalog_contains_sql():
    assert offences(ROOT) == []


def test_the_scan_finds_sql_where_it_should_not_be(tmp_path):
    # The check itself can fail: a stage module with a query in it is caught.
    (tmp_path / "label").mkdir()
    (tmp_path / "label" / "posts.py").write_text(
        'rows = catalog.execute("SELECT p.id\\n FROM posts p")\n')
    (tmp_path / "scrape").mkdir()
    (tmp_path / "scrape" / "ok.py").write_text('"""Select the posts from the catalog."""\n')
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "faces.py").write_text(
        "cat.db.executemany('INSERT OR REPLACE INTO faces VALUES (?)', rows)\n")
    (tmp_path / "deepselfie").mkdir()
    found = offences(tmp_path)
    assert [f.split(":")[0] for f in found] == ["label/posts.py", "label/posts.py",
                                                "models/faces.py", "models/faces.py"]
