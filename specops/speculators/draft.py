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
        self._scratch: np.ndarray | None = None

    def _sync(self, context: np.ndarray) -> tuple[np.ndarray | None, int]:
        """Bring the cache to `context`; returns draft logits [V] after it (None if nothing fed)
        and how many tokens it fed."""
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
            return None, 0
        draft_ids = []
        for t in new:
            bridged = self.bridge.to_draft([t])
            draft_ids.extend(bridged)
            self._draft_len.append(self._draft_len[-1] + len(bridged))
        self._ids.extend(new)
        if len(draft_ids) > 1:
            return self.decoder.prefill(draft_ids), len(new)
        return self.decoder.append(draft_ids, copy=False)[-1], len(new)

    def propose(self, context: np.ndarray, k: int, sampler=None, stopper=None) -> Proposal:
        """Up to k proposals. `stopper` (specops.engine.adaptive.DraftStopper) may end the
        proposal early: it sees the draft's confidence in each token as it is drafted."""
        if k <= 0:
            return Proposal.empty(self.name)
        room = self.decoder.capacity - self.decoder.length - len(context) + len(self._ids)
        k = min(k, max(room - 2, 0))
        logits, fed = self._sync(context)
        if logits is None or k <= 0:  # nothing new to condition on (cannot happen in the engine)
            return Proposal.empty(self.name)
        ids, qs, confs, passes = [], [], [], 1
        while True:
            logits = logits[: self.bridge.shared]
            if sampler is None:  # greedy: propose the draft's argmax
                tok = int(np.argmax(logits))
                conf = self._top_probability(logits, tok)
            else:  # sampling: draw from q, which verification needs too
                q = sampler.probs(logits[None])[0]
                tok = sampler.draw(q)
                conf = float(q.max())
            if stopper is not None and not stopper.include(conf):
                break
            ids.append(tok)
            confs.append(conf)
            if sampler is not None:
                qs.append(q)
            if len(ids) == k or (stopper is not None and not stopper.more()):
                break  # the last proposal is never fed: the target verifies it
            logits = self.decoder.append([tok], copy=False)[-1]
            passes += 1
            self._ids.append(tok)
            self._draft_len.append(self._draft_len[-1] + 1)
        q_full = self.bridge.probs_to_target(np.stack(qs)) if qs else None
        return Proposal(np.asarray(ids, dtype=np.int64), q_full, self.name, draft_passes=passes,
                        confidence=np.asarray(confs), catchup=max(fed - 2, 0))

    def _top_probability(self, logits: np.ndarray, top: int) -> float:
        """softmax(logits)[top] for the argmax `top`, without allocating."""
        if self._scratch is None or len(self._scratch) != len(logits):
            self._scratch = np.empty(len(logits), np.float32)
        np.subtract(logits, logits[top], out=self._scratch)
        np.exp(self._scratch, out=self._scratch)
        return float(1.0 / self._scratch.sum())
