"""The successor table: guesses for rows a pass computes anyway."""
from specops.speculators.successor import SuccessorTable


def test_chain_follows_the_latest_successors():
    t = SuccessorTable()
    t.observe(1, [2, 3, 1, 4])  # 1->2, 2->3, 3->1, 1->4 (the latest wins)
    assert t.chain(1, 3) == [4]
    assert t.chain(2, 3) == [3, 1, 4]
    assert t.chain(9, 2) == [] and t.chain(2, 0) == []
