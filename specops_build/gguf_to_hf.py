"""GGUF -> a Hugging Face fp32 folder (config, safetensors, tokenizer), the model builder's input.

    python -m specops_build.gguf_to_hf MODEL.gguf OUT_DIR

transformers de-quantizes the GGUF's blocks to fp32 (it needs `gguf` and `accelerate`) and
rebuilds the tokenizer from the GGUF's vocabulary and merges. The loaded model carries the
GGUF quantizer and a `quantization_config`; both are dropped before saving, or the saved folder
would claim to be quantized. Run by `specops prepare` in a subprocess: torch never enters the
service's process.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

# SmolLM2-Instruct's own tokenizer_config.json names its tokenizer as GPT-2's byte-level BPE;
# transformers' GGUF loader writes a generic class instead, and onnxruntime-genai reads the class
# name to choose its tokenizer (GPT2Tokenizer gave identical ids to `tokenizers`, 816/816 texts).
TOKENIZER_CLASS = "GPT2Tokenizer"


def convert(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    t0 = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    print(f"  tokenizer read in {time.monotonic() - t0:.1f} s ({len(tokenizer)} tokens)", flush=True)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    print(f"  weights de-quantized to fp32 in {time.monotonic() - t0:.1f} s", flush=True)
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = gguf.stem
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    _fix_tokenizer_config(out / "tokenizer_config.json")


def _fix_tokenizer_config(path: Path) -> None:
    import json

    cfg = json.loads(path.read_text())
    cfg["tokenizer_class"] = TOKENIZER_CLASS
    for key in ("is_local", "local_files_only", "backend"):  # facts of this machine's load, not the model
        cfg.pop(key, None)
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    convert(Path(argv[0]), Path(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
