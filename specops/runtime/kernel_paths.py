"""Which of the tiled kernel's paths serve here, each checked on this machine before it serves.

A *precision* is what the activations become (fp32, int8x3, bf16, int8); a *path* is the code
that computes it (qmatmul.c): fp32 on AVX-512, or on AVX2 in the portable build (fp32-portable,
portable.c: its only path); int8x3 and int8 on AMX-INT8 or AVX-512 VNNI; bf16 on AMX-BF16 or
AVX-512 BF16. Each function takes the library's folder and build (`which`: kernels.BUILDS or
"auto", Settings.kernel_build). The library picks AMX first where the CPU has it and Linux grants
the tile state. Every path passes `self_check` (random tiles against `kernels.reference_matmul`,
rows alike alone and in company; the AMX-INT8 paths bit for bit against VNNI) before its
precision is offered; an AMX path that fails is switched off in the library (its precision then
runs on AVX-512) and the reason kept. AMX paths are checked in a child process, so a path that
faults costs a fallback, not the service.
"""
from __future__ import annotations

import ctypes
import json
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np

from .kernels import BLOCK, build_of, library, reference_matmul, tile_weights

# precision -> the op's precision input (the library runs it on its best path here)
PRECISION_CODES = {"fp32": 0, "bf16": 1, "int8": 2, "int8x3": 7}
PRECISIONS = tuple(PRECISION_CODES)
# fp32: the activations as they are; int8x3: three int8 levels, 6e-8 of a block's largest value
# off; bf16: 8 significant bits; int8: 7 bits per block (onnxruntime's accuracy level 4)
FAITHFUL_FIRST = ("fp32", "int8x3", "bf16", "int8")
# what "auto" chooses among: the precisions whose answers are the model's own (SmolLM2 against its
# fp32 reference: teacher-forced agreement 1.000 and 46/46 greedy continuations identical for both;
# bf16 0.990 and 30/46, int8 0.979 and 23/46 with "L'Étoile, la Marseillaise" for the capital of
# France). bf16 and int8 serve only when named: on ragged passes their plain step is one row too,
# and a faster wrong answer is not a choice auto may make.
FAITHFUL = ("fp32", "int8x3")
PATHS = {"fp32": 0, "bf16-avx512": 3, "int8-vnni": 4, "int8-amx": 5, "bf16-amx": 6, "int8x3-amx": 8,
         "int8x3-vnni": 9, "fp32-portable": 10}
PATHS_OF = {"fp32": ("fp32", "fp32-portable"), "bf16": ("bf16-amx", "bf16-avx512"), "int8": ("int8-amx", "int8-vnni"),
            "int8x3": ("int8x3-amx", "int8x3-vnni")}
NEEDS = {"fp32": "AVX-512 F and BW", "bf16-avx512": "AVX-512 BF16", "int8-vnni": "AVX-512 VNNI",
         "int8x3-vnni": "AVX-512 VNNI", "int8x3-amx": "AMX-INT8 (and the tile state from Linux)",
         "int8-amx": "AMX-INT8 (and the tile state from Linux)", "bf16-amx": "AMX-BF16 (and the tile state from Linux)",
         "fp32-portable": "AVX2 and FMA"}
PORTABLE_PATHS = ("fp32-portable",)  # the portable build's paths; the AVX-512 build has the others


def build_with(path: str) -> str:
    """The build (kernels.BUILDS) that holds a path."""
    return "portable" if path in PORTABLE_PATHS else "avx512"


def _lib(directory: Path | None, which: str = "auto"):
    return ctypes.CDLL(str(library(directory, which)))  # the same handle onnxruntime registered: dlopen shares it


def cpu_paths(directory: Path | None = None, which: str = "auto") -> tuple[str, ...]:
    """The paths of the build that this CPU has the instructions (and, for AMX, the tile permission) for."""
    mask = _lib(directory, which).specops_paths()
    return tuple(name for name, code in PATHS.items() if mask >> code & 1)


def matmul_session(packed: np.ndarray, scales: np.ndarray, n: int, k: int, bits: int,
                   zero_points: np.ndarray | None = None, directory: Path | None = None, threads: int = 2,
                   which: str = "auto"):
    """One specops.QMatMul on MatMulNBits-form weights (codes [N, K/32, 32*bits/8], scales and
    float zero points [N * K/32]): inputs A [M, K] and kernel_precision, output Y [M, N]."""
    from .decoder import operator_session
    from .graph import qmatmul_model

    tiles = dict(zip(("W", "S", "Mn"), tile_weights(packed, scales, n, k, bits, zero_points)))
    model = qmatmul_model(k, n, bits, tiles)
    return operator_session(model.SerializeToString(), str(library(directory, which)), tiles, threads)


def input_code(name: str) -> int:
    """The kernel_precision input for a precision (its best path here) or a named path."""
    return PRECISION_CODES[name] if name in PRECISION_CODES else PATHS[name]


def run_matmul(session, a: np.ndarray, name: str) -> np.ndarray:
    """Y = A @ W.T at a precision or on a named path."""
    return session.run(None, {"A": np.asarray(a, np.float32), "kernel_precision":
                              np.array([input_code(name)], np.int64)})[0]


def precision_of(path: str) -> str:
    return next(p for p, paths in PATHS_OF.items() if path in paths)


def self_check(path: str, directory: Path | None = None, which: str = "auto") -> str | None:
    """None when `path` computes what `reference_matmul` does on random Q4_1 and symmetric tiles,
    1 to 13 rows, each row alike alone and in company (and the AMX-INT8 paths bit for bit what VNNI gives,
    where both run); else what went wrong."""
    rng = np.random.default_rng(20)
    precision, here = precision_of(path), cpu_paths(directory, which)
    for n, k, bits, q41 in ((48, 96, 4, True), (32, 64, 4, False), (32, 64, 8, False)):
        packed = rng.integers(0, 256, (n, k // BLOCK, BLOCK * bits // 8), dtype=np.uint8)
        d = (rng.random(n * k // BLOCK, dtype=np.float32) * 0.02 + 1e-3).astype(np.float16).astype(np.float32)
        zp = (rng.random(n * k // BLOCK, dtype=np.float32) * 15).astype(np.float32) if q41 else None
        session = matmul_session(packed, d, n, k, bits, zp, directory, threads=1, which=which)
        a = rng.standard_normal((13, k)).astype(np.float32)
        got, want = run_matmul(session, a, path), reference_matmul(a, packed, d, n, k, bits, zp, precision)
        err = float(np.abs(got - want).max() / np.abs(want).max())
        if not err < 1e-5:
            return f"{path}: {n}x{k} {bits}-bit off the reference by {err:.1e} of its largest value"
        if not all(np.array_equal(run_matmul(session, a[i:i + j], path), got[i:i + j]) for i, j in
                   ((0, 1), (6, 1), (12, 1), (2, 7))):
            return f"{path}: a row computed alone differs from the same row among others"
        twin = {"int8-amx": "int8-vnni", "int8x3-amx": "int8x3-vnni"}.get(path)
        if twin in here and not np.array_equal(got, run_matmul(session, a, twin)):
            return f"{path}: differs from {twin}, whose numbers it must give bit for bit"
    return None


def _checked_apart(path: str, directory: Path | None, which: str) -> str | None:
    """self_check in a child process: a path that faults (an instruction the CPU refuses, a bad
    tile configuration) kills the child, not the service."""
    code = ("import json, sys; from pathlib import Path; from specops.runtime.kernel_paths import self_check; "
            "print(json.dumps(self_check(sys.argv[1], Path(sys.argv[2]) if sys.argv[2] else None, sys.argv[3])))")
    try:
        done = subprocess.run([sys.executable, "-c", code, path, str(directory or ""), which], capture_output=True,
                              text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"{path}: its self-check could not run: {err}"
    if done.returncode != 0:
        return f"{path}: its self-check died (exit {done.returncode}): {done.stderr.strip()[-300:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


@lru_cache(maxsize=None)
def path_report(directory: Path | None = None, which: str = "auto") -> dict[str, str | None]:
    """Per path: None where it serves here, else why not. A failing AMX path is switched off in
    the library, so its precision runs on the AVX-512 path."""
    here, report = cpu_paths(directory, which), {}
    built = build_of(library(directory, which))
    for path in PATHS:
        if build_with(path) != built:
            report[path] = f"not in the {built} build (its paths: {', '.join(here) or 'none here'})"
            continue
        if path not in here:
            report[path] = f"this CPU lacks {NEEDS[path]}"
            continue
        report[path] = _checked_apart(path, directory, which) if "amx" in path else self_check(path, directory, which)
        if report[path] is not None and "amx" in path:
            _lib(directory, which).specops_disable_path(PATHS[path])
    return report


def served_paths(directory: Path | None = None, which: str = "auto") -> dict[str, str]:
    """precision -> the path that computes it here (the library's own choice: AMX first)."""
    report = path_report(directory, which)
    return {p: next(path for path in PATHS_OF[p] if report[path] is None) for p in PRECISIONS
            if any(report[path] is None for path in PATHS_OF[p])}


def precision_report(directory: Path | None = None, which: str = "auto") -> dict[str, str | None]:
    """Per precision: None where some path serves it here, else why none does."""
    report, served = path_report(directory, which), served_paths(directory, which)
    return {p: None if p in served else "; ".join(dict.fromkeys(str(report[path]) for path in PATHS_OF[p]))
            for p in PRECISIONS}


def precisions(directory: Path | None = None, which: str = "auto") -> tuple[str, ...]:
    """The precisions the kernel serves here, most faithful first."""
    return tuple(p for p in FAITHFUL_FIRST if p in served_paths(directory, which))


def most_faithful_within(ms: dict[str, float], slower: float = 1.10) -> str:
    """The most faithful precision whose pass takes at most `slower` x the fastest one's."""
    fastest = min(ms.values())
    return next(p for p in FAITHFUL_FIRST if p in ms and ms[p] <= slower * fastest)
