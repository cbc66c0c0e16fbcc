"""Arrow list columns of embeddings as one numpy matrix, without a Python object per number."""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def vectors_of(table: pa.Table, column: str = "embedding") -> np.ndarray:
    """float32 [rows, dim] of a fixed-size (or uniformly long) list column with no nulls."""
    col = table[column].combine_chunks()
    dim = getattr(col.type, "list_size", 0)
    if len(col) == 0:
        return np.zeros((0, dim), np.float32)
    flat = col.flatten().to_numpy(zero_copy_only=False)
    return flat.reshape(len(col), dim or len(flat) // len(col)).astype(np.float32, copy=False)
