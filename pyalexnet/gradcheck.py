"""Central-difference gradient checks for the NumPy references (run them in float64).

Error measure (docs/ARCHITECTURE.md, Tests): |analytic - numeric| <= tol * max(|analytic|, |numeric|, 1).
"""
import numpy as np


def numeric_gradient(f, x, dy, eps=1e-6):
    """d(sum(f(x) * dy))/dx by central differences; f must be deterministic."""
    x = np.array(x, dtype=np.float64)
    g = np.zeros_like(x)
    flat, gflat = x.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        plus = np.sum(f(x) * dy)
        flat[i] = old - eps
        minus = np.sum(f(x) * dy)
        flat[i] = old
        gflat[i] = (plus - minus) / (2 * eps)
    return g


def assert_gradient_close(analytic, numeric, tol=1e-5, skip=None, what="gradient"):
    """Fails with the worst index if any entry misses the relative tolerance.

    skip: boolean mask of entries to ignore (kinks: ReLU near 0, max-pool near ties).
    """
    analytic, numeric = np.asarray(analytic, np.float64), np.asarray(numeric, np.float64)
    assert analytic.shape == numeric.shape, f"{what}: shape {analytic.shape} != {numeric.shape}"
    err = np.abs(analytic - numeric) / np.maximum(np.maximum(np.abs(analytic), np.abs(numeric)), 1)
    if skip is not None:
        err = np.where(skip, 0, err)
    worst = np.unravel_index(np.argmax(err), err.shape) if err.size else ()
    assert err.size == 0 or err[worst] <= tol, (
        f"{what}: relative error {err[worst]:.3g} > {tol} at {worst}: "
        f"analytic {analytic[worst]!r}, numeric {numeric[worst]!r}")
