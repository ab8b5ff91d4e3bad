"""Bin packing of sequence lengths into fixed-size bins, and gathering packed arrays."""

from __future__ import annotations

import random

import numpy as np

ALGORITHMS = ("first_fit_decreasing", "first_fit_shuffle", "concatenative")


def first_fit(lengths: np.ndarray, order: list[int], capacity: int) -> list[list[int]]:
    """Place each sequence (in `order`) into the first bin with room, in O(n log n).

    A max-segment-tree over the remaining capacity of n potential bins finds the leftmost bin that fits;
    unopened bins have full capacity, so a new bin opens exactly when no open bin fits.
    """
    size = 1 << max(0, (len(order) - 1).bit_length())
    tree = [capacity] * (2 * size)
    bins: list[list[int]] = []
    for index in order:
        length = int(lengths[index])
        node = 1
        while node < size:
            node = 2 * node if tree[2 * node] >= length else 2 * node + 1
        leaf = node - size
        tree[node] -= length
        node //= 2
        while node:
            tree[node] = max(tree[2 * node], tree[2 * node + 1])
            node //= 2
        if leaf == len(bins):
            bins.append([])
        bins[leaf].append(index)
    return bins


def concatenate_in_order(lengths: np.ndarray, capacity: int) -> list[list[int]]:
    bins: list[list[int]] = []
    room = 0
    for index, length in enumerate(lengths.tolist()):
        if length > room:
            bins.append([])
            room = capacity
        bins[-1].append(index)
        room -= length
    return bins


def pack(lengths: np.ndarray, capacity: int, algorithm: str, seed: int) -> list[list[int]]:
    """Bins of sequence indices whose lengths sum to at most `capacity` (every length must fit)."""
    if algorithm == "concatenative":
        return concatenate_in_order(lengths, capacity)
    if algorithm == "first_fit_decreasing":
        order = np.argsort(-lengths, kind="stable").tolist()
    elif algorithm == "first_fit_shuffle":
        order = list(range(len(lengths)))
        random.Random(seed).shuffle(order)
    else:
        raise ValueError(f"unknown packing algorithm {algorithm!r}; choose from {ALGORITHMS}")
    return first_fit(lengths, order, capacity)


def gather_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Indices of the concatenated ranges [starts[i], starts[i] + lengths[i])."""
    lengths = lengths.astype(np.int64)
    offsets = np.cumsum(lengths) - lengths
    return np.repeat(starts.astype(np.int64) - offsets, lengths) + np.arange(int(lengths.sum()), dtype=np.int64)
