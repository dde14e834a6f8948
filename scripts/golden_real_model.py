#!/usr/bin/env python
"""Golden greedy ids of the default model, from onnxruntime-genai on the folder `specops prepare`
made: models/golden/smollm2_greedy.json, which tests/test_real_model.py checks our engine against.
The file records the folder's manifest digest; a conversion that changes the weights needs new ids.
Rewrites models/golden/manifest.sha256.

    python scripts/golden_real_model.py [--folder DIR] [--prompts 12] [--new-tokens 48]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from specops.bench import load_prompt_items, prompt_text  # noqa: E402
from specops.config import EMBEDDED_MODELS, Settings  # noqa: E402
from specops.loader import local_folder  # noqa: E402
from specops.runtime.model_folder import MANIFEST, file_sha256, write_manifest  # noqa: E402
from specops.runtime.tokenizer import TextTokenizer  # noqa: E402
from specops_build.report import golden_document, ort_genai_greedy  # noqa: E402

GOLDEN = EMBEDDED_MODELS / "golden" / "smollm2_greedy.json"
PROMPT_SET = "chat_real"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", type=Path, default=None, help="default: the prepared default model")
    ap.add_argument("--prompts", type=int, default=12)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--out", type=Path, default=GOLDEN)
    args = ap.parse_args(argv)
    settings = Settings()
    folder = args.folder or local_folder(settings.target_model, settings)
    tokenizer = TextTokenizer(folder)
    texts = [prompt_text(item, tokenizer) for item in load_prompt_items(PROMPT_SET)[:args.prompts]]
    records = ort_genai_greedy(folder, texts, args.new_tokens)
    args.out.write_text(golden_document(records, args.new_tokens, prompt_set=PROMPT_SET,
                                        manifest_sha256=file_sha256(folder / MANIFEST)))
    print(f"{len(records)} prompts -> {args.out}")
    if args.out.parent == GOLDEN.parent:  # models/golden/manifest.sha256 lists it
        print(f"manifest: {write_manifest(args.out.parent)} files in {args.out.parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
