"""``deepselfie faces``: mark every downloaded image in the catalog with its faces.

    deepselfie faces                    scan the images not scanned yet (--rescan: all of them)
    deepselfie faces --image P --json   the faces of one photo, as JSON on stdout
    deepselfie faces --image P --draw OUT.png
    deepselfie faces --fetch-weights    download and convert the MTCNN weights, then stop
"""
from __future__ import annotations

from deepselfie.console import summary
from deepselfie.errors import UserError

from . import TORCH_ENGINE


def register(subparsers, common):
    p = subparsers.add_parser(
        "faces", parents=[common], help="find the faces in downloaded images (MTCNN)",
        description="Mark every downloaded image in the catalog with its faces (MTCNN's "
                    "P-Net, R-Net and O-Net run as Caffe nets), or look at one photo.")
    p.add_argument("--rescan", action="store_true",
                   help="scan images that were scanned before, too")
    p.add_argument("--image", metavar="PATH", help="detect faces in this one photo instead")
    p.add_argument("--json", action="store_true",
                   help="with --image: print {\"faces\": [{box, score, landmarks}, ...]}")
    p.add_argument("--draw", metavar="OUT.png", help="with --image: write the photo with boxes")
    p.add_argument("--fetch-weights", action="store_true",
                   help="download and convert the MTCNN weights, then stop")
    p.set_defaults(func=run, nets=TORCH_ENGINE)


def run(args, cfg) -> int:
    if (args.json or args.draw) and not args.image:
        raise UserError("goes with --image PATH", field="--json" if args.json else "--draw")
    from models.faces.stage import detect_one, fetch_weights, scan

    if args.fetch_weights:
        folder = fetch_weights(cfg)
        summary("faces", f"MTCNN weights ready in {folder}")
        return 0
    if args.image:
        return detect_one(cfg, args.image, as_json=args.json, draw=args.draw)
    scan(cfg, rescan=args.rescan)
    return 0
