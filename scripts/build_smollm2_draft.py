#!/usr/bin/env python
"""Build the SmolLM2-135M-Instruct draft (specops_build/smollm2_draft.py): prompts, truncated
tokenizer, the served target's greedy continuations (onnxruntime-genai), distillation, Optimum-
layout export (fp32, int4, int8), measurement against the served target; the chosen variant goes
to --out with draft_manifest.json and manifest.sha256.

    python scripts/build_smollm2_draft.py --work DIR --out models/smollm2-draft \\
        [--target-onnx ~/.cache/specops/prepared/smollm2-135m-instruct] [--target-hf /tmp/smollm2/hf] \\
        [--smoke] [--from STAGE] [--to STAGE] [--vocab N] [--shape h,layers,heads,kv,inter] \\
        [--steps N] [--prompts N] [--bits 4|8] [--export-vocab N] [--gen-only-existing]

Stages resume from the files in --work (generation also from its chunk files). --smoke runs every
stage tiny (about a minute) and needs no fp32 copy of the target. Needs the `build` extra
(torch CPU, transformers, onnx) and onnxruntime-genai.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from specops_build import smollm2_draft as sd  # noqa: E402
from specops_build.config import ModelShape  # noqa: E402

SERVED = Path.home() / ".cache/specops/prepared/smollm2-135m-instruct"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--target-onnx", type=Path, default=SERVED, help="the served target folder (builder export)")
    p.add_argument("--target-hf", type=Path, default=Path("/tmp/smollm2/hf"),
                   help="fp32 HF copy of the target (its embedding initialises the draft's)")
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--from", dest="start", default="prompts", choices=sd.STAGES)
    p.add_argument("--to", dest="stop", default="measure", choices=sd.STAGES)
    p.add_argument("--vocab", type=int)
    p.add_argument("--shape", help="hidden,layers,heads,kv_heads,intermediate")
    p.add_argument("--steps", type=int)
    p.add_argument("--prompts", type=int, help="training prompts")
    p.add_argument("--bits", type=int, choices=(4, 8), help="weights of the committed variant")
    p.add_argument("--export-vocab", type=int, help="ship only the first N of the trained vocabulary's ids")
    p.add_argument("--gen-only-existing", action="store_true",
                   help="generate: assemble the chunks written so far instead of generating the rest")
    args = p.parse_args(argv)
    changes = {"vocab": args.vocab, "steps": args.steps, "train_prompts": args.prompts, "bits": args.bits,
               "export_vocab": args.export_vocab, "gen_only_existing": args.gen_only_existing or None,
               "shape": ModelShape(*map(int, args.shape.split(","))) if args.shape else None}
    plan = dataclasses.replace(sd.SMOKE if args.smoke else sd.FULL, **{k: v for k, v in changes.items() if v})
    t0 = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - t0:7.1f}s] {msg}", flush=True)

    log(f"plan: {plan}")
    result = sd.run(args.work, args.out, plan, args.target_onnx, args.target_hf, log, args.start, args.stop)
    if result:
        print(json.dumps(result.get("measured", {}), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
