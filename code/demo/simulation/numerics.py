"""Matrix products that do not depend on how BLAS splits the work, so a seed gives identical arrays anywhere."""

from __future__ import annotations

import numpy as np


def exact_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b in float64, bit-identical whatever the BLAS threading or kernel.

    Both factors are rounded to a fixed-point grid (about 20 significant bits at the scale of
    their largest entry) coarse enough that every product and partial sum is an integer below
    2**53 times the grid step: float64 adds such numbers exactly, so the order of summation,
    which BLAS varies with the number of threads, cannot change the result.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    k = a.shape[-1]
    ea = np.frexp(np.abs(a).max(initial=1e-300))[1]  # |a| < 2**ea
    eb = np.frexp(np.abs(b).max(initial=1e-300))[1]
    frac = (52 - int(np.ceil(np.log2(max(k, 2)))) - ea - eb) // 2
    qa, qb = np.round(np.ldexp(a, frac)), np.round(np.ldexp(b, frac))  # integers, exactly representable
    return np.ldexp(qa @ qb, -2 * frac)
