"""Temperature, top-k and top-p on literal logits."""
import numpy as np
import pytest

from specops.engine.sampling import Sampler, probs_from_logits, sample
from specops.engine.sampling_params import SamplingParams

LOGITS = np.log(np.array([[0.5, 0.3, 0.15, 0.05]]))


def test_temperature_one_is_softmax():
    p = probs_from_logits(LOGITS, SamplingParams(temperature=1.0))
    np.testing.assert_allclose(p, [[0.5, 0.3, 0.15, 0.05]], rtol=1e-9)


def test_top_k_keeps_the_k_largest():
    p = probs_from_logits(LOGITS, SamplingParams(temperature=1.0, top_k=2))
    np.testing.assert_allclose(p, [[0.625, 0.375, 0, 0]], rtol=1e-9)


def test_top_p_keeps_the_smallest_prefix_reaching_p():
    p = probs_from_logits(LOGITS, SamplingParams(temperature=1.0, top_p=0.75))
    np.testing.assert_allclose(p, [[0.625, 0.375, 0, 0]], rtol=1e-9)
    p = probs_from_logits(LOGITS, SamplingParams(temperature=1.0, top_p=0.1))
    np.testing.assert_allclose(p, [[1, 0, 0, 0]])


def test_low_temperature_sharpens():
    p = probs_from_logits(LOGITS, SamplingParams(temperature=0.1))
    assert p[0, 0] > 0.99


def test_sample_is_seeded_and_in_range():
    p = np.array([0.2, 0.3, 0.5])
    a = [sample(p, np.random.default_rng(7)) for _ in range(5)]
    assert len(set(a)) == 1 and 0 <= a[0] < 3
    assert Sampler(SamplingParams(temperature=1, seed=3)).rng.random() == np.random.default_rng(3).random()


@pytest.mark.parametrize("bad", [dict(max_new_tokens=0), dict(temperature=-1), dict(top_p=0),
                                 dict(top_k=-1), dict(k_draft=-1), dict(speculator="magic")])
def test_invalid_params_are_refused(bad):
    with pytest.raises(ValueError):
        SamplingParams(**bad)
