"""specops' own onnxruntime kernel for the target's passes (`specops/kernels/qmatmul.c`).

`library()` returns the compiled kernel: one shipped beside the source (a container image builds
it there: `python -m specops.runtime.kernels specops/kernels`), else one in the cache, else it
compiles the C source there with the machine's C compiler (gcc, cc or clang; no onnxruntime
headers needed). It raises `KernelUnavailable` saying why it cannot (no compiler, a CPU without
AVX-512 or AVX2, a failed build). Which precisions and paths serve: kernel_paths.py.
Two builds of the same sources (`BUILDS`): "avx512" (every path) and "portable" (for CPUs without
AVX-512: fp32 on portable.c's plain C, AVX2 and FMA; the AVX-512 and AMX code left out by #if);
"auto" takes the first whose library says this CPU runs it (Settings.kernel_build can force one).
`tile_weights` turns MatMulNBits' weight codes, scales and float zero points into the kernel's
tiled layout (graph.py rewrites the graph to use it); `reference_matmul` is the numpy statement of
what every path computes. The engine never sees which kernel ran a pass.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np

SOURCE = Path(__file__).resolve().parent.parent / "kernels" / "qmatmul.c"  # registers every op of the library
# the library's other sources (and the headers they share): one library, one place that picks CPU paths
SOURCES = ("attention.c",)
HEADERS = ("ort_abi.h", "portable.h")
# The library's base ISA; the bf16 and int8 paths carry their own (function attributes, inline
# assembly) and run only where specops_precisions() says the CPU has them.
FLAGS = ["-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mfma", "-fPIC", "-shared"]
# The portable build: AVX2 and FMA; no contraction but portable.c's explicit fmaf, so every sum
# is the one the C states (the same bits from any compiler that honours it, any row grouping).
PORTABLE_FLAGS = ["-O3", "-mavx2", "-mfma", "-ffp-contract=off", "-DSPECOPS_PORTABLE", "-fPIC", "-shared"]
# build -> (flags, sources beside SOURCE), in the order "auto" tries them
BUILDS = {"avx512": (FLAGS, SOURCES), "portable": (PORTABLE_FLAGS, SOURCES + ("portable.c",))}
NEEDS = {"avx512": "AVX-512 (F, BW)", "portable": "AVX2 and FMA"}
TILE, BLOCK = 16, 32


class KernelUnavailable(RuntimeError):
    """The tiled kernel cannot run here; the reason says why (the caller falls back to stock)."""


def default_cache_dir() -> Path:
    """Where the library and the tiled weights go unless Settings.kernel_cache_dir says otherwise."""
    return Path(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")) / "specops" / "kernels"


def compiler() -> str | None:
    for name in (os.environ.get("CC"), "gcc", "cc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _sources(which: str = "avx512") -> list[Path]:
    """The C files compiled into a build (beside SOURCE, so a test can swap SOURCE for another folder's)."""
    return [SOURCE] + [p for p in (SOURCE.parent / name for name in BUILDS[which][1]) if p.is_file()]


def library_name(which: str = "avx512") -> str:
    """The build's file name: a hash of its sources, headers and flags (each build its own)."""
    headers = [h for h in (SOURCE.parent / name for name in HEADERS) if h.is_file()]
    text = b"".join(f.read_bytes() for f in _sources(which) + headers)
    key = hashlib.sha256(text + " ".join(BUILDS[which][0]).encode()).hexdigest()[:16]
    return f"libspecops_qmatmul-{key}.so" if which == "avx512" else f"libspecops_qmatmul-{which}-{key}.so"


class _CpuLacks(KernelUnavailable):
    """The build loads but this CPU lacks its instructions ("auto" then tries the next build)."""


@lru_cache(maxsize=None)
def library(directory: Path | None = None, which: str = "auto") -> Path:
    """The compiled kernel library for this machine (built on first use, then reused): the build
    `which` names, or ("auto") the first of BUILDS this CPU runs."""
    if which != "auto":
        return _loaded(directory, which)
    lacks = []
    flags = cpu_flags()
    for name in BUILDS:
        missing = [f for f in CPU_FLAGS[name] if flags is not None and f not in flags]
        if missing:  # known without compiling the build to ask it
            lacks.append(f"this CPU lacks {NEEDS[name]} (no {', '.join(missing)} in /proc/cpuinfo), which the "
                         f"tiled kernel's {name} build needs")
            continue
        try:
            return _loaded(directory, name)
        except _CpuLacks as err:
            lacks.append(str(err))
    raise KernelUnavailable("; ".join(lacks))


# the flags each build needs, as Linux's /proc/cpuinfo names them (the library checks CPUID itself too)
CPU_FLAGS = {"avx512": ("avx512f", "avx512bw"), "portable": ("avx2", "fma")}


def cpu_flags() -> frozenset[str] | None:
    """This CPU's feature flags from /proc/cpuinfo, None where it cannot be read (not Linux): then
    each build's library is asked (built first if need be)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), None)
    return frozenset(line.split(":", 1)[1].split()) if line else None


def build_of(lib: Path) -> str:
    """Which build a library file is ("avx512" or "portable")."""
    return next((name for name in BUILDS if name != "avx512" and f"-{name}-" in lib.name), "avx512")


def _loaded(directory: Path | None, which: str) -> Path:
    if which not in BUILDS:
        raise ValueError(f"no kernel build {which!r} (one of {', '.join(BUILDS)} or auto)")
    name = library_name(which)
    directory = directory or default_cache_dir()
    target = next((d / name for d in (SOURCE.parent, directory) if (d / name).is_file()), None)
    if target is None:
        target = build(directory, which)
    try:
        supported = ctypes.CDLL(str(target)).specops_supported()
    except OSError as err:
        raise KernelUnavailable(f"cannot load {target}: {err}") from None
    if not supported:
        raise _CpuLacks(f"this CPU lacks {NEEDS[which]}, which the tiled kernel's {which} build needs")
    return target


def build(directory: Path, which: str = "avx512") -> Path:
    """Compile a build of the kernel into `directory` (atomically: concurrent builders leave one whole file)."""
    cc = compiler()
    if cc is None:
        raise KernelUnavailable("no C compiler (gcc, cc or clang) on PATH to build the tiled kernel")
    flags, target = BUILDS[which][0], directory / library_name(which)
    if not target.exists():
        try:
            directory.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=directory) as tmp:
                out = Path(tmp) / target.name
                done = subprocess.run([cc, *flags, "-o", str(out), *map(str, _sources(which))], capture_output=True,
                                      text=True, timeout=300)
                if done.returncode != 0:
                    raise KernelUnavailable(f"building the tiled kernel with {cc} failed: "
                                            f"{(done.stderr or done.stdout).strip()[-400:]}")
                os.replace(out, target)  # atomic: concurrent builders leave one whole file
        except (OSError, subprocess.TimeoutExpired) as err:
            raise KernelUnavailable(f"cannot build the tiled kernel in {directory}: {err}") from None
    return target


def resolve(setting: str, folder: Path, cache: Path | None = None, which: str = "auto") -> tuple[str, str | None]:
    """The kernel a target folder will run on: ("tiled" | "stock", why not tiled). `setting` is
    Settings.kernel; "tiled" raises KernelUnavailable where "auto" falls back. `cache`: where the
    library is built (default_cache_dir()); `which`: Settings.kernel_build."""
    if setting == "stock":
        return "stock", None
    try:
        if (Path(folder) / "prepacked.json").exists():
            raise KernelUnavailable("the folder is prepacked for onnxruntime's own kernels (prepacked.json)")
        library(cache, which)
    except KernelUnavailable as err:
        if setting == "tiled":
            raise
        return "stock", str(err)
    return "tiled", None


def unpack_codes(packed: np.ndarray, bits: int) -> np.ndarray:
    """MatMulNBits' [N, K/32, 32*bits/8] bytes as [N, K/32, 32] codes (low nibble first)."""
    if bits == 8:
        return packed
    return np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(*packed.shape[:2], BLOCK)


def block_minimums(scales: np.ndarray, zero_points: np.ndarray) -> np.ndarray:
    """MatMulNBits' float zero points as each block's minimum m = -zp * d (weight = d * code + m).

    A Q4_1 block ships d and m in fp16, and `specops prepare` writes zp = -m / d in fp32; -zp * d
    then lands within an fp32 ulp of m, and rounding it to fp16 gives m back exactly wherever it
    came from fp16 (checked: the rounded m reproduces zp). Elsewhere the fp32 product stays."""
    d = np.asarray(scales, np.float32)
    zp = np.asarray(zero_points, np.float32).reshape(d.shape)
    m = (-zp * d).astype(np.float32)
    m16 = m.astype(np.float16).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        same = np.where(d != 0, (-m16 / d).astype(np.float32) == zp, m16 == m)
    return np.where(same, m16, m).astype(np.float32)


def tile_weights(packed: np.ndarray, scales: np.ndarray, n: int, k: int, bits: int,
                 zero_points: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """MatMulNBits' weight codes [N, K/32, 32*bits/8], scales [N * K/32] and optional float zero
    points [N * K/32] in the kernel's layout: codes [N/16, K/32, 64*bits], scales [N/16, K/32, 16],
    and with zero points the block minimums [N/16, K/32, 16] (see qmatmul.c)."""
    kb, tiles = k // BLOCK, n // TILE
    q = unpack_codes(np.asarray(packed, np.uint8).reshape(n, kb, BLOCK * bits // 8), bits)
    q = q.reshape(tiles, TILE, kb, BLOCK).transpose(0, 2, 1, 3)  # [tile, block, column, k]
    if bits == 8:  # step s, column j, value i  <-  k = 4s + i
        tiled = q.reshape(tiles, kb, TILE, 8, 4).transpose(0, 1, 3, 2, 4)
    else:  # chunk c, column j, byte i: k = 8c+i (low nibble), 8c+4+i (high nibble)
        g = q.reshape(tiles, kb, TILE, 4, 2, 4)  # column, chunk, half, i
        tiled = (g[:, :, :, :, 0, :] | (g[:, :, :, :, 1, :] << 4)).transpose(0, 1, 3, 2, 4)

    def per_tile(values: np.ndarray) -> np.ndarray:  # [N * K/32] -> [N/16, K/32, 16]
        return np.ascontiguousarray(np.asarray(values, np.float32).reshape(tiles, TILE, kb).transpose(0, 2, 1))

    out = (np.ascontiguousarray(tiled).reshape(tiles, kb, 64 * bits), per_tile(scales))
    if zero_points is None:
        return out
    return out + (per_tile(block_minimums(np.asarray(scales).reshape(-1), np.asarray(zero_points).reshape(-1))),)


def reference_matmul(a: np.ndarray, packed: np.ndarray, scales: np.ndarray, n: int, k: int, bits: int,
                     zero_points: np.ndarray | None, precision: str) -> np.ndarray:
    """What the kernel computes, in numpy (float64 sums): a [M, K] @ the de-quantized weights.T.

    fp32: weights d * code + m (m from the zero points; without them code - 8 / 128 and m = 0);
    bf16: the activations rounded to bf16 first; int8: MLAS level 4's block quantization of the
    activations (scale max|a| / 127, nearest even), the minimum applied to the quantized block."""
    kb = k // BLOCK
    codes = unpack_codes(np.asarray(packed, np.uint8).reshape(n, kb, BLOCK * bits // 8), bits).astype(np.float64)
    d = np.asarray(scales, np.float32).reshape(n, kb, 1).astype(np.float64)
    if zero_points is None:  # symmetric: signed codes, no minimum
        codes, m = codes - (8 if bits == 4 else 128), np.zeros_like(d)
    else:
        m = block_minimums(np.asarray(scales).reshape(-1), np.asarray(zero_points).reshape(-1))
        m = m.reshape(n, kb, 1).astype(np.float64)
    x = np.asarray(a, np.float32)
    if precision == "int8x3":  # three int8 levels: 6e-8 of each block's largest value off fp32
        x = int8x3_round(x)
        return x.astype(np.float64) @ (d * codes + m).reshape(n, k).T
    if precision == "fp32":
        return x.astype(np.float64) @ (d * codes + m).astype(np.float32).astype(np.float64).reshape(n, k).T
    if precision == "bf16":  # the minimum meets the fp32 activations' block sum
        xc, xm = bf16_round(x), x
    else:
        blocks = x.reshape(len(x), kb, BLOCK)
        amax = np.abs(blocks).max(axis=2, keepdims=True)
        with np.errstate(divide="ignore"):
            inv = np.where(amax > 0, np.float32(127) / amax, 0).astype(np.float32)
        xc = xm = (np.rint(blocks * inv) * (amax / np.float32(127))).reshape(len(x), k)
    blocksum = xm.astype(np.float64).reshape(len(x), kb, BLOCK).sum(axis=2)  # [M, K/32]
    return xc.astype(np.float64) @ (d * codes).reshape(n, k).T + blocksum @ m.reshape(n, kb).T


def int8x3_round(x: np.ndarray) -> np.ndarray:
    """What int8x3 makes of activations [M, K]: per block of 32, s1 q1 + s2 q2 + s3 q3 with
    s1 = max|x| / 127, s2 = s1 / 254, s3 = s2 / 254, each level rounding what the last one left."""
    blocks = np.asarray(x, np.float32).reshape(len(x), -1, BLOCK)
    left, out = blocks.copy(), np.zeros(blocks.shape, np.float64)
    scale = np.abs(blocks).max(axis=2, keepdims=True) / np.float32(127)
    for _ in range(3):
        with np.errstate(divide="ignore", invalid="ignore"):
            q = np.clip(np.rint(np.where(scale > 0, left / scale, 0)), -127, 127).astype(np.float32)
        out += q.astype(np.float64) * scale
        left = (left - q * scale).astype(np.float32)
        scale = (scale / np.float32(254)).astype(np.float32)
    return out.reshape(np.shape(x))


def bf16_round(x: np.ndarray) -> np.ndarray:
    """fp32 -> the nearest bf16 (ties to even), as fp32."""
    bits = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.astype(np.uint32).view(np.float32)


if __name__ == "__main__":  # python -m specops.runtime.kernels DIR: build both libraries into DIR
    import sys

    for which in BUILDS:
        print(build(Path(sys.argv[1] if len(sys.argv) > 1 else SOURCE.parent), which))
