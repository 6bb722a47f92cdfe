"""Regenerate caffe_pb2.py from caffe.proto: ``python -m models.caffe.proto.build``.

Uses the protoc bundled in grpcio-tools (the version pinned in setup.py's ``test`` extra), so the
output is byte-for-byte reproducible. ``--check`` exits 1 when the checked-in file is stale.

One edit follows protoc: the messages go into a descriptor pool of their own instead of
protobuf's default pool, so that real pycaffe (whose caffe_pb2 also defines package ``caffe``)
can be imported in the same process as this runtime.
"""
import argparse
import pathlib
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent


def generate(out_dir):
    """Run protoc on caffe.proto, writing caffe_pb2.py into out_dir; return its path."""
    try:
        from grpc_tools import protoc
    except ImportError:
        sys.exit("grpcio-tools is missing: pip install -e '.[test]' (it provides protoc)")
    rc = protoc.main(["protoc", f"-I{HERE}", f"--python_out={out_dir}", str(HERE / "caffe.proto")])
    if rc != 0:
        sys.exit(f"protoc failed on {HERE / 'caffe.proto'} (exit {rc})")
    out = pathlib.Path(out_dir) / "caffe_pb2.py"
    code = out.read_text()
    default = "_descriptor_pool.Default().AddSerializedFile("
    if code.count(default) != 1:
        sys.exit("protoc output changed shape: cannot move caffe_pb2 into its own pool")
    code = code.replace(default, "_descriptor_pool.DescriptorPool().AddSerializedFile(")
    out.write_text("# Edited by models/caffe/proto/build.py: messages live in a private pool.\n" + code)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only compare; exit 1 when stale")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(tmp).read_text()
    target = HERE / "caffe_pb2.py"
    if args.check:
        if not target.exists() or target.read_text() != fresh:
            print(f"{target} is stale: run python -m models.caffe.proto.build", file=sys.stderr)
            return 1
        return 0
    target.write_text(fresh)
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
