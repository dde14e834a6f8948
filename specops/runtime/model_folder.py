"""Read a model folder in either layout users download, and check it before loading.

- builder layout (onnxruntime-genai's model builder, e.g. Phi-3-mini ONNX): `genai_config.json`,
  the model file it names (+ external data), tokenizer files;
- Optimum layout (e.g. TinyLlama ONNX exports): `config.json`, optional
  `generation_config.json`, `model.onnx` (+ optional external data), `tokenizer.json`.

Everything here is plain file reading; the session itself is opened by `decoder.py`.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

MANIFEST = "manifest.sha256"


class ModelFolderError(ValueError):
    """A model folder that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class ModelSpec:
    folder: Path
    layout: str  # "builder" or "optimum"
    model_file: Path
    vocab_size: int  # logits width
    num_layers: int
    kv_heads: int
    head_dim: int
    context_length: int
    eos_ids: tuple[int, ...]
    bos_id: int | None
    share_past_present: bool  # GQA with one preallocated buffer for past and present
    input_ids: str = "input_ids"
    attention_mask: str = "attention_mask"
    position_ids: str | None = None  # set from the session's inputs
    past_key: str = "past_key_values.%d.key"
    past_value: str = "past_key_values.%d.value"
    logits: str = "logits"
    present_key: str = "present.%d.key"
    present_value: str = "present.%d.value"


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelFolderError(f"{path}: file is missing") from None
    except json.JSONDecodeError as err:
        raise ModelFolderError(f"{path}: not valid JSON ({err})") from None


def _ids(value) -> tuple[int, ...]:
    if value is None:
        return ()
    return tuple(int(v) for v in (value if isinstance(value, list) else [value]))


def _require(path: Path) -> Path:
    if not path.is_file():
        raise ModelFolderError(f"{path}: file is missing")
    return path


def _builder_spec(folder: Path) -> ModelSpec:
    cfg = _read_json(folder / "genai_config.json")
    try:
        model, dec = cfg["model"], cfg["model"]["decoder"]
        inputs, outputs = dec.get("inputs", {}), dec.get("outputs", {})
        filename = dec["filename"]
        spec = ModelSpec(
            folder=folder, layout="builder", model_file=folder / filename,
            vocab_size=int(model["vocab_size"]), num_layers=int(dec["num_hidden_layers"]),
            kv_heads=int(dec["num_key_value_heads"]), head_dim=int(dec["head_size"]),
            context_length=int(model["context_length"]), eos_ids=_ids(model.get("eos_token_id")),
            bos_id=model.get("bos_token_id"),
            share_past_present=bool(cfg.get("search", {}).get("past_present_share_buffer", False)),
            input_ids=inputs.get("input_ids", "input_ids"),
            attention_mask=inputs.get("attention_mask", "attention_mask"),
            past_key=inputs.get("past_key_names", "past_key_values.%d.key"),
            past_value=inputs.get("past_value_names", "past_key_values.%d.value"),
            logits=outputs.get("logits", "logits"),
            present_key=outputs.get("present_key_names", "present.%d.key"),
            present_value=outputs.get("present_value_names", "present.%d.value"),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise ModelFolderError(f"{folder / 'genai_config.json'}: missing or invalid field {err}") from None
    _require(spec.model_file)
    return spec


def _optimum_spec(folder: Path) -> ModelSpec:
    cfg = _read_json(folder / "config.json")
    gen = _read_json(folder / "generation_config.json") if (folder / "generation_config.json").exists() else {}
    candidates = [folder / "model.onnx", folder / "decoder_model_merged.onnx", folder / "decoder_with_past_model.onnx"]
    model_file = next((p for p in candidates if p.is_file()), None)
    if model_file is None:
        raise ModelFolderError(f"{folder / 'model.onnx'}: file is missing")
    try:
        heads = int(cfg["num_attention_heads"])
        return ModelSpec(
            folder=folder, layout="optimum", model_file=model_file, vocab_size=int(cfg["vocab_size"]),
            num_layers=int(cfg["num_hidden_layers"]), kv_heads=int(cfg.get("num_key_value_heads", heads)),
            head_dim=int(cfg.get("head_dim") or int(cfg["hidden_size"]) // heads),
            context_length=int(cfg.get("max_position_embeddings", 2048)),
            eos_ids=_ids(gen.get("eos_token_id", cfg.get("eos_token_id"))),
            bos_id=gen.get("bos_token_id", cfg.get("bos_token_id")), share_past_present=False,
        )
    except (KeyError, TypeError, ValueError) as err:
        raise ModelFolderError(f"{folder / 'config.json'}: missing or invalid field {err}") from None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(folder: Path) -> int:
    """`manifest.sha256` (sha256sum format) of every file below `folder`, sorted, so that two
    identical folders get the same bytes; returns the number of files."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    (folder / MANIFEST).write_text("".join(f"{file_sha256(p)}  {p.relative_to(folder).as_posix()}\n" for p in files))
    return len(files)


def verify_manifest(folder: Path) -> int:
    """Check SHA-256 sums listed in `manifest.sha256` (sha256sum format); returns files checked."""
    manifest = folder / MANIFEST
    if not manifest.exists():
        return 0
    checked = 0
    for line in manifest.read_text().splitlines():
        if not line.strip():
            continue
        expected, name = line.split(maxsplit=1)
        path = folder / name.strip().lstrip("*")
        if not path.is_file():
            raise ModelFolderError(f"{path}: file is missing (listed in {manifest})")
        got = file_sha256(path)
        if got != expected:
            raise ModelFolderError(f"{path}: checksum mismatch (expected {expected[:12]}..., got "
                                   f"{got[:12]}...); the file is corrupt or was changed")
        checked += 1
    return checked


def read_model_folder(folder: str | Path, verify: bool = True) -> ModelSpec:
    """Detect the layout, check files (and checksums where a manifest exists), read the config."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelFolderError(f"{folder}: model folder does not exist")
    if (folder / "genai_config.json").exists():
        spec = _builder_spec(folder)
    elif (folder / "config.json").exists():
        spec = _optimum_spec(folder)
    else:
        raise ModelFolderError(f"{folder}: neither genai_config.json (builder layout) nor config.json "
                               "(Optimum layout) found")
    _require(folder / "tokenizer.json")
    if verify:
        verify_manifest(folder)
    return spec
