"""Magpie's gen_dis (magpie-align/magpie exp/gen_dis.py, commit 27560db0f63d1cd3ffd3ef941beadf012020b910)
over one table's instruction embeddings. Pure: numpy + faiss.

Upstream builds a Hugging Face `datasets` faiss index over the sentence embeddings (default
`faiss.IndexFlat`: L2 metric, which returns SQUARED Euclidean distances) and searches each row's
`search_space_size` (500) nearest rows. For unit-length embeddings (ours are normalised) the squared
distance is 2 - 2 cos, so the 0.05 threshold is cosine > 0.975. Per row:

- `min_neighbor_distance`: the squared L2 distance to the nearest OTHER row (upstream takes the
  second search hit, assuming the first is the row itself; here the row itself is excluded by
  position, which gives the same value and stays right when exact duplicates tie at 0). Null when
  the table has no other row.
- `repeat_count`: how many other rows among the searched neighbours lie closer than `threshold`.
- `min_similar_id`: null when repeat_count is 0; else, of the rows within the threshold, the one
  with the smallest position: when that position comes after the row's own, the row's own id (it
  is the first of its group), else that earlier row's id. So only the first row of a group of
  near-duplicates names itself; Magpie's filter keeps exactly the rows whose id is null or their own.

"Earlier" is the position in the input table. Distances are clamped at 0 (float rounding).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

#: upstream's defaults (--distance_distance_threshold, --search_space_size)
REPEAT_THRESHOLD = 0.05
SEARCH_SPACE = 500


@dataclass(frozen=True)
class NeighborTag:
    min_neighbor_distance: Optional[float]
    repeat_count: int
    min_similar_id: Optional[str]


def gen_dis(vectors: np.ndarray, ids: list[str], *, threshold: float = REPEAT_THRESHOLD,
            search_space: int = SEARCH_SPACE) -> list[NeighborTag]:
    """One NeighborTag per row of `vectors` ([n, d] float32; rows in table order), see the module docstring."""
    n = len(ids)
    if vectors.shape[0] != n:
        raise ValueError(f"{vectors.shape[0]} vectors for {n} ids")
    if n == 0:
        return []
    if threshold <= 0:
        raise ValueError(f"threshold must be > 0, got {threshold}")
    import faiss

    x = np.ascontiguousarray(vectors, dtype=np.float32)
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(x)
    k = min(max(search_space, 2), n)
    dist, idx = index.search(x, k)
    out = []
    for i in range(n):
        keep = (idx[i] >= 0) & (idx[i] != i)
        others, d = idx[i][keep], np.maximum(dist[i][keep], 0.0)
        if len(others) == 0:
            out.append(NeighborTag(None, 0, None))
            continue
        close = others[d < threshold]
        if len(close) == 0:
            out.append(NeighborTag(float(d.min()), 0, None))
            continue
        first = int(close.min())
        out.append(NeighborTag(float(d.min()), int(len(close)), ids[i] if first > i else ids[first]))
    return out
