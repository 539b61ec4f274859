"""Evenly spaced subsets: deterministic, and every class of a class-sorted image list stays represented."""

from __future__ import annotations

import numpy as np


def evenly_spaced(n: int, count: int) -> np.ndarray:
    """Indices of ``count`` of ``n`` items at an even stride (all of them when ``count`` is 0 or at least ``n``)."""
    if count <= 0 or count >= n:
        return np.arange(n)
    # The stride is >= 1, so the rounded positions are distinct.
    return np.linspace(0, n - 1, count).round().astype(int)
