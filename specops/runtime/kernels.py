"""specops' own onnxruntime kernel for the target's multi-token passes (`specops/kernels/qmatmul.c`).

`library()` returns the compiled kernel: one shipped beside the source (a container image builds
it there: `python -m specops.runtime.kernels specops/kernels`), else one in the cache, else it
compiles the C source there with the machine's C compiler (gcc, cc or clang; no onnxruntime
headers needed). It raises `KernelUnavailable` saying why it cannot (no compiler, a CPU without
AVX-512 VNNI, a failed build).
`tile_weights` turns MatMulNBits' weight codes and scales into the kernel's tiled layout
(graph.py rewrites the graph to use it). The engine never sees which kernel ran a pass.
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

SOURCE = Path(__file__).resolve().parent.parent / "kernels" / "qmatmul.c"
FLAGS = ["-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni", "-mfma", "-fPIC", "-shared"]
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


def library_name() -> str:
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join(FLAGS).encode()).hexdigest()[:16]
    return f"libspecops_qmatmul-{key}.so"


@lru_cache(maxsize=None)
def library(directory: Path | None = None) -> Path:
    """The compiled kernel library for this machine (built on first use, then reused)."""
    name = library_name()
    directory = directory or default_cache_dir()
    target = next((d / name for d in (SOURCE.parent, directory) if (d / name).is_file()), None)
    if target is None:
        target = build(directory)
    try:
        supported = ctypes.CDLL(str(target)).specops_supported()
    except OSError as err:
        raise KernelUnavailable(f"cannot load {target}: {err}") from None
    if not supported:
        raise KernelUnavailable("this CPU lacks AVX-512 VNNI, which the tiled kernel needs")
    return target


def build(directory: Path) -> Path:
    """Compile the kernel into `directory` (atomically: concurrent builders leave one whole file)."""
    cc = compiler()
    if cc is None:
        raise KernelUnavailable("no C compiler (gcc, cc or clang) on PATH to build the tiled kernel")
    target = directory / library_name()
    if not target.exists():
        try:
            directory.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=directory) as tmp:
                out = Path(tmp) / target.name
                done = subprocess.run([cc, *FLAGS, "-o", str(out), str(SOURCE)], capture_output=True, text=True,
                                      timeout=300)
                if done.returncode != 0:
                    raise KernelUnavailable(f"building the tiled kernel with {cc} failed: "
                                            f"{(done.stderr or done.stdout).strip()[-400:]}")
                os.replace(out, target)  # atomic: concurrent builders leave one whole file
        except (OSError, subprocess.TimeoutExpired) as err:
            raise KernelUnavailable(f"cannot build the tiled kernel in {directory}: {err}") from None
    return target


def resolve(setting: str, folder: Path, cache: Path | None = None) -> tuple[str, str | None]:
    """The kernel a target folder will run on: ("tiled" | "stock", why not tiled). `setting` is
    Settings.kernel; "tiled" raises KernelUnavailable where "auto" falls back. `cache`: where the
    library is built (default_cache_dir())."""
    if setting == "stock":
        return "stock", None
    try:
        if (Path(folder) / "prepacked.json").exists():
            raise KernelUnavailable("the folder is prepacked for onnxruntime's own kernels (prepacked.json)")
        library(cache)
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


def tile_weights(packed: np.ndarray, scales: np.ndarray, n: int, k: int, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """MatMulNBits' weight codes [N, K/32, 32*bits/8] and scales [N * K/32] in the kernel's
    layout: codes [N/16, K/32, 64*bits], scales [N/16, K/32, 16] (see qmatmul.c)."""
    kb, tiles = k // BLOCK, n // TILE
    q = unpack_codes(np.asarray(packed, np.uint8).reshape(n, kb, BLOCK * bits // 8), bits)
    q = q.reshape(tiles, TILE, kb, BLOCK).transpose(0, 2, 1, 3)  # [tile, block, column, k]
    if bits == 8:  # step s, column j, value i  <-  k = 4s + i
        tiled = q.reshape(tiles, kb, TILE, 8, 4).transpose(0, 1, 3, 2, 4)
    else:  # chunk c, column j, byte i: k = 8c+i (low nibble), 8c+4+i (high nibble)
        g = q.reshape(tiles, kb, TILE, 4, 2, 4)  # column, chunk, half, i
        tiled = (g[:, :, :, :, 0, :] | (g[:, :, :, :, 1, :] << 4)).transpose(0, 1, 3, 2, 4)
    s = np.asarray(scales, np.float32).reshape(tiles, TILE, kb).transpose(0, 2, 1)
    return (np.ascontiguousarray(tiled).reshape(tiles, kb, 64 * bits),
            np.ascontiguousarray(s))


if __name__ == "__main__":  # python -m specops.runtime.kernels DIR: build the library into DIR
    import sys

    print(build(Path(sys.argv[1] if len(sys.argv) > 1 else SOURCE.parent)))
