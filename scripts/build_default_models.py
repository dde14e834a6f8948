#!/usr/bin/env python
"""Build the embedded default model pair (needs the `build` extra: torch, transformers,
onnxruntime-genai). Reproducible with a fixed seed; prints its wall time.

    python scripts/build_default_models.py            # full build into models/
    python scripts/build_default_models.py --smoke --out /tmp/smoke-models   # minutes
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STAGES = ["tokenizers", "target_train", "target_export", "distill_data", "draft_train",
          "draft_export", "golden", "report", "manifest"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "models", help="where the model folders go")
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "default_models", help="scratch folder")
    parser.add_argument("--smoke", action="store_true", help="a few training steps, same export path")
    parser.add_argument("--from-stage", choices=STAGES, default=STAGES[0], help="resume at this stage")
    parser.add_argument("--until-stage", choices=STAGES, default=STAGES[-1], help="stop after this stage")
    args = parser.parse_args()

    import torch

    from specops_build import pipeline, report
    from specops_build.config import FULL, SMOKE

    torch.set_num_threads(2)
    plan = SMOKE if args.smoke else FULL
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - start:7.1f}s] {msg}", flush=True)

    run = {
        "tokenizers": lambda: pipeline.stage_tokenizers(args.work, log),
        "target_train": lambda: pipeline.stage_target_train(args.work, plan, log),
        "target_export": lambda: pipeline.stage_target_export(args.work, args.out, log),
        "distill_data": lambda: pipeline.stage_distill_data(args.work, plan, log),
        "draft_train": lambda: pipeline.stage_draft_train(args.work, plan, log),
        "draft_export": lambda: pipeline.stage_draft_export(args.work, args.out, log),
        "golden": lambda: report.stage_golden(args.out, log),
        "report": lambda: report.stage_report(args.out, args.work, plan, log),
        "manifest": lambda: report.stage_manifest(args.out, log),
    }
    first, last = STAGES.index(args.from_stage), STAGES.index(args.until_stage)
    report_file = args.out / "build_report.json"
    earlier = json.loads(report_file.read_text()).get("build_seconds", {}).get("stages", {}) if report_file.exists() else {}
    seconds = {}
    for name in STAGES[first:last + 1]:
        t0 = time.time()
        run[name]()
        seconds[name] = round(time.time() - t0, 1)
        log(f"stage {name} done in {seconds[name]:.1f}s")
    wall = round(time.time() - start, 1)
    log(f"build finished: wall time {wall:.1f}s")
    if "report" in seconds and report_file.exists():  # the report records how long its build took
        report_data = json.loads(report_file.read_text())
        build = {"stages": seconds, "wall": wall, "smoke": args.smoke}
        if first > 0:  # resumed: the earlier stages' times are those of the build that ran them
            stages = {**{n: earlier[n] for n in STAGES[:first] if n in earlier}, **seconds}
            build = {"stages": stages, "wall": round(sum(stages.values()), 1), "wall_is_sum_of_stages": True,
                     "resumed_from": args.from_stage, "smoke": args.smoke}
        report_data["build_seconds"] = build
        report_file.write_text(json.dumps(report_data, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
