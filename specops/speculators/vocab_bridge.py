"""Bridge a draft whose vocabulary differs from the target's (Phi-3 32064 vs TinyLlama 32000).

At load: ids both tokenizers share must mean the same pieces, or the pair is refused.
At run time: shared ids pass through; a target-only id is fed to the draft as the draft's own
tokenization of it: an added token (a chat tag such as <|user|>) as its text, a vocabulary piece
(a draft whose vocabulary is a prefix of the target's, e.g. "Ġhello") through the draft's model
as a piece. The draft can only propose shared ids, so its probability of any other target id is
zero.
"""
from __future__ import annotations

import numpy as np

from ..runtime.tokenizer import TextTokenizer


class VocabMismatchError(ValueError):
    pass


class VocabBridge:
    def __init__(self, target_tok: TextTokenizer, draft_tok: TextTokenizer, target_vocab: int, draft_vocab: int):
        self.target_vocab, self.draft_vocab = target_vocab, draft_vocab
        # ids the draft can see and produce: those below both tokenizers' sizes and its logits width
        self.shared = min(draft_vocab, draft_tok.vocab_size, target_tok.vocab_size, target_vocab)
        check_shared_pieces(target_tok, draft_tok, self.shared)
        self._target_tok, self._draft_tok = target_tok, draft_tok
        self._expansions: dict[int, list[int]] = {}

    @property
    def identity(self) -> bool:
        return self.shared == self.target_vocab == self.draft_vocab

    def to_draft(self, target_ids) -> list[int]:
        """Target ids -> draft ids (a target-only id becomes several draft ids)."""
        out: list[int] = []
        for i in target_ids:
            i = int(i)
            out.extend((i,) if i < self.shared else self._expand(i))
        return out

    def _expand(self, target_id: int) -> list[int]:
        if target_id not in self._expansions:
            piece = self._target_tok.id_to_piece(target_id) or ""
            added = target_id in self._target_tok.added_ids
            ids = self._draft_tok.encode(piece) if added else self._draft_tok.tokenize_piece(piece)
            ids = [i for i in ids if i < self.shared]
            self._expansions[target_id] = ids or [0]
        return self._expansions[target_id]

    def probs_to_target(self, q: np.ndarray) -> np.ndarray:
        """Draft probabilities [n, draft_vocab] -> [n, target_vocab], zero where the draft cannot go."""
        out = np.zeros((q.shape[0], self.target_vocab), dtype=q.dtype)
        out[:, :self.shared] = q[:, :self.shared]
        out /= out.sum(axis=-1, keepdims=True)
        return out


def check_shared_pieces(target_tok: TextTokenizer, draft_tok: TextTokenizer, shared: int) -> None:
    """Refuse a pair whose shared ids mean different strings; names the first mismatch."""
    for i in range(shared):
        a, b = target_tok.id_to_piece(i), draft_tok.id_to_piece(i)
        if a != b:
            raise VocabMismatchError(
                f"draft and target vocabularies disagree at id {i}: target piece {a!r}, draft piece {b!r}; "
                "speculation needs the ids both models share to mean the same text")
