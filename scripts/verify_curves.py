#!/usr/bin/env python
"""The verify-path candidates side by side, interleaved in one run (issue 13; a benchmark, not a
test): a target pass over n = 1..N tokens after `--past` tokens of context on

  stock     onnxruntime's own kernels, the folder's graph as it is (the engine's `Decoder`)
  tiled     specops' tiled kernel on the batch decoder's graph (the engine's path; one-row passes)
  openvino  OpenVINO reading the same ONNX file (MatMulNBits and GroupQueryAttention included),
            in its own virtualenv (scripts/peers/setup_peers.sh), driven over a pipe; the past is
            a fixed [1, kv_heads, past, head_dim] tensor per layer, fed each call as OpenVINO's
            decomposed attention takes it

Each round times every candidate's sweep (shortest to longest, 2 warm-up passes and 3 timed per
length: specops.profile.pass_curve; the OpenVINO worker does the same) one after the other;
medians over rounds. Prints one JSON line (--json writes it).

    python scripts/verify_curves.py --target build/shapes/phi3-mini-int4 [--rounds 3] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OPENVINO_PYTHON = ROOT / ".peers" / "openvino" / "bin" / "python"


def openvino_worker(model_file: str, threads: int, max_tokens: int, past: int, kv_heads: int, head_dim: int) -> None:
    """Runs inside the OpenVINO venv: answers each stdin line with one sweep's times (ms)."""
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(core.read_model(model_file), "CPU", {"INFERENCE_NUM_THREADS": threads})
    request = compiled.create_infer_request()
    feeds = {}
    for port in compiled.inputs:
        name = port.get_any_name()
        if name.startswith("past_key_values"):  # (the graph leaves head_dim symbolic: from genai_config.json)
            feeds[name] = np.random.default_rng(0).standard_normal((1, kv_heads, past, head_dim)).astype(np.float32)
    print(json.dumps({"ready": True, "openvino": ov.get_version()}), flush=True)
    for _ in sys.stdin:
        times = []
        for n in range(1, max_tokens + 1):
            feeds["input_ids"] = (np.arange(n, dtype=np.int64) % 200 + 3)[None]
            feeds["attention_mask"] = np.ones((1, past + n), np.int64)
            samples = []
            for i in range(5):
                t = time.perf_counter()
                request.infer(feeds)
                if i >= 2:
                    samples.append(time.perf_counter() - t)
            times.append(float(np.median(samples)) * 1e3)
        print(json.dumps(times), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="build/shapes/phi3-mini-int4")
    parser.add_argument("--max-tokens", type=int, default=9)
    parser.add_argument("--past", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-openvino", action="store_true")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--openvino-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--kv-heads", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--head-dim", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.openvino_worker:
        openvino_worker(args.target, args.threads, args.max_tokens, args.past, args.kv_heads, args.head_dim)
        return 0

    from specops.bench import emit_report
    from specops.profile import machine, pass_curve
    from specops.runtime.batch_decoder import BatchDecoder, SlotDecoder
    from specops.runtime.decoder import Decoder, SessionConfig
    from specops.runtime.model_folder import read_model_folder

    spec = read_model_folder(args.target, False)  # no checksums: a benchmark
    cap = args.past + args.max_tokens + 8
    candidates = {"stock": Decoder(spec, SessionConfig(args.threads), cap),
                  "tiled": SlotDecoder(BatchDecoder(spec, SessionConfig(args.threads, kernel="tiled"), 1, cap))}
    worker = None
    if not args.no_openvino and OPENVINO_PYTHON.exists():
        worker = subprocess.Popen([str(OPENVINO_PYTHON), __file__, "--openvino-worker", "--target",
                                   str(spec.model_file), "--threads", str(args.threads), "--max-tokens",
                                   str(args.max_tokens), "--past", str(args.past),
                                   "--kv-heads", str(spec.kv_heads), "--head-dim", str(spec.head_dim)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        ready = json.loads(worker.stdout.readline())
    sweeps: dict[str, list[list[float]]] = {name: [] for name in [*candidates, *(["openvino"] if worker else [])]}
    for _ in range(args.rounds):
        for name, decoder in candidates.items():
            sweeps[name].append(pass_curve(decoder, args.max_tokens, args.past, rounds=1).ms)
        if worker:
            worker.stdin.write("sweep\n")
            worker.stdin.flush()
            sweeps["openvino"].append(json.loads(worker.stdout.readline()))
    if worker:
        worker.stdin.close()
        worker.wait(timeout=60)
    curves = {name: [round(float(v), 2) for v in np.median(np.array(s), axis=0)] for name, s in sweeps.items()}
    best_one = min(c[0] for c in curves.values())
    report = {"bench": "verify_curves", "target": args.target, "past": args.past, "threads": args.threads,
              "rounds": args.rounds, "curves_ms": curves,
              "ratio_to_best_one_token": {name: [round(v / best_one, 3) for v in c] for name, c in curves.items()},
              "machine": machine(), **({"openvino": ready["openvino"]} if worker else {})}
    emit_report(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
