"""Class-balanced orders: ``nas.rng.class_round_robin`` and the seeded subsets built on it."""

from __future__ import annotations

import numpy as np
import torch

from nas.datasets import ImageData, balanced_subset
from nas.rng import class_round_robin


def test_every_prefix_is_as_balanced_as_the_classes_allow() -> None:
    y = np.array([0] * 9 + [1] * 2 + [2] * 5)
    order = class_round_robin(y, np.random.default_rng(3))
    assert sorted(order.tolist()) == list(range(len(y)))  # every index once
    for k in range(1, len(y) + 1):
        counts = np.bincount(y[order[:k]], minlength=3)
        room = np.bincount(y, minlength=3)
        # a class more than one behind the largest count has run out of indices
        assert all(counts[i] >= counts.max() - 1 for i in range(3) if counts[i] < room[i])
    assert class_round_robin(y, np.random.default_rng(3)).tolist() == order.tolist()


def test_a_subset_of_unbalanced_data_has_the_size_asked_for() -> None:
    y = torch.tensor([0] * 20 + [1] * 3)
    data = ImageData(torch.zeros(len(y), 3, 4, 4, dtype=torch.uint8), y, ("a", "b"))
    sub = balanced_subset(data, 10, seed=0)
    assert len(sub) == 10  # before: the round-robin stopped when class 1 ran out, giving 6
    assert int((sub.y == 1).sum()) == 3
