#!/usr/bin/env python
"""Random-weight Phi-3-mini int4 and TinyLlama int4 in the production formats, full depth, for
`specops profile` (pass costs only; their logits are noise). Needs the `prepare` extra.

    python scripts/build_shape_models.py [--out build/shapes] [--only phi3-mini-int4,tinyllama-int4]
    specops profile --target build/shapes/phi3-mini-int4 --draft build/shapes/tinyllama-int4

`--materialize` gives every layer its own weights, in the layouts the Deployment serves, for
memory rehearsals (scripts/pod_rehearsal.py), into build/shapes-full by default:
`phi3-mini-int4` (the builder folder, level 4: the tiled kernel's input; about 2.7 GB) and
`tinyllama-int4` (the Optimum layout production uses for the draft; about 0.7 GB). The stock
path's prepacked folders are then `scripts/prepack_target.py SRC DST` of each.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from specops.runtime.model_folder import write_manifest  # noqa: E402
from specops_build.shape_models import SHAPES, build, build_optimum_draft  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, help="default build/shapes (build/shapes-full with --materialize)")
    p.add_argument("--only", default=",".join(SHAPES), help="comma-separated: " + ", ".join(SHAPES))
    p.add_argument("--materialize", action="store_true",
                   help="every layer its own weights (full size); the draft in the Optimum layout")
    args = p.parse_args()
    out = args.out or ROOT / "build" / ("shapes-full" if args.materialize else "shapes")
    t0 = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - t0:6.1f}s] {msg}", flush=True)

    for name in args.only.split(","):
        shape = SHAPES[name]
        if args.materialize and shape.family == "llama":
            folder = build_optimum_draft(shape, out / name, out / "work", log=log)
        else:
            folder = build(shape, out / name, out / "work", log=log, materialize=args.materialize)
        if args.materialize:
            write_manifest(folder)  # the Deployment verifies checksums
        size = sum(f.stat().st_size for f in folder.iterdir()) / 2**20
        log(f"{name}: {folder} ({size:.0f} MiB on disk)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
