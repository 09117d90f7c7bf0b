"""Paths from baseline to input. IG integrates grad F(gamma(a)) . gamma'(a) over a in [0, 1].

A path gives the points gamma(a) and the velocities gamma'(a) for a batch of alphas; the IG
core needs nothing else, so non-straight paths (extremal, guided, blur) plug in here.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Path(Protocol):
    name: str

    def points(self, x: np.ndarray, baseline: np.ndarray, alphas: np.ndarray) -> np.ndarray:
        """gamma(alpha) for each alpha, stacked on a new leading axis."""
        ...

    def velocities(self, x: np.ndarray, baseline: np.ndarray, alphas: np.ndarray) -> np.ndarray:
        """gamma'(alpha), same shape as points (may broadcast over the leading axis)."""
        ...


class StraightPath:
    """gamma(a) = b + a (x - b): the path of Integrated Gradients proper."""

    name = "straight"

    def points(self, x: np.ndarray, baseline: np.ndarray, alphas: np.ndarray) -> np.ndarray:
        shape = (-1,) + (1,) * x.ndim
        return baseline[None] + alphas.reshape(shape) * (x - baseline)[None]

    def velocities(self, x: np.ndarray, baseline: np.ndarray, alphas: np.ndarray) -> np.ndarray:
        return (x - baseline)[None]
