"""PromptBudget: how many prompt tokens ride beside decoding rows (pure arithmetic)."""
import pytest

from specops.engine.prompt_budget import PromptBudget


def test_a_prompt_alone_reads_whole_chunks():
    budget = PromptBudget(chunk=512)
    assert budget.tokens(rows=0, start=0, remaining=5000) == 512
    assert budget.tokens(rows=0, start=4990, remaining=10) == 10


def test_beside_decoding_rows_the_pass_stays_within_the_stall_factor():
    budget = PromptBudget(chunk=512, stall=2.5, floor=8)
    budget.seed([0.010, 0.011, 0.012, 0.013])  # a pass over 1..4 rows; a row costs 1 ms more
    m = budget.tokens(rows=2, start=0, remaining=5000)
    assert 8 <= m <= 512
    assert budget.alpha * m <= 1.5 * 0.011  # alpha * m + the decoding pass <= 2.5 x that pass
    late = budget.tokens(rows=2, start=7000, remaining=5000)  # attention to 7000 keys costs too
    assert budget.floor <= late <= m


def test_it_learns_what_prompt_tokens_cost():
    budget = PromptBudget(chunk=512)
    budget.seed([0.010, 0.011])
    alpha, beta = 3e-4, 5e-8
    for m, start in [(16, 0), (64, 100), (32, 3000), (128, 5000), (8, 7000), (48, 2000)]:
        positions = m * start + m * (m - 1) // 2
        budget.observe(rows=1, tokens=m, positions=positions, seconds=0.010 + alpha * m + beta * positions)
    assert budget.alpha == pytest.approx(alpha, rel=1e-3)
    assert budget.beta == pytest.approx(beta, rel=1e-3)


def test_decoding_passes_update_their_own_cost():
    budget = PromptBudget()
    budget.observe(rows=3, tokens=0, positions=0, seconds=0.02)
    assert budget.decode_s(3) == pytest.approx(0.02)
    assert budget.decode_s(6) == pytest.approx(0.04)  # beyond the measured: in proportion to rows


def test_a_long_prompt_never_reads_fewer_than_the_floor_beside_streams():
    """At thousands of positions the stall allows a few tokens only; the floor keeps the prompt's
    own rate (its chunk pays the pass's fixed cost)."""
    budget = PromptBudget(chunk=512, stall=2.5, floor=32)
    budget.seed([0.011, 0.012])
    budget.alpha, budget.beta = 1e-4, 1e-6  # attention to each key: 7 ms a token at 7000 positions
    assert budget.tokens(rows=1, start=7000, remaining=5000) == 32
    assert budget.tokens(rows=1, start=7000, remaining=20) == 20
    assert budget.tokens(rows=1, start=0, remaining=5000) > 32  # early on the stall allows more
