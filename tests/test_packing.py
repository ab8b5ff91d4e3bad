"""Packing algorithms: valid bins, first-fit semantics, determinism, and the range gather."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from nemotron_assets.steps.data_prep.packing import ALGORITHMS, first_fit, gather_ranges, pack


def naive_first_fit(lengths, order, capacity):
    bins, room = [], []
    for i in order:
        for b, r in enumerate(room):
            if r >= lengths[i]:
                bins[b].append(i)
                room[b] -= lengths[i]
                break
        else:
            bins.append([i])
            room.append(capacity - lengths[i])
    return bins


@pytest.mark.parametrize("seed", range(5))
def test_first_fit_equals_the_naive_definition(seed: int):
    rng = random.Random(seed)
    lengths = np.array([rng.randint(1, 100) for _ in range(300)])
    order = list(range(300))
    rng.shuffle(order)
    assert first_fit(lengths, order, 128) == naive_first_fit(lengths, order, 128)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_bins_are_valid_and_complete(algorithm: str):
    lengths = np.random.default_rng(0).integers(1, 512, 2000)
    bins = pack(lengths, 512, algorithm, seed=3)
    assert sorted(i for b in bins for i in b) == list(range(2000))
    assert all(lengths[b].sum() <= 512 for b in bins)


def test_first_fit_decreasing_is_near_the_lower_bound():
    lengths = np.random.default_rng(1).lognormal(5, 0.8, 5000).astype(int).clip(1, 4096)
    bins = pack(lengths, 4096, "first_fit_decreasing", seed=0)
    assert len(bins) <= math.ceil(lengths.sum() / 4096) + 1


def test_concatenative_keeps_order_and_shuffle_is_seeded():
    lengths = np.array([3, 3, 3, 5, 1])
    assert pack(lengths, 6, "concatenative", 0) == [[0, 1], [2], [3, 4]]
    lengths = np.random.default_rng(2).integers(1, 50, 100)
    assert pack(lengths, 64, "first_fit_shuffle", 7) == pack(lengths, 64, "first_fit_shuffle", 7)
    assert pack(lengths, 64, "first_fit_shuffle", 7) != pack(lengths, 64, "first_fit_shuffle", 8)


def test_gather_ranges():
    assert gather_ranges(np.array([5, 0, 9]), np.array([2, 3, 0])).tolist() == [5, 6, 0, 1, 2]
