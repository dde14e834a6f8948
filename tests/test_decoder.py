"""KV cache: a k-token append equals a full prefill; rewind then re-append equals too.

Tolerances (absolute, on logits), measured on the embedded pair: multi-token appends equal the
prefill to 1e-4 (exactly, in practice). A 1-token append of the int4 target runs MatMulNBits'
one-row kernel instead of its GEMM kernel and differs by up to 0.037, hence ATOL_ONE_ROW 0.06;
the draft's 1-token appends are exact. After a rewind the draft's concat cache keeps masked
holes, which change the order of the attention sums; the int8 activation quantization of the
next MatMulNBits (accuracy level 4) can then round a value the other way: up to 0.0053 measured,
hence ATOL_HOLES 0.02. For scale, the cache bugs these tests guard against move logits further:
one token missing from the cache 0.21, one wrong token 4.0."""
import numpy as np
import pytest

from specops.runtime.decoder import Decoder
from specops.runtime.model_folder import read_model_folder

ATOL = 1e-4
ATOL_ONE_ROW = 0.06
ATOL_HOLES = 0.02


def holes_atol(decoder: Decoder) -> float:
    """The shared-buffer layout (target) rewinds without holes; the concat layout keeps them."""
    return ATOL if decoder.shared else ATOL_HOLES


@pytest.fixture(scope="module", params=["target", "draft"])
def decoder(request, target_folder, draft_folder):
    folder = target_folder if request.param == "target" else draft_folder
    return Decoder(read_model_folder(folder), capacity=256, compact_after=8)


IDS = np.random.default_rng(0).integers(3, 31999, size=48)


def test_append_in_pieces_equals_prefill(decoder):
    decoder.reset()
    full = decoder.append(IDS)
    decoder.reset()
    pieces = [decoder.append(IDS[a:b]) for a, b in [(0, 20), (20, 22), (22, 27), (27, 48)]]
    np.testing.assert_allclose(np.concatenate(pieces), full, atol=ATOL)


def test_one_token_appends_equal_prefill(decoder):
    decoder.reset()
    full = decoder.append(IDS)
    decoder.reset()
    decoder.append(IDS[:40])
    steps = [decoder.append(IDS[i:i + 1]) for i in range(40, 48)]
    np.testing.assert_allclose(np.concatenate(steps), full[40:], atol=ATOL_ONE_ROW)


def test_rewind_then_reappend(decoder):
    decoder.reset()
    full = decoder.append(IDS)
    for cut in (40, 33, 46, 10):
        decoder.rewind(cut)
        assert decoder.length == cut
        np.testing.assert_allclose(decoder.append(IDS[cut:]), full[cut:], atol=holes_atol(decoder))


def test_many_rejections_then_compaction(decoder):
    """Rejected proposals (other tokens) written and rewound many times leave no trace."""
    decoder.reset()
    full = decoder.append(IDS)
    decoder.rewind(30)
    junk = np.array([5, 6, 7, 8, 9])
    for _ in range(20):
        decoder.append(junk)
        decoder.rewind(30)
    np.testing.assert_allclose(decoder.append(IDS[30:]), full[30:], atol=holes_atol(decoder))


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


def test_uncopied_logits_equal_copied_ones_until_the_next_pass(decoder):
    decoder.reset()
    decoder.append(IDS[:10])
    copied = decoder.append(IDS[10:13])
    decoder.rewind(10)
    view = decoder.append(IDS[10:13], copy=False)
    np.testing.assert_allclose(view, copied, atol=holes_atol(decoder))
    decoder.rewind(10)
    decoder.append(IDS[20:23], copy=False)  # the same buffer, overwritten
    assert not np.allclose(view, copied, atol=holes_atol(decoder))


def test_padded_one_token_passes_equal_the_rows_of_wider_passes(target_folder):
    """min_rows 2 (consistent passes): a one-token step runs as a two-row pass whose padding row
    leaves no trace: its logits are those of the token's row in a wider pass, the cache holds
    only the real token, and the next step sees the same cache as without padding."""
    plain, padded = (Decoder(read_model_folder(target_folder, verify=False)) for _ in range(2))
    padded.min_rows = 2
    ids = list(range(3, 40))
    for dec in (plain, padded):
        dec.prefill(ids)
    one = padded.append([41])
    assert padded.length == len(ids) + 1 and one.shape == (1, plain.vocab_size)
    padded.rewind(len(ids))
    wide = padded.append([41, 42, 43])
    np.testing.assert_array_equal(one[0], wide[0])
    padded.rewind(len(ids) + 1)
    np.testing.assert_allclose(padded.append([44])[0], plain.append([41, 44])[1], atol=1e-4)
    assert not plain.one_row_kernel_differs()  # int4 weights: one row computes as a GEMM row does
