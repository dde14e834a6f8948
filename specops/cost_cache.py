"""The start-up pass-cost curve, kept per model file, CPU and settings, so a restart costs a few
passes instead of a full sweep.

`loader.measure_costs` times target passes of 1..K+1 tokens (alone and after draft passes) and
a draft pass: 17 lengths x 3 repeats x 6 passes, minutes on Phi-3-mini at 2 cores. The curve's
shape depends on the model file, the kernel and precision that run it, the thread counts and
the CPU, all in the key below; its level also drifts with the machine's load. So a cached curve
is checked with a few passes (`probe`: one token and K+1 tokens) and scaled by their ratio to
the cached figures; when the check disagrees by more than `MAX_DRIFT` (another CPU model behind
the same flags, a throttled node) the full sweep runs again and replaces it.

Files: `<dir>/<key>.json` (runtime.timing_cache), written atomically; a directory that cannot be
written (a read-only volume) is only read. No onnxruntime here.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from .engine.adaptive import CostModel
from .runtime import timing_cache

MAX_DRIFT = 2.0  # a probe off by more than 2x either way: measure again
VERSION = 1


def cost_key(target_file: Path, draft_file: Path | None, **settings) -> str:
    """The key of a curve: the files' identities, the CPU and `settings` (threads, kernel,
    precision, max_k, batch...)."""
    return timing_cache.key_of(f"costs-v{VERSION}", target_file, draft_file, **settings)


def to_json(cost: CostModel) -> dict:
    return {"verify_s": cost.verify_s, "draft_s": cost.draft_s, "verify_after_draft_s": cost.verify_after_draft_s}


def from_json(data: dict) -> CostModel:
    return CostModel(verify_s=[float(x) for x in data["verify_s"]], draft_s=data.get("draft_s"),
                     verify_after_draft_s=data.get("verify_after_draft_s"))


def load(folder: Path, key: str) -> CostModel | None:
    data = timing_cache.load(folder, key)
    try:
        return from_json(data) if data is not None else None
    except (KeyError, TypeError, ValueError):
        return None


def save(folder: Path, key: str, cost: CostModel) -> bool:
    """Write atomically; False when the folder cannot be written."""
    return timing_cache.save(folder, key, to_json(cost))


def drift(cached: CostModel, probed: dict[int, float]) -> float:
    """Measured over cached seconds, the geometric mean over the probed lengths ({n: seconds})."""
    ratios = [probed[n] / cached.verify_s[n - 1] for n in probed if cached.verify_s[n - 1] > 0]
    if not ratios:
        return 1.0
    product = 1.0
    for r in ratios:
        product *= r
    return product ** (1 / len(ratios))


def rescaled(cached: CostModel, factor: float) -> CostModel:
    """The cached curve at today's level (its shape kept)."""
    after = [s * factor for s in cached.verify_after_draft_s] if cached.verify_after_draft_s else None
    return replace(cached, verify_s=[s * factor for s in cached.verify_s],
                   draft_s=None if cached.draft_s is None else cached.draft_s * factor, verify_after_draft_s=after)


def usable(factor: float) -> bool:
    """Close enough to rescale (else time the whole curve again)."""
    return 1 / MAX_DRIFT <= factor <= MAX_DRIFT
