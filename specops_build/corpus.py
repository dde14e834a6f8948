"""The training corpus: text that ships with CPython (pydoc topics and stdlib sources)."""
from __future__ import annotations

import random
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

HELD_OUT_EVERY = 20  # every 20th document (in sorted order) is held out for perplexity


@dataclass(frozen=True)
class Corpus:
    train: list[str]
    held_out: list[str]
    topics: dict[str, str]  # pydoc topic name -> text, used for chat examples


def _stdlib_sources() -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.glob("*.py") if not p.name.startswith("test"))
    files += sorted(p for p in root.glob("*/*.py") if "test" not in p.parts[-2] and "site-packages" not in p.parts)
    texts = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if 200 <= len(text) <= 400_000:
            texts.append(text)
    return texts


def load_corpus() -> Corpus:
    """Documents in a fixed order, so that a fixed seed reproduces the build."""
    import pydoc_data.topics

    topics = dict(sorted(pydoc_data.topics.topics.items()))
    docs = list(topics.values()) + _stdlib_sources()
    train = [d for i, d in enumerate(docs) if i % HELD_OUT_EVERY != HELD_OUT_EVERY - 1]
    held_out = [d for i, d in enumerate(docs) if i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1]
    return Corpus(train=train, held_out=held_out, topics=topics)


def chat_examples(topics: dict[str, str], seed: int) -> list[tuple[str, str]]:
    """(user question, assistant answer) pairs made from pydoc topics."""
    rng = random.Random(seed)
    questions = ["Explain {}.", "What is {} in Python?", "Describe {} briefly.", "Tell me about {}."]
    pairs = []
    for name, text in topics.items():
        paragraphs = [p.strip() for p in text.split("\n\n") if len(p.strip()) > 40]
        for para in paragraphs[:6]:
            pairs.append((rng.choice(questions).format(name), para[:600]))
    rng.shuffle(pairs)
    return pairs


def python_version() -> str:
    return sys.version.split()[0]
