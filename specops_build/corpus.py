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


# Markers between a snippet and its repetition. Deliberately not the phrases of the repo's
# copy-heavy benchmark prompts (prompts/copy.jsonl), so the benchmark measures a learned skill.
COPY_MARKERS = ["", "# again", "# Copy:", "# Repeated:", "# Same as above:", "# duplicate",
                "Once more:", "As before:", ">>> # the same", "# (copied)"]


def copy_examples(docs: list[str], seed: int, count: int) -> list[str]:
    """Documents where a run of lines reappears verbatim after a marker.

    A model learns to continue a repetition (the skill prompt-lookup speculation relies on, as
    in edits, quotes and code rewrites) from repeated text; a corpus seen for less than one
    epoch has too little of it for a small model, so the build adds some.
    """
    rng = random.Random(seed)
    out = []
    while len(out) < count:
        lines = rng.choice(docs).splitlines()
        if len(lines) < 4:
            continue
        n = rng.randint(3, min(16, len(lines)))
        start = rng.randrange(0, len(lines) - n + 1)
        snippet = "\n".join(lines[start:start + n]).strip("\n")
        if len(snippet) < 40:
            continue
        marker = rng.choice(COPY_MARKERS)
        out.append(f"{snippet}\n\n{marker}\n{snippet}\n" if marker else f"{snippet}\n{snippet}\n")
    return out


def python_version() -> str:
    return sys.version.split()[0]
