"""The CPU attribute model: a linear (ridge) regression head per attribute over frozen text vectors,
trained with the masked loss NeMo uses (a row counts only for the attributes it has), evaluated
against the baseline of predicting the training mean. Pure numpy.

A linear head with independent outputs under a masked squared loss separates into one ridge
regression per attribute over the rows that have it: that is what `fit` solves (closed form, in
seconds for thousands of rows). `split_groups` keeps every row of a group (an OASST tree, a
HelpSteer prompt) on one side of the train / validation split."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

import numpy as np

from .attributes import ATTRIBUTES, clamp_round


def split_groups(groups: Sequence[str], val_fraction: float, seed: int = 0) -> list[str]:
    """'train' / 'val' per row, by a seeded hash of its group: no group on both sides."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    out = []
    for g in groups:
        h = int.from_bytes(hashlib.blake2b(f"{seed}:{g}".encode(), digest_size=8).digest(), "big") / 2**64
        out.append("val" if h < val_fraction else "train")
    return out


@dataclass
class RidgeHead:
    """Per attribute: weights over the (standardised) vector + bias; None for an attribute no training row has."""

    mean: np.ndarray
    scale: np.ndarray
    weights: dict[str, Optional[np.ndarray]] = field(default_factory=dict)
    bias: dict[str, Optional[float]] = field(default_factory=dict)
    train_mean: dict[str, Optional[float]] = field(default_factory=dict)
    train_rows: dict[str, int] = field(default_factory=dict)
    l2: float | dict = 1.0

    def predict(self, X: np.ndarray) -> dict[str, Optional[np.ndarray]]:
        """Raw predictions per attribute (None where the head has no weights)."""
        Z = (np.asarray(X, dtype=np.float64) - self.mean) / self.scale
        return {a: (Z @ w + self.bias[a]) if w is not None else None for a, w in self.weights.items()}

    def predict_labels(self, X: np.ndarray) -> list[dict[str, int]]:
        """Per row: clamped and rounded 0-4 labels (NeMo's attribute_annotate) for the attributes it predicts."""
        raw = self.predict(X)
        n = np.asarray(X).shape[0]
        return [{a: clamp_round(v[i]) for a, v in raw.items() if v is not None} for i in range(n)]


def fit(X: np.ndarray, Y: np.ndarray, l2: float | Mapping[str, float] = 1.0) -> RidgeHead:
    """X [n, d] vectors, Y [n, 9] targets with NaN for missing; a ridge regression per attribute on its
    rows (`l2`: one value, or one per attribute)."""
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    if X.ndim != 2 or Y.shape != (X.shape[0], len(ATTRIBUTES)):
        raise ValueError(f"X must be [n, d] and Y [n, {len(ATTRIBUTES)}], got {X.shape} and {Y.shape}")
    mean = X.mean(axis=0) if len(X) else np.zeros(X.shape[1])
    scale = X.std(axis=0) if len(X) else np.ones(X.shape[1])
    scale[scale == 0] = 1.0
    Z = (X - mean) / scale
    head = RidgeHead(mean=mean, scale=scale, l2=l2 if isinstance(l2, (int, float)) else dict(l2))
    for j, a in enumerate(ATTRIBUTES):
        rows = ~np.isnan(Y[:, j])
        head.train_rows[a] = int(rows.sum())
        if not rows.any():
            head.weights[a], head.bias[a], head.train_mean[a] = None, None, None
            continue
        z, y = Z[rows], Y[rows, j]
        ym, zm = y.mean(), z.mean(axis=0)
        zc = z - zm
        lam = l2 if isinstance(l2, (int, float)) else l2[a]
        w = np.linalg.solve(zc.T @ zc + lam * np.eye(z.shape[1]), zc.T @ (y - ym))
        head.weights[a], head.bias[a], head.train_mean[a] = w, float(ym - zm @ w), float(ym)
    return head


def _spearman(a: np.ndarray, b: np.ndarray) -> Optional[float]:
    if len(a) < 3 or np.all(a == a[0]) or np.all(b == b[0]):
        return None
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def evaluate_predictions(pred: dict[str, Optional[np.ndarray]], Y: np.ndarray,
                         train_mean: dict[str, Optional[float]]) -> dict[str, dict]:
    """Per attribute on the rows that have it: n, MAE of the predictions clamped to [0, 4], MAE of
    predicting the training mean, Spearman of the raw predictions. Any model's outputs (head, LoRA)."""
    Y = np.asarray(Y, dtype=np.float64)
    out = {}
    for j, a in enumerate(ATTRIBUTES):
        rows = ~np.isnan(Y[:, j])
        p_all = pred.get(a)
        if not rows.any() or p_all is None or train_mean.get(a) is None or np.isnan(p_all[rows]).any():
            out[a] = {"n": int(rows.sum()), "mae": None, "baseline_mae": None, "spearman": None}
            continue
        y, p = Y[rows, j], np.clip(p_all[rows], 0, 4)
        out[a] = {"n": int(rows.sum()), "mae": round(float(np.abs(p - y).mean()), 4),
                  "baseline_mae": round(float(np.abs(train_mean[a] - y).mean()), 4),
                  "spearman": None if (s := _spearman(p_all[rows], y)) is None else round(s, 4)}
    return out


def evaluate(head: RidgeHead, X: np.ndarray, Y: np.ndarray) -> dict[str, dict]:
    """evaluate_predictions of the head's raw predictions of X."""
    return evaluate_predictions(head.predict(X), Y, head.train_mean)
