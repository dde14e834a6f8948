"""Tokenizer (from tokenizer.json, via `tokenizers`) and chat template (from tokenizer_config)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from .model_folder import ModelFolderError


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str


class TextTokenizer:
    def __init__(self, folder: str | Path):
        folder = Path(folder)
        try:
            self.tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception as err:  # tokenizers raises a bare Exception on bad files
            raise ModelFolderError(f"{folder / 'tokenizer.json'}: cannot be read ({err})") from None
        cfg_path = folder / "tokenizer_config.json"
        self.config = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
        template = self.config.get("chat_template")
        if template is None and (folder / "chat_template.jinja").exists():
            template = (folder / "chat_template.jinja").read_text()
        if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        self._template = (ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
                          .from_string(template) if template else None)
        self.vocab_size = self.tok.get_vocab_size(with_added_tokens=True)
        self.added_ids = frozenset(self.tok.get_added_tokens_decoder())

    def _token(self, key: str) -> str:
        value = self.config.get(key) or ""
        return value.get("content", "") if isinstance(value, dict) else value

    @property
    def has_chat_template(self) -> bool:
        return self._template is not None

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids, skip_special: bool = True) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=skip_special)

    def id_to_piece(self, i: int) -> str | None:
        return self.tok.id_to_token(int(i))

    def tokenize_piece(self, piece: str) -> list[int]:
        """A vocabulary piece (e.g. byte-level "Ġhello", or "▁hello") -> this tokenizer's model's
        ids for it, without normalizing or pre-tokenizing it as text again."""
        return [t.id for t in self.tok.model.tokenize(piece)]

    def apply_chat_template(self, messages: list[ChatMessage], add_generation_prompt: bool = True) -> str:
        if self._template is None:
            raise ValueError("this model's tokenizer_config.json has no chat_template")
        return self._template.render(
            messages=[{"role": m.role, "content": m.content} for m in messages],
            add_generation_prompt=add_generation_prompt,
            bos_token=self._token("bos_token"), eos_token=self._token("eos_token"),
        )


class IncrementalDetokenizer:
    """Turns a growing list of ids into text deltas; holds back an incomplete UTF-8 sequence."""

    def __init__(self, tokenizer: TextTokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.emitted = 0  # characters of the decoded text already returned

    def push(self, ids) -> str:
        self.ids.extend(int(i) for i in ids)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        delta, self.emitted = text[self.emitted:], len(text)
        return delta

    def text(self) -> str:
        return self.tokenizer.decode(self.ids)
