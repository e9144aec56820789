"""Row-chunk iteration shared by the analysis modules.

Datasets can be million-row memory maps; every pass over them goes through
these helpers so that peak memory is one chunk, not the whole array.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

DEFAULT_CHUNK = 65536


def row_chunks(n: int, chunk: int = DEFAULT_CHUNK) -> Iterator[slice]:
    for start in range(0, n, chunk):
        yield slice(start, min(start + chunk, n))


def row_norms(x: np.ndarray, chunk: int = DEFAULT_CHUNK) -> np.ndarray:
    """Euclidean norm of every row, float64, chunked."""
    out = np.empty(x.shape[0], dtype=np.float64)
    for sl in row_chunks(x.shape[0], chunk):
        block = np.asarray(x[sl], dtype=np.float32)
        out[sl] = np.sqrt(np.einsum("ij,ij->i", block, block, dtype=np.float64))
    return out


def column_mean(x: np.ndarray, chunk: int = DEFAULT_CHUNK) -> np.ndarray:
    """Per-feature mean, accumulated in float64."""
    total = np.zeros(x.shape[1], dtype=np.float64)
    for sl in row_chunks(x.shape[0], chunk):
        total += np.asarray(x[sl], dtype=np.float64).sum(axis=0)
    return total / x.shape[0]


def matvec(x: np.ndarray, v: np.ndarray, chunk: int = DEFAULT_CHUNK) -> np.ndarray:
    """x @ v for a (possibly memory-mapped) float32 matrix, float64 result."""
    v32 = np.asarray(v, dtype=np.float32)
    out = np.empty(x.shape[0], dtype=np.float64)
    for sl in row_chunks(x.shape[0], chunk):
        out[sl] = np.asarray(x[sl], dtype=np.float32) @ v32
    return out


def rmatvec(x: np.ndarray, w: np.ndarray, chunk: int = DEFAULT_CHUNK) -> np.ndarray:
    """x.T @ w (a weighted sum of rows), float64 result."""
    out = np.zeros(x.shape[1], dtype=np.float64)
    w32 = np.asarray(w, dtype=np.float32)
    for sl in row_chunks(x.shape[0], chunk):
        out += (w32[sl] @ np.asarray(x[sl], dtype=np.float32)).astype(np.float64)
    return out
