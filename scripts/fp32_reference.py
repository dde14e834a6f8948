#!/usr/bin/env python
"""The default model's fp32 reference: models/golden/smollm2_fp32_reference.json, greedy ids of the
wheel's GGUF de-quantized to fp32 (transformers) on prompts/fidelity.jsonl, with each generated
position's top-2 logit gap. specops/fidelity.py and tests/test_fidelity.py measure the served
model against it. Needs the `prepare` extra (torch, transformers, gguf) and `specops prepare`
(the GGUF in the download cache, the prepared folder's tokenizer). Rewrites the golden manifest.

    python scripts/fp32_reference.py [--gguf PATH] [--new-tokens 48] [--out PATH]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from specops.config import DEFAULT_MODEL, EMBEDDED_MODELS, Settings  # noqa: E402
from specops.loader import local_folder  # noqa: E402
from specops.prepare import CATALOG  # noqa: E402
from specops.runtime.model_folder import file_sha256, write_manifest  # noqa: E402
from specops_build.reference import NEW_TOKENS, document_text, reference_document  # noqa: E402

REFERENCE = EMBEDDED_MODELS / "golden" / "smollm2_fp32_reference.json"


def default_gguf(settings: Settings) -> Path:
    """The GGUF `specops prepare` extracted from the wheel, checked against the recipe's digest."""
    recipe = CATALOG[DEFAULT_MODEL]
    gguf = Path(settings.model_cache_dir).expanduser() / "downloads" / Path(recipe.member).name
    if not gguf.is_file() or file_sha256(gguf) != recipe.gguf_sha256:
        raise SystemExit(f"{gguf}: missing or not the recipe's GGUF ({recipe.gguf_sha256}); run `specops prepare`")
    return gguf


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", type=Path, default=None, help="default: the recipe's GGUF in the download cache")
    ap.add_argument("--new-tokens", type=int, default=NEW_TOKENS)
    ap.add_argument("--out", type=Path, default=REFERENCE)
    args = ap.parse_args(argv)
    settings = Settings()
    start = time.monotonic()
    document = reference_document(args.gguf or default_gguf(settings), local_folder(DEFAULT_MODEL, settings),
                                  args.new_tokens)
    args.out.write_text(document_text(document))
    positions = sum(len(r["output_ids"]) for r in document["records"])
    print(f"{len(document['records'])} prompts, {positions} positions in {time.monotonic() - start:.0f} s -> {args.out}")
    if args.out.parent == REFERENCE.parent:
        print(f"manifest: {write_manifest(args.out.parent)} files in {args.out.parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
