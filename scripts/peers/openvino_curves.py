"""OpenVINO's verify-pass curve, run inside the OpenVINO virtualenv (scripts/peers/setup_peers.sh) by
`specops bench curves`: reads the same ONNX file (MatMulNBits and GroupQueryAttention included) and
answers each stdin line with one sweep's times (ms) over passes of 1..--max-tokens tokens. The past
is a fixed [1, kv_heads, past, head_dim] tensor per layer, fed each call as OpenVINO's decomposed
attention takes it; 2 warm-up passes and 3 timed per length, as specops.profile.pass_curve does."""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def worker(model_file: str, threads: int, max_tokens: int, past: int, kv_heads: int, head_dim: int) -> None:
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


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for flag in ("--model-file",):
        ap.add_argument(flag, required=True)
    for flag in ("--threads", "--max-tokens", "--past", "--kv-heads", "--head-dim"):
        ap.add_argument(flag, type=int, required=True)
    a = ap.parse_args()
    worker(a.model_file, a.threads, a.max_tokens, a.past, a.kv_heads, a.head_dim)
