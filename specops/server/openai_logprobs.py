"""Log-probabilities in the OpenAI shapes: chat (`content`: token, logprob, bytes, top_logprobs)
and legacy completions (tokens, token_logprobs, top_logprobs, text_offset). A token's text is
its bytes decoded (a token holding part of a character shows U+FFFD; `bytes` has them all)."""
from __future__ import annotations

from ..engine.constraint import Grammars
from ..engine.logprobs import TokenLogprob


def _token(grammars: Grammars, token: int) -> tuple[str, bytes]:
    raw = grammars.token_bytes(token)
    return raw.decode("utf-8", errors="replace"), raw


def _entry(grammars: Grammars, token: int, logprob: float) -> dict:
    text, raw = _token(grammars, token)
    return {"token": text, "logprob": logprob, "bytes": list(raw)}


def chat_logprobs(grammars: Grammars, logprobs: list[TokenLogprob]) -> dict:
    return {"content": [{**_entry(grammars, lp.token, lp.logprob),
                         "top_logprobs": [_entry(grammars, t, v) for t, v in lp.top]} for lp in logprobs],
            "refusal": None}


def completion_logprobs(grammars: Grammars, logprobs: list[TokenLogprob], offset: int = 0) -> dict:
    """`offset`: characters of the completion before these tokens (for text_offset)."""
    tokens, offsets = [], []
    for lp in logprobs:
        offsets.append(offset)
        text = _token(grammars, lp.token)[0]
        tokens.append(text)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": [lp.logprob for lp in logprobs],
            "top_logprobs": [{_token(grammars, t)[0]: v for t, v in lp.top} for lp in logprobs],
            "text_offset": offsets}
