#!/usr/bin/env python
"""Random-weight Phi-3-mini int4 and TinyLlama int4 in the production formats, full depth, for
`specops profile` (pass costs only; their logits are noise). Needs the `prepare` extra.

    python scripts/build_shape_models.py [--out build/shapes] [--only phi3-mini-int4,tinyllama-int4]
    specops profile --target build/shapes/phi3-mini-int4 --draft build/shapes/tinyllama-int4
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from specops_build.shape_models import SHAPES, build  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "build" / "shapes")
    p.add_argument("--only", default=",".join(SHAPES), help="comma-separated: " + ", ".join(SHAPES))
    args = p.parse_args()
    t0 = time.time()
    for name in args.only.split(","):
        folder = build(SHAPES[name], args.out / name, args.out / "work",
                       log=lambda msg: print(f"[{time.time() - t0:6.1f}s] {msg}", flush=True))
        size = sum(f.stat().st_size for f in folder.iterdir()) / 2**20
        print(f"[{time.time() - t0:6.1f}s] {name}: {folder} ({size:.0f} MiB on disk)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
