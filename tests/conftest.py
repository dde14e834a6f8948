"""Shared fixtures: the embedded default pair (or the folders SPECOPS_TARGET_MODEL /
SPECOPS_DRAFT_MODEL name), loaded once per test session."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from specops.config import Settings
from specops.loader import load_engine, local_paths
from specops.runtime.decoder import Decoder
from specops.runtime.model_folder import read_model_folder
from specops.runtime.tokenizer import ChatMessage, TextTokenizer

ROOT = Path(__file__).resolve().parents[1]

from specops.bench import NEAR_TIE  # noqa: F401  (re-exported for the tests)


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings()


@pytest.fixture(scope="session")
def engine(settings):
    return load_engine(settings)


@pytest.fixture(scope="session")
def target_folder(settings) -> Path:
    return local_paths(settings).target


@pytest.fixture(scope="session")
def draft_folder(settings) -> Path:
    return local_paths(settings).draft


def load_prompts(name: str) -> list[dict]:
    return [json.loads(line) for line in (ROOT / "prompts" / f"{name}.jsonl").read_text().splitlines() if line]


def prompt_ids(item: dict, tokenizer: TextTokenizer) -> list[int]:
    text = item["prompt"]
    if item["kind"] == "chat":
        text = tokenizer.apply_chat_template([ChatMessage("user", text)])
    return tokenizer.encode(text)


def first_divergence(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def top2_gap(target_folder: Path, context: list[int]) -> tuple[float, tuple[int, int]]:
    """Prefill `context` on a fresh target and return the gap between its top two logits."""
    dec = Decoder(read_model_folder(target_folder, verify=False))
    logits = dec.prefill(context)
    top = np.argsort(-logits)[:2]
    return float(logits[top[0]] - logits[top[1]]), (int(top[0]), int(top[1]))
