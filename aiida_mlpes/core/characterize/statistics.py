"""Statistics of correlated series: automatic-blocking standard errors and an equilibration-drift test."""

from __future__ import annotations

import numpy as np
from scipy.stats import chi2


def blocking_error(series: np.ndarray) -> float:
    """Standard error of the mean of a correlated series by automatic blocking.

    The series is halved repeatedly by averaging neighbours; the block level is chosen by Jonsson's
    M-test (Phys. Rev. E 98, 043304 (2018)) at 99 % confidence, the automatic form of Flyvbjerg and
    Petersen's plateau. The test runs on the last 2^d points and the error is scaled to the full length.
    """
    x = np.asarray(series, dtype=float).reshape(-1)
    if len(x) < 4:
        return float(np.std(x, ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")
    d = int(np.log2(len(x)))
    block = x[len(x) - 2**d :]
    mean = block.mean()
    variance = np.empty(d)
    gamma = np.empty(d)
    for level in range(d):
        n = len(block)
        gamma[level] = np.sum((block[:-1] - mean) * (block[1:] - mean)) / n
        variance[level] = block.var()
        block = 0.5 * (block[0::2] + block[1::2])
    if variance[0] == 0:
        return 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.nan_to_num((gamma / variance) ** 2) * 2.0 ** np.arange(d, 0, -1)
    m_stat = np.cumsum(terms[::-1])[::-1]
    quantiles = chi2.ppf(0.99, np.arange(d, 0, -1))
    below = np.flatnonzero(m_stat < quantiles)
    level = int(below[0]) if len(below) else d - 1
    error_of_block = np.sqrt(variance[level] / 2 ** (d - level))
    return float(error_of_block * np.sqrt(2**d / len(x)))


def drift(production: np.ndarray) -> tuple[float, float] | None:
    """Difference of the means of the second and first halves of ``production`` and its blocking error."""
    half = len(production) // 2
    if half < 32:
        return None
    first, second = production[:half], production[half : 2 * half]
    error = np.hypot(blocking_error(first), blocking_error(second))
    return float(second.mean() - first.mean()), float(error)
