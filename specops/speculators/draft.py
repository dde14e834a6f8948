"""A small draft model proposes k tokens autoregressively from its own KV cache."""
from __future__ import annotations

import numpy as np

from ..runtime.decoder import Decoder
from .base import Proposal
from .vocab_bridge import VocabBridge


class DraftModelSpeculator:
    """Keeps the draft's cache in step with the committed context.

    The draft cache holds the bridged committed tokens plus, after a round, the proposals it
    fed itself; `propose` rewinds to the longest prefix still committed and feeds the rest.
    `_draft_len[i]` is the draft cache length after the first i target tokens.
    """

    name = "draft"

    def __init__(self, decoder: Decoder, bridge: VocabBridge):
        self.decoder, self.bridge = decoder, bridge
        self.reset()

    def reset(self) -> None:
        self.decoder.reset()
        self._ids: list[int] = []  # target ids whose bridged form is in the draft cache
        self._draft_len: list[int] = [0]
        self._synced = 0

    def _sync(self, context: np.ndarray) -> np.ndarray:
        """Bring the cache to `context`; returns draft logits [V] after it (None if nothing fed)."""
        limit = min(len(self._ids), len(context))
        # the committed context only grows, so everything before the last sync still matches
        common = min(self._synced, limit)
        while common < limit and self._ids[common] == int(context[common]):
            common += 1
        if common < len(self._ids):
            self.decoder.rewind(self._draft_len[common])
            del self._ids[common:]
            del self._draft_len[common + 1:]
        self._synced = len(context)
        new = [int(t) for t in context[common:]]
        if not new:
            return None
        draft_ids = []
        for t in new:
            bridged = self.bridge.to_draft([t])
            draft_ids.extend(bridged)
            self._draft_len.append(self._draft_len[-1] + len(bridged))
        self._ids.extend(new)
        return self.decoder.prefill(draft_ids) if len(draft_ids) > 1 else self.decoder.append(draft_ids)[-1]

    def propose(self, context: np.ndarray, k: int, sampler=None) -> Proposal:
        if k <= 0:
            return Proposal.empty(self.name)
        room = self.decoder.capacity - self.decoder.length - len(context) + len(self._ids)
        k = min(k, max(room - 2, 0))
        logits = self._sync(context)
        if logits is None or k <= 0:  # nothing new to condition on (cannot happen in the engine)
            return Proposal.empty(self.name)
        ids, qs = [], []
        for step in range(k):
            logits = logits[: self.bridge.shared]
            if sampler is None:  # greedy: propose the draft's argmax
                tok = int(np.argmax(logits))
            else:  # sampling: draw from q, which verification needs too
                q = sampler.probs(logits[None])[0]
                tok = sampler.draw(q)
                qs.append(q)
            ids.append(tok)
            if step < k - 1:  # the last proposal is never fed: the target verifies it
                logits = self.decoder.append([tok])[-1]
                self._ids.append(tok)
                self._draft_len.append(self._draft_len[-1] + 1)
        q_full = self.bridge.probs_to_target(np.stack(qs)) if qs else None
        return Proposal(np.asarray(ids, dtype=np.int64), q_full, self.name, draft_passes=k)
