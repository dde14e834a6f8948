"""The committed output of one generation: token ids, their text, and the stream of deltas."""
from __future__ import annotations

from typing import Callable

from ..runtime.tokenizer import TextTokenizer
from .logprobs import TokenLogprob
from .stopping import StopCheck

# (new ids, new text, the log-probabilities of the tokens committed since the last call: empty
# unless the request asked for them) after each round
OnTokens = Callable[[list[int], str, list[TokenLogprob]], None]


class Output:
    """Commits each round's tokens. Text is decoded per round only when someone needs it
    (stop strings or a stream); otherwise once, at the end."""

    def __init__(self, tokenizer: TextTokenizer, stop: StopCheck, on_tokens: OnTokens | None,
                 logprobs: bool = False):
        self.tokenizer, self.stop, self.on_tokens = tokenizer, stop, on_tokens
        self.ids: list[int] = []
        self.logprobs: list[TokenLogprob] | None = [] if logprobs else None  # aligned with ids
        self.text = ""
        self._emitted = 0
        self._emitted_logprobs = 0
        self.eos_committed = False  # the target chose an EOS id (dropped from the output)
        self._per_round = bool(stop.stop) or on_tokens is not None

    def commit(self, new: list[int], logprobs: list[TokenLogprob] | None = None) -> tuple[list[int], str | None]:
        """Append a round's tokens (trimmed at EOS or the budget) and their log-probabilities;
        returns them and the finish reason ("stop" or "length"), or None to go on."""
        new, finish = self.stop.cut_tokens(len(self.ids), new)
        self.eos_committed = finish == "stop"
        self.ids += new
        if self.logprobs is not None and logprobs is not None:
            self.logprobs += logprobs[:len(new)]
        if self._per_round:
            self.text, hit = self.stop.cut_text(self.tokenizer.decode(self.ids))
            finish = "stop" if hit else finish
            if self.on_tokens is not None:
                self._emit(new, finish is not None)
        return new, finish

    def _emit(self, new: list[int], final: bool) -> None:
        safe = self.text if final else self.stop.safe_prefix(self.text)
        if not final:
            safe = safe.rstrip("\ufffd")  # an incomplete UTF-8 sequence waits for its next byte
        if len(safe) > self._emitted or final:
            logprobs = (self.logprobs or [])[self._emitted_logprobs:]
            self.on_tokens(new, safe[self._emitted:], logprobs)
            self._emitted = max(self._emitted, len(safe))
            self._emitted_logprobs += len(logprobs)

    def finish(self) -> str:
        if not self._per_round:
            self.text = self.tokenizer.decode(self.ids)
        return self.text
