"""Shared fixtures: the committed small pair (or the folders SPECOPS_TARGET_MODEL /
SPECOPS_DRAFT_MODEL name), loaded once per test session.

The service's default model is SmolLM2-135M-Instruct, made by `specops prepare`; the suites of
exactness, sampling, bridging and the server run on the small pair in Phi-3's and TinyLlama's
formats, which is fast and committed. So the environment names it, for this process and the
servers it starts, unless the caller named other folders. tests/test_real_model.py runs the
prepared default model explicitly.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from specops.config import EMBEDDED_DRAFT, EMBEDDED_TARGET, Settings
from specops.loader import load_engine, local_paths
from specops.runtime.decoder import Decoder
from specops.runtime.model_folder import read_model_folder
from specops.runtime.tokenizer import TextTokenizer


from specops.bench import NEAR_TIE, first_divergence, prompt_text  # noqa: F401  (re-exported for the tests)
from specops.bench import load_prompt_items as load_prompts  # noqa: F401


os.environ.setdefault("SPECOPS_TARGET_MODEL", str(EMBEDDED_TARGET))
os.environ.setdefault("SPECOPS_DRAFT_MODEL", str(EMBEDDED_DRAFT))
# The admission, lifecycle and API suites describe one request at a time (a second request
# queues behind the first); continuous batching has its own suites (test_batch.py,
# test_server_batching.py), which set SPECOPS_MAX_BATCH themselves.
os.environ.setdefault("SPECOPS_MAX_BATCH", "1")


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


def prompt_ids(item: dict, tokenizer: TextTokenizer) -> list[int]:
    return tokenizer.encode(prompt_text(item, tokenizer))


def top2_gap(target_folder: Path, context: list[int]) -> tuple[float, tuple[int, int]]:
    """Prefill `context` on a fresh target and return the gap between its top two logits."""
    dec = Decoder(read_model_folder(target_folder, verify=False))
    logits = dec.prefill(context)
    top = np.argsort(-logits)[:2]
    return float(logits[top[0]] - logits[top[1]]), (int(top[0]), int(top[1]))
