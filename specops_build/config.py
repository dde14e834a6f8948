"""Sizes and schedules of the default pair (full build and smoke build)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ModelShape:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int


@dataclass(frozen=True)
class BuildPlan:
    seed: int = 1234
    context: int = 2048
    # Target mirrors Phi-3-mini's shape (multi-head attention, 32064 rows), scaled down so that
    # one int4 pass costs >= 5x one draft pass on 2 cores.
    target: ModelShape = field(default_factory=lambda: ModelShape(384, 8, 6, 6, 1024))
    # Draft mirrors TinyLlama (grouped-query attention, 32000 rows).
    draft: ModelShape = field(default_factory=lambda: ModelShape(128, 2, 4, 2, 384))
    seq: int = 256
    target_steps: int = 1000
    target_batch: int = 8
    target_lr: float = 2e-3
    draft_pretrain_steps: int = 300
    draft_distill_steps: int = 500
    draft_batch: int = 16
    draft_lr: float = 3e-3
    distill_prompts: int = 2048
    distill_prompt_len: int = 32
    distill_new_tokens: int = 96
    distill_batch: int = 128


FULL = BuildPlan()
SMOKE = BuildPlan(target_steps=4, draft_pretrain_steps=3, draft_distill_steps=3,
                  distill_prompts=16, distill_new_tokens=16, distill_batch=16)
