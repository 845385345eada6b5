"""Exact global top-k: k elements whatever the ties, the same ones every time."""

import pytest
import torch

from lightning_unlearn.topk import count_for_fraction, global_topk_masks


def test_ties_at_the_threshold_go_to_the_earliest_positions():
    a = torch.tensor([[1.0, 3.0], [2.0, 2.0]])
    b = torch.tensor([2.0, 5.0, 0.0])
    masks = global_topk_masks([a, b], 3)  # 5, 3, then one of the three 2s: the first (a[1, 0])
    assert masks[0].tolist() == [[False, True], [True, False]] and masks[1].tolist() == [False, True, False]
    assert sum(int(m.sum()) for m in global_topk_masks([torch.zeros(10), torch.zeros(5)], 7)) == 7
    assert global_topk_masks([torch.zeros(4)], 2)[0].tolist() == [True, True, False, False]


def test_nan_ranks_lowest_and_the_edges_are_exact():
    x = torch.tensor([float("nan"), 1.0, -1.0])
    assert global_topk_masks([x], 2)[0].tolist() == [False, True, True]
    assert not global_topk_masks([x], 0)[0].any() and global_topk_masks([x], 3)[0].all()
    with pytest.raises(ValueError):
        global_topk_masks([x], 4)


def test_count_for_fraction_rounds_and_checks_its_range():
    assert count_for_fraction(0.05, 697024) == round(0.05 * 697024)
    assert count_for_fraction(1.0, 7) == 7 and count_for_fraction(0.0, 7) == 0
    with pytest.raises(ValueError):
        count_for_fraction(1.5, 7)
