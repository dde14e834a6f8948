#!/usr/bin/env python
"""Fidelity of the served default model to its fp32 reference (specops/fidelity.py): teacher-forced
top-1 agreement (with disagreements by fp32 top-2 gap), greedy continuations identical to fp32's,
and the answer to "What is the capital of France?". Prints one JSON line. The engine is loaded as
the service would load it from the environment (SPECOPS_KERNEL, SPECOPS_CONSISTENT_PASSES, ...),
with no draft model, so one run per setting gives the table per kernel or precision:

    SPECOPS_KERNEL=stock python scripts/fidelity.py [--records 46] [--json out.json]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from specops.bench import emit_report  # noqa: E402
from specops.config import Settings  # noqa: E402
from specops.fidelity import REFERENCE, load_reference, measure  # noqa: E402
from specops.loader import load_engine  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", type=Path, default=REFERENCE)
    ap.add_argument("--records", type=int, default=None, help="the first N prompts only (default: all)")
    ap.add_argument("--json", type=Path, default=None, help="also write the JSON line here")
    args = ap.parse_args(argv)
    settings = Settings(draft_model="none")
    engine = load_engine(settings)
    reference = load_reference(args.reference)
    start = time.perf_counter()
    result = measure(engine, reference, args.records)
    emit_report({"target_model": settings.target_model, "kernel": engine.target.kernel,
                 "kernel_note": engine.target.kernel_note, "precision": engine.target.precision,
                 "consistent_passes": settings.consistent_passes,
                 "min_rows": engine.target.min_rows, "reference_date": reference["date"],
                 "gguf_sha256": reference["gguf_sha256"], **result.as_dict(),
                 "seconds": round(time.perf_counter() - start, 1)}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
