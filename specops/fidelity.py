"""Fidelity of the served model to its own fp32 reference (models/golden/smollm2_fp32_reference.json,
written by scripts/fp32_reference.py: the wheel's GGUF in fp32, greedy, with each position's top-2
logit gap).

Three measures, on any engine and its settings (kernel, consistent passes, precision):
- teacher-forced top-1 agreement: the served argmax at each position the fp32 model generated,
  fed the fp32 ids (so one early difference does not decide every later position), counted
  separately by the fp32 top-2 gap: a disagreement where fp32 itself is at a near-tie weighs less;
- greedy continuations: target-only greedy ids equal to fp32's, prompt by prompt, and where not,
  the first divergence;
- the answer to "What is the capital of France?" (fp32: "The capital of France is Paris.").
No torch here: numpy and the engine only.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .bench import first_divergence, prompt_text
from .config import EMBEDDED_MODELS
from .engine.llm_engine import Engine
from .engine.sampling_params import SamplingParams

REFERENCE = EMBEDDED_MODELS / "golden" / "smollm2_fp32_reference.json"
CAPITAL_QUESTION = "What is the capital of France?"
# fp32 top-2 gaps below this are near-ties: 70 of the reference's 2082 positions (median gap 1.85).
NEAR_TIE_GAP = 0.1
GAP_EDGES = (0.03, 0.1, 0.3, 1.0, float("inf"))  # upper edges of the reported gap bins


@dataclass
class Fidelity:
    """One engine against the reference. `divergences`: per prompt whose greedy ids differ, where
    and how ({"prompt", "at", "served", "fp32", "fp32_gap"}; a None id: that side ended there)."""
    positions: int  # teacher-forced positions compared
    agreed: int  # of which the served argmax equals the fp32 top-1
    near_tie_positions: int  # fp32 top-2 gap < NEAR_TIE_GAP
    near_tie_disagreements: int
    gap_bins: list[dict]  # [{"gap_below", "positions", "disagreements"}] over GAP_EDGES
    prompts: int
    identical: int  # greedy continuations equal to fp32's, EOS included
    divergences: list[dict] = field(default_factory=list)
    capital_answer: str | None = None  # served greedy answer to CAPITAL_QUESTION (None: not in the set)

    @property
    def agreement(self) -> float:
        return self.agreed / self.positions if self.positions else 0.0

    @property
    def identical_fraction(self) -> float:
        return self.identical / self.prompts if self.prompts else 0.0

    def as_dict(self) -> dict:
        return {"agreement": round(self.agreement, 5), "identical_fraction": round(self.identical_fraction, 4),
                **asdict(self)}


def load_reference(path: Path = REFERENCE) -> dict:
    return json.loads(Path(path).read_text())


# -- teacher forcing ---------------------------------------------------------------------------
def teacher_forced_logits(target, prompt_ids: list[int], output_ids: list[int]) -> np.ndarray:
    """Served logits [len(output_ids), vocab] for each generated position, fed the reference's ids:
    row 0 from the prompt's prefill, row i from the one-token step on output_ids[i - 1] (the step
    shape target-only decoding runs: as served, with the engine's own row padding). Resets `target`."""
    target.reset()
    rows = [np.array(target.prefill(prompt_ids))]
    rows += [np.array(target.append([t])[-1]) for t in output_ids[:-1]]
    target.reset()
    return np.stack(rows)


def gap_bins(gaps: np.ndarray, agree: np.ndarray, edges=GAP_EDGES) -> list[dict]:
    """Positions and disagreements per bin of fp32 top-2 gap: [lower edge, edge) for each edge
    (the last bin's `gap_below` None: no upper edge, and JSON has no infinity).
    gaps, agree: [positions] (float, bool)."""
    bins, lower = [], 0.0
    for edge in edges:
        inside = (gaps >= lower) & (gaps < edge)
        bins.append({"gap_below": edge if np.isfinite(edge) else None, "positions": int(inside.sum()),
                     "disagreements": int((inside & ~agree).sum())})
        lower = edge
    return bins


def agreement_counts(served_top1: np.ndarray, fp32_top1: np.ndarray, gaps: np.ndarray) -> dict:
    """Counts for Fidelity from flat [positions] arrays of served argmax, fp32 top-1 and fp32 gap."""
    agree = served_top1 == fp32_top1
    near = gaps < NEAR_TIE_GAP
    return {"positions": int(agree.size), "agreed": int(agree.sum()), "near_tie_positions": int(near.sum()),
            "near_tie_disagreements": int((near & ~agree).sum()), "gap_bins": gap_bins(gaps, agree)}


def teacher_forced(engine: Engine, records: list[dict]) -> dict:
    """agreement_counts over every generated position of every record."""
    served, want, gaps = [], [], []
    for r in records:
        logits = teacher_forced_logits(engine.target, r["prompt_ids"], r["output_ids"])
        served.append(logits.argmax(axis=1))
        want.append(r["output_ids"])
        gaps.append(r["top2_gap"])
    return agreement_counts(np.concatenate(served), np.concatenate(want), np.concatenate(gaps))


# -- greedy continuations ----------------------------------------------------------------------
def without_eos(output_ids: list[int], eos_ids) -> list[int]:
    """The reference keeps a final EOS id (as onnxruntime-genai's golden ids do); the engine stops
    on it without returning it, so equal outputs compare the ids before it."""
    return output_ids[:-1] if output_ids and output_ids[-1] in eos_ids else list(output_ids)


def divergence(got: list[int], record: dict, eos_ids) -> dict | None:
    """Where served greedy ids `got` leave the fp32 ones (None: identical). `fp32_gap`: fp32's own
    top-2 gap there, so a divergence at an fp32 near-tie can be told from a real one."""
    want = without_eos(record["output_ids"], eos_ids)
    j = first_divergence(got, want)
    if j is None:
        return None
    at = (lambda ids: ids[j] if j < len(ids) else None)  # None: that side ended (EOS) at j
    gap = record["top2_gap"][j] if j < len(record["top2_gap"]) else None
    return {"at": j, "served": at(got), "fp32": at(want), "fp32_gap": gap}


def greedy_outputs(engine: Engine, records: list[dict], new_tokens: int) -> list:
    """Target-only greedy GenerationResult per record, `new_tokens` at most."""
    params = SamplingParams(max_new_tokens=new_tokens, speculator="none")
    return [engine.generate(r["prompt_ids"], params) for r in records]


def capital_index(engine: Engine, records: list[dict]) -> int | None:
    """The record asking CAPITAL_QUESTION, found by its chat-templated text."""
    text = prompt_text({"kind": "chat", "prompt": CAPITAL_QUESTION}, engine.tokenizer)
    return next((i for i, r in enumerate(records) if r["prompt"] == text), None)


# -- everything ----------------------------------------------------------------------------------
def measure(engine: Engine, reference: dict, records: int | None = None) -> Fidelity:
    """Fidelity of `engine` against `reference` (load_reference()), on its first `records` prompts
    (all by default). Checks that the engine tokenizes each prompt to the reference's ids."""
    chosen = reference["records"][:records]
    for r in chosen:
        if engine.tokenizer.encode(r["prompt"]) != r["prompt_ids"]:
            raise ValueError(f"{r['prompt']!r}: the engine's tokenizer gives other ids than the reference's")
    counts = teacher_forced(engine, chosen)
    results = greedy_outputs(engine, chosen, int(reference["max_new_tokens"]))
    divergences = [{"prompt": i, **d} for i, (res, r) in enumerate(zip(results, chosen))
                   if (d := divergence(res.token_ids, r, engine.eos_ids)) is not None]
    capital = capital_index(engine, chosen)
    return Fidelity(**counts, prompts=len(chosen), identical=len(chosen) - len(divergences), divergences=divergences,
                    capital_answer=None if capital is None else results[capital].text)
