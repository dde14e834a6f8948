"""KV cache: a k-token append equals a full prefill; rewind then re-append equals too.

Tolerance: 2e-2 absolute on logits. Measured: multi-token appends of the int4 target equal the
prefill exactly, but a 1-token append runs MatMulNBits' GEMV kernel instead of its GEMM kernel
and differs by up to ~6e-3; the draft differs by ~1e-6. A cache bug (wrong position, stale or
missing entries) moves logits by more than 0.5."""
import numpy as np
import pytest

from specops.runtime.decoder import Decoder
from specops.runtime.model_folder import read_model_folder

ATOL = 2e-2


@pytest.fixture(scope="module", params=["target", "draft"])
def decoder(request, target_folder, draft_folder):
    folder = target_folder if request.param == "target" else draft_folder
    return Decoder(read_model_folder(folder), capacity=256, compact_after=8)


IDS = np.random.default_rng(0).integers(3, 31999, size=48)


def test_append_in_pieces_equals_prefill(decoder):
    decoder.reset()
    full = decoder.append(IDS)
    decoder.reset()
    pieces = [decoder.append(IDS[a:b]) for a, b in [(0, 20), (20, 21), (21, 26), (26, 48)]]
    np.testing.assert_allclose(np.concatenate(pieces), full, atol=ATOL)


def test_rewind_then_reappend(decoder):
    decoder.reset()
    full = decoder.append(IDS)
    for cut in (40, 33, 47, 10):
        decoder.rewind(cut)
        assert decoder.length == cut
        np.testing.assert_allclose(decoder.append(IDS[cut:]), full[cut:], atol=ATOL)


def test_many_rejections_then_compaction(decoder):
    """Rejected proposals (other tokens) written and rewound many times leave no trace."""
    decoder.reset()
    full = decoder.append(IDS)
    decoder.rewind(30)
    junk = np.array([5, 6, 7, 8, 9])
    for _ in range(20):
        decoder.append(junk)
        decoder.rewind(30)
    np.testing.assert_allclose(decoder.append(IDS[30:]), full[30:], atol=ATOL)


def test_chunked_prefill_equals_one_pass(decoder):
    decoder.reset()
    last = decoder.append(IDS)[-1]
    decoder.reset()
    np.testing.assert_allclose(decoder.prefill(IDS, chunk=16), last, atol=ATOL)


def test_context_cap_and_bad_rewind(decoder):
    decoder.reset()
    decoder.append(IDS)
    with pytest.raises(OverflowError, match="context full"):
        decoder.append(np.ones(decoder.capacity, dtype=np.int64))
    with pytest.raises(ValueError, match="cannot rewind"):
        decoder.rewind(decoder.length + 1)
