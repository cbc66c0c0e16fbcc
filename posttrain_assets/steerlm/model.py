"""The attribute model's training: fit, choose l2, version. Pure (no Dagster); the embedder is passed
in (`embed(texts) -> [n, d]`). The artifact it is saved as and loaded from (folder, manifest,
features, predictors) is the model layer's, resources/attributes/ (re-exported here).

Backends:
- `head` (CPU default): ridge heads (steerlm/head.py) over frozen features of each example: the
  multilingual embedder's vectors of the whole text and of the reply alone, plus 6 length features
  (log characters / words / lines of the reply and of the context). Measured in
  bench/attribute_head.py against the embedded LLM's mean-pooled hidden states (worse and 12x slower).
  l2 is chosen per attribute by grouped 5-fold cross-validation on the training rows.
- `lora`: a LoRA fine-tune of a sequence-classification head over any causal LM (steerlm/lora.py).

An artifact is a folder `<root>/models/attribute_model/<version>/` with `model.json` (backend,
features, metrics, counts) and the weights (`head.npz`, or the LoRA adapter + score head). The
version is a hash of the training rows (ids, texts, labels, splits), the config and the embedder,
so the same data and config give the same folder, and any change gives a new one."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np

# the artifact (folder, manifest, save, load) is the model layer's; re-exported for the stage's callers
from resources.attributes.artifact import (ASSET, FEATURES, FEATURES_VERSION, MANIFEST, MODEL_DIR, VERSION_RE,
                                           AttributeModelError, Embed, HeadPredictor, artifact_dir, features,
                                           load, read_manifest, safe_relative, save_folder, save_head,
                                           split_context)

from .attributes import ATTRIBUTES
from .head import RidgeHead, evaluate, fit

L2_GRID = (1.0, 10.0, 100.0, 1000.0, 10000.0, 100000.0)


# --------------------------------------------------------------------------- training
def group_folds(groups: Sequence[str], k: int = 5) -> np.ndarray:
    return np.array([int.from_bytes(hashlib.blake2b(g.encode(), digest_size=4).digest(), "big") % k for g in groups])


def choose_l2(X: np.ndarray, Y: np.ndarray, groups: Sequence[str], grid: Sequence[float] = L2_GRID,
              k: int = 5) -> dict[str, float]:
    """Per attribute: the l2 with the lowest cross-validated MAE (folds by group) on these rows."""
    folds = group_folds(groups, k)
    err = {a: {l2: [] for l2 in grid} for a in ATTRIBUTES}
    for l2 in grid:
        for f in range(k):
            tr, va = folds != f, folds == f
            if not tr.any() or not va.any():
                continue
            ev = evaluate(fit(X[tr], Y[tr], l2), X[va], Y[va])
            for a, m in ev.items():
                if m["mae"] is not None:
                    err[a][l2].append((m["mae"], m["n"]))
    best = {}
    for a in ATTRIBUTES:
        scored = {l2: sum(e * n for e, n in v) / sum(n for _, n in v) for l2, v in err[a].items() if v}
        best[a] = min(scored, key=lambda l2: (scored[l2], -l2)) if scored else max(grid)
    return best


def data_version(ids: Sequence[str], texts: Sequence[str], labels: Sequence[Sequence[Optional[int]]],
                 splits: Sequence[str], config: dict) -> str:
    h = hashlib.blake2b(digest_size=8)
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    for row in sorted(zip(ids, texts, [json.dumps(list(v)) for v in labels], splits)):
        h.update("\x1f".join(row).encode() + b"\x1e")
    return h.hexdigest()


@dataclass
class TrainResult:
    version: str
    backend: str
    metrics: dict[str, dict]  # per attribute on the val rows: n, mae, baseline_mae, spearman
    train_rows: dict[str, int]
    manifest: dict = field(default_factory=dict)


def train_head(embed: Embed, embedder_name: str, texts, responses, labels, splits, groups,
               *, max_chars: int = 2000, l2_grid: Sequence[float] = L2_GRID,
               log: Callable[[str], None] = lambda s: None) -> tuple[RidgeHead, dict, np.ndarray, np.ndarray]:
    """Fit the CPU head on the train rows; returns (head, l2 per attribute, X, Y)."""
    Y = np.array([[np.nan if v is None else float(v) for v in row] for row in labels], dtype=np.float64)
    Y = Y.reshape(len(labels), len(ATTRIBUTES))
    log(f"attribute model: embedding {len(texts)} examples with {embedder_name}")
    X = features(embed, texts, responses, max_chars)
    tr = np.array([s == "train" for s in splits], dtype=bool)
    l2 = choose_l2(X[tr], Y[tr], [g for g, t in zip(groups, tr) if t], l2_grid) if tr.any() else {}
    head = fit(X[tr], Y[tr], l2 or max(l2_grid))
    return head, l2, X, Y


def metric_rows(metrics: dict[str, dict], train_rows: dict[str, int]) -> list[dict]:
    return [{"attribute": a, "train_rows": train_rows.get(a, 0), **metrics.get(a, {})} for a in ATTRIBUTES]


def jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return x


__all__ = ["ASSET", "FEATURES", "FEATURES_VERSION", "L2_GRID", "MANIFEST", "MODEL_DIR", "VERSION_RE",
           "AttributeModelError", "Embed", "HeadPredictor", "RidgeHead", "TrainResult", "artifact_dir", "choose_l2",
           "data_version", "features", "group_folds", "jsonable", "load", "metric_rows", "read_manifest",
           "safe_relative", "save_folder", "save_head", "split_context", "train_head"]
