"""Byte-level BPE tokenizers for the default pair.

The draft gets the base vocabulary (like TinyLlama's 32000 Llama-2 pieces); the target
appends chat special tokens after it and pads its embedding to 32064 rows, as Phi-3 does.
"""
from __future__ import annotations

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

BASE_VOCAB = 32000
TARGET_ROWS = 32064  # padded, as Phi-3-mini's 32064
BASE_SPECIALS = ["<unk>", "<s>", "</s>"]  # ids 0, 1, 2 as in Llama-2
# Phi-3's added tokens, at Phi-3's ids 32000..32010 (32011 used).
TARGET_ADDED = [
    "<|endoftext|>", "<|assistant|>", "<|placeholder1|>", "<|placeholder2|>",
    "<|placeholder3|>", "<|placeholder4|>", "<|system|>", "<|end|>",
    "<|placeholder5|>", "<|placeholder6|>", "<|user|>",
]
ENDOFTEXT, ASSISTANT, SYSTEM, END, USER = 32000, 32001, 32006, 32007, 32010
BOS, EOS_DRAFT = 1, 2


def train_base(texts: list[str]) -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BASE_VOCAB,
        special_tokens=BASE_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    assert tok.get_vocab_size() == BASE_VOCAB, tok.get_vocab_size()
    return tok


def with_chat_tokens(base: Tokenizer) -> Tokenizer:
    """A copy of `base` with Phi-3's added tokens at ids 32000..32010."""
    tok = Tokenizer.from_str(base.to_str())
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in TARGET_ADDED])
    for i, t in enumerate(TARGET_ADDED):
        assert tok.token_to_id(t) == BASE_VOCAB + i
    return tok
