#!/usr/bin/env python
"""Quantize an ONNX draft (e.g. TinyLlama fp32, 4.4 GB) to int4 weights (about 0.7 GB), the
draft precision that lets Phi-3-mini int4 and a draft share a 4Gi pod (docs/production_plan.md).

    python scripts/quantize_draft.py SRC_FOLDER DST_FOLDER [--block-size 32] [--accuracy-level 4]

Weight-only, round-to-nearest, with onnxruntime's own MatMulNBitsQuantizer: every MatMul with a
constant weight becomes MatMulNBits and the embedding Gather becomes GatherBlockQuantized;
blocks of 32 along the reduction axis, symmetric (one fp32 scale per block, no zero point),
the same format as Phi-3's `cpu-int4-rtn-block-32-acc-level-4`. Accuracy level 4 lets the
kernels compute in int8 (fastest on CPU). Activations and the KV cache stay fp32.

DST gets SRC's small files, `model.onnx` + `model.onnx_data` (external, so it is mapped),
`quantization.json` (the settings and a logit check against SRC) and a fresh manifest.sha256.
Needs `onnx` (the `build` extra); the service does not.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from prepack_target import CHECK_IDS, copy_small_files, write_manifest  # noqa: E402

from specops.runtime.decoder import Decoder  # noqa: E402
from specops.runtime.model_folder import read_model_folder  # noqa: E402

RECORD = "quantization.json"


def quantize(model_file: Path, out_file: Path, block_size: int, accuracy_level: int) -> dict:
    """MatMul -> MatMulNBits, Gather -> GatherBlockQuantized; returns op counts before/after."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    model = onnx.load(str(model_file))  # loads external data too (a 4.4 GB draft needs that much RAM)
    before = _count_ops(model)
    quant = MatMulNBitsQuantizer(
        model, bits=4, block_size=block_size, is_symmetric=True, accuracy_level=accuracy_level,
        op_types_to_quantize=("MatMul", "Gather"),
        quant_axes=(("MatMul", 0), ("Gather", 1)),  # MatMul B is [K, N]: blocks along K; embeddings along hidden
    )
    quant.process()
    onnx.save_model(quant.model.model, str(out_file), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=out_file.name + "_data", size_threshold=1024)
    (out_file.parent / (out_file.name + "_data")).chmod(0o644)  # onnx writes 0600; a non-root reader needs it
    after = _count_ops(onnx.load(str(out_file), load_external_data=False))
    return {"ops_before": before, "ops_after": after}


def _count_ops(model) -> dict[str, int]:
    kinds = ("MatMul", "Gather", "MatMulNBits", "GatherBlockQuantized")
    return {k: sum(n.op_type == k for n in model.graph.node) for k in kinds}


def compare_logits(src: Path, dst: Path) -> dict:
    """Prefill the same ids in both; int4 moves logits a little, argmax should mostly agree."""
    got = []
    for folder in (src, dst):
        spec = read_model_folder(folder, verify=False)
        got.append(Decoder(spec, capacity=64).append([i % spec.vocab_size for i in CHECK_IDS]))
    ref, new = got
    return {"max_logit_diff": float(np.abs(ref - new).max()), "logit_scale": float(np.abs(ref).max()),
            "top1_agreement": float(np.mean(ref.argmax(-1) == new.argmax(-1)))}


def quantize_folder(src: Path, dst: Path, block_size: int = 32, accuracy_level: int = 4) -> dict:
    if src.resolve() == dst.resolve():
        raise SystemExit("DST must be a new folder, not SRC")
    spec = read_model_folder(src)
    if spec.layout != "optimum":
        raise SystemExit(f"{src}: a builder-layout model is quantized by the model builder (-p int4), not here")
    start = time.perf_counter()
    copy_small_files(src, dst, spec.model_file)
    out_file = dst / "model.onnx"
    record = {"source": str(src), "bits": 4, "block_size": block_size, "symmetric": True,
              "accuracy_level": accuracy_level, **quantize(spec.model_file, out_file, block_size, accuracy_level)}
    if record["ops_after"]["MatMulNBits"] == 0:
        raise SystemExit(f"{spec.model_file}: no MatMul with a constant weight was quantized")
    record |= compare_logits(src, dst)
    record["seconds"] = round(time.perf_counter() - start, 1)
    (dst / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    write_manifest(dst)
    return record


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", type=Path, help="draft model folder (Optimum layout, fp32 or fp16 weights)")
    parser.add_argument("dst", type=Path, help="new folder for the int4 draft")
    parser.add_argument("--block-size", type=int, default=32, choices=(16, 32, 64, 128, 256))
    parser.add_argument("--accuracy-level", type=int, default=4, choices=(0, 1, 2, 3, 4),
                        help="4 = int8 compute (fastest on CPU); 0 = unset (fp32 compute)")
    args = parser.parse_args()
    print(json.dumps(quantize_folder(args.src, args.dst, args.block_size, args.accuracy_level)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
