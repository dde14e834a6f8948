#!/usr/bin/env python
"""Write a model folder whose weights are already in onnxruntime's prepacked layout, so that
they are memory-mapped at load instead of repacked into a heap copy (Phi-3-mini int4: 5.4 GB
peak at load without this, about 2.7 GB with it; DESIGN.md section 2).

    python scripts/prepack_target.py SRC_FOLDER DST_FOLDER [--accuracy-level 1]

`--accuracy-level` first rewrites the MatMulNBits compute type. Measured on an AVX-512 VNNI
CPU: at level 4 (int8 compute, as Phi-3 ships) the prepacked weights are 1.5x the int4 codes
(scales and block sums packed in), at level 1 (fp32 compute) 1:1. In a 4Gi pod that decides
whether Phi-3 fits (docs/production_plan.md).

SRC is a model folder in either layout (builder or Optimum). DST gets a copy of its small
files, the optimized model under the same file name with one external data file holding the
original and the prepacked initializers, a fresh manifest.sha256, and `prepacked.json` with the
resident weight bytes that specops.budget counts. A check compares DST's logits with SRC's.

The prepacked layout depends on the CPU's vector extensions and the onnxruntime version (both
recorded in prepacked.json): run this on the node type that serves, with the serving image's
onnxruntime. The memory budget notices a mismatch and counts a heap repack instead.
Needs `onnx` (to read the saved initializer table); the service itself does not.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from specops.budget import PREPACKED_MARKER, cpu_isa  # noqa: E402
from specops.runtime.decoder import Decoder  # noqa: E402
from specops.runtime.model_folder import MANIFEST, read_model_folder  # noqa: E402

CHECK_IDS = [1, 415, 2253, 17354, 1701, 29916, 432, 3427, 975, 278, 17366, 11203, 29889]


def copy_small_files(src: Path, dst: Path, model_file: Path) -> None:
    """Everything but the model, its external data and the manifest (rewritten at the end)."""
    dst.mkdir(parents=True, exist_ok=True)
    for path in src.iterdir():
        if path.is_file() and not path.name.startswith(model_file.name) and path.name not in (MANIFEST,
                                                                                             PREPACKED_MARKER):
            shutil.copy2(path, dst / path.name)


def save_prepacked(model_file: Path, out_file: Path) -> None:
    """Open a session that saves its optimized graph with external, prepacked initializers."""
    so = ort.SessionOptions()
    # EXTENDED, not ALL: ALL may add layout transforms tied to this machine beyond the prepacking.
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(out_file)
    so.add_session_config_entry("session.optimized_model_external_initializers_file_name", out_file.name + ".data")
    # Small tensors (norms, shapes) stay inline; everything sizeable goes to the mapped file.
    so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    so.add_session_config_entry("session.save_external_prepacked_constant_initializers", "1")
    so.log_severity_level = 3
    ort.InferenceSession(str(model_file), so, providers=["CPUExecutionProvider"])


def with_accuracy_level(src: Path, model_file: Path, level: int, work: Path) -> Path:
    """A folder in `work` whose MatMulNBits compute at `level` (weights hard-linked where the file
    system allows, else copied: onnxruntime refuses external data behind a symlink).
    4 = int8 compute, the fastest; measured here (AVX-512 VNNI) its prepacked layout is 1.5x the
    int4 weights (scales and block sums packed in). 0-2 = float compute, packed 1:1."""
    import onnx
    from onnx import helper

    model = onnx.load(str(model_file), load_external_data=False)
    for node in (n for n in model.graph.node if n.op_type == "MatMulNBits"):
        kept = [a for a in node.attribute if a.name != "accuracy_level"]
        del node.attribute[:]
        node.attribute.extend(kept + [helper.make_attribute("accuracy_level", level)])
    for path in src.iterdir():
        if path.is_file() and path != model_file and path.name != MANIFEST:
            try:
                os.link(path, work / path.name)
            except OSError:  # another file system
                shutil.copy2(path, work / path.name)
    onnx.save_model(model, str(work / model_file.name))
    return work


def resident_bytes(out_file: Path) -> dict:
    """From the saved initializer table: bytes the prepacked kernels map, bytes of initializers
    used as they are (also touched), and originals that prepacking leaves untouched on disk."""
    import onnx

    model = onnx.load(str(out_file), load_external_data=False)
    packed = plain = untouched = count = 0
    for tensor in model.graph.initializer:
        entries = {e.key: e.value for e in tensor.external_data}
        size = int(entries.get("length", 0)) or len(tensor.raw_data)
        blobs = [v for k, v in entries.items() if k.startswith("prepacked")]
        for blob in blobs:  # "<op>+<hash>|<offset>;<length>;<alignment>" per prepacked buffer
            packed += int(blob.split("|", 1)[1].split(";")[1])
        count += bool(blobs)
        untouched += size if blobs else 0
        plain += 0 if blobs else size
    return {"prepacked_initializers": count, "prepacked_bytes": packed, "plain_bytes": plain,
            "untouched_original_bytes": untouched, "resident_weight_bytes": packed + plain}


def check_logits(src: Path, dst: Path, tolerance: float) -> float:
    """Prefill the same ids in both folders' models; the largest logit difference."""
    got = []
    for folder in (src, dst):
        spec = read_model_folder(folder, verify=False)
        ids = [i % spec.vocab_size for i in CHECK_IDS]
        got.append(Decoder(spec, capacity=64).append(ids))
    diff = float(np.abs(got[0] - got[1]).max())
    if diff > tolerance:
        raise SystemExit(f"prepacked model differs from the source: max |logit diff| {diff:.2e} > {tolerance}")
    return diff


def write_manifest(folder: Path) -> None:
    lines = []
    for path in sorted(p for p in folder.iterdir() if p.is_file() and p.name != MANIFEST):
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        lines.append(f"{digest.hexdigest()}  {path.name}")
    (folder / MANIFEST).write_text("\n".join(lines) + "\n")


def prepack(src: Path, dst: Path, tolerance: float = 1e-3, accuracy_level: int | None = None) -> dict:
    """SRC folder -> DST folder with prepacked weights; returns what prepacked.json records."""
    if src.resolve() == dst.resolve():
        raise SystemExit("DST must be a new folder, not SRC")
    spec = read_model_folder(src)
    start = time.perf_counter()
    copy_small_files(src, dst, spec.model_file)
    out_file = dst / spec.model_file.name
    with tempfile.TemporaryDirectory(prefix=".relevel-", dir=dst) as work:
        source = src if accuracy_level is None else with_accuracy_level(src, spec.model_file, accuracy_level,
                                                                         Path(work))
        save_prepacked(source / spec.model_file.name, out_file)
        record = {"source": str(src), "model_file": out_file.name, "accuracy_level": accuracy_level,
                  "onnxruntime": ort.__version__, "cpu_isa": cpu_isa(), **resident_bytes(out_file)}
        if record["prepacked_initializers"] == 0:
            raise SystemExit(f"{spec.model_file}: no kernel prepacked any weight; the copy would gain nothing")
        record["max_logit_diff"] = check_logits(source, dst, tolerance)  # same graph, prepacked or not
    record["seconds"] = round(time.perf_counter() - start, 1)
    (dst / PREPACKED_MARKER).write_text(json.dumps(record, indent=2) + "\n")
    write_manifest(dst)
    return record


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", type=Path, help="model folder (builder or Optimum layout)")
    parser.add_argument("dst", type=Path, help="new folder for the prepacked copy")
    parser.add_argument("--tolerance", type=float, default=1e-3, help="largest logit difference accepted")
    parser.add_argument("--accuracy-level", type=int, choices=(0, 1, 2, 4), default=None,
                        help="rewrite MatMulNBits' compute type first: 4 = int8 (fastest, larger packed "
                             "layout on AVX-512 VNNI), 1 = fp32 (packed as small as the int4 weights)")
    args = parser.parse_args()
    print(json.dumps(prepack(args.src, args.dst, args.tolerance, args.accuracy_level)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
