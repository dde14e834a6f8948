"""`specops bench curves`: the verify-path candidates side by side, interleaved in one run (a
benchmark, not a test): a target pass over n = 1..N tokens after `--past` tokens of context on

  stock     onnxruntime's own kernels, the folder's graph as it is (the engine's `Decoder`)
  tiled     specops' tiled kernel on the batch decoder's graph (the engine's path; one-row passes)
  openvino  OpenVINO reading the same ONNX file, in its own virtualenv (scripts/peers/setup_peers.sh),
            driven over a pipe (scripts/peers/openvino_curves.py); left out when that venv is absent

Each round times every candidate's sweep (shortest to longest, 2 warm-up passes and 3 timed per
length: specops.profile.pass_curve; the OpenVINO worker does the same) one after the other;
medians over rounds. Prints one JSON line (--json writes it).

    specops bench curves --target build/shapes/phi3-mini-int4 [--rounds 3] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import numpy as np

from .measure import emit_report, run_record

ROOT = Path(__file__).resolve().parents[2]
OPENVINO_PYTHON = ROOT / ".peers" / "openvino" / "bin" / "python"
OPENVINO_WORKER = ROOT / "scripts" / "peers" / "openvino_curves.py"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", default="build/shapes/phi3-mini-int4",
                        help="a model folder (scripts/build_shape_models.py builds the production shapes)")
    parser.add_argument("--max-tokens", type=int, default=9, help="longest pass timed")
    parser.add_argument("--past", type=int, default=100, help="tokens of context before the timed passes")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved sweeps (medians)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-openvino", action="store_true", help="leave OpenVINO out even where its venv exists")
    parser.add_argument("--json", type=Path, help="also write the report here")


def openvino_worker(spec, args: argparse.Namespace) -> subprocess.Popen | None:
    if args.no_openvino or not (OPENVINO_PYTHON.exists() and OPENVINO_WORKER.exists()):
        return None
    return subprocess.Popen([str(OPENVINO_PYTHON), str(OPENVINO_WORKER), "--model-file", str(spec.model_file),
                             "--threads", str(args.threads), "--max-tokens", str(args.max_tokens),
                             "--past", str(args.past), "--kv-heads", str(spec.kv_heads),
                             "--head-dim", str(spec.head_dim)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def main(args: argparse.Namespace) -> int:
    from ..profile import machine, pass_curve
    from ..runtime.batch_decoder import BatchDecoder, SlotDecoder
    from ..runtime.decoder import Decoder, SessionConfig
    from ..runtime.model_folder import read_model_folder

    spec = read_model_folder(args.target, False)  # no checksums: a benchmark
    cap = args.past + args.max_tokens + 8
    candidates = {"stock": Decoder(spec, SessionConfig(args.threads), cap),
                  "tiled": SlotDecoder(BatchDecoder(spec, SessionConfig(args.threads, kernel="tiled"), 1, cap))}
    worker = openvino_worker(spec, args)
    ready = json.loads(worker.stdout.readline()) if worker else {}
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
    report = {"bench": "verify_curves", "run": run_record(args.command_line), "target": args.target,
              "past": args.past, "threads": args.threads, "rounds": args.rounds, "curves_ms": curves,
              "ratio_to_best_one_token": {name: [round(v / best_one, 3) for v in c] for name, c in curves.items()},
              "machine": machine(), **({"openvino": ready["openvino"]} if worker else {})}
    emit_report(report, args.json)
    return 0
