"""The attribute model as an artifact: train, version, save under the storage root, load, predict.
Pure (no Dagster); the embedder is passed in (`embed(texts) -> [n, d]`).

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
import io
import json
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np

from .attributes import ATTRIBUTES
from .head import RidgeHead, evaluate, fit

FEATURES = "embed(text)+embed(response)+6 length features"
FEATURES_VERSION = 1
L2_GRID = (1.0, 10.0, 100.0, 1000.0, 10000.0, 100000.0)
MODEL_DIR = "models/attribute_model"
MANIFEST = "model.json"

Embed = Callable[[list[str]], np.ndarray]


class AttributeModelError(RuntimeError):
    """An artifact that cannot be loaded or used (names the folder and what is wrong)."""


# --------------------------------------------------------------------------- features
def _length_features(texts: Sequence[str]) -> np.ndarray:
    return np.array([[math.log1p(len(t)), math.log1p(len(t.split())), math.log1p(t.count("\n"))] for t in texts],
                    dtype=np.float64).reshape(len(texts), 3)


def split_context(text: str, response: str) -> str:
    """The context part of a rendered example (everything before the reply)."""
    return text[: len(text) - len(response)] if text.endswith(response) else text


def features(embed: Embed, texts: Sequence[str], responses: Sequence[str], max_chars: int = 2000) -> np.ndarray:
    """[n, 2d + 6]: embed(text tail), embed(reply tail), length features of the reply and of the context."""
    texts, responses = list(texts), list(responses)
    if not texts:
        return np.zeros((0, 0))
    a = np.asarray(embed([t[-max_chars:] for t in texts]), dtype=np.float64)
    r = np.asarray(embed([t[-max_chars:] for t in responses]), dtype=np.float64)
    contexts = [split_context(t, resp) for t, resp in zip(texts, responses)]
    return np.hstack([a, r, _length_features(responses), _length_features(contexts)])


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


# --------------------------------------------------------------------------- artifacts
#: an artifact version (data_version: 16 hex digits; a user's own folder name: letters, digits, _ . -)
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def artifact_dir(root: str, version: str) -> str:
    """The folder of an artifact version; a version that could name another folder (read from LATEST,
    a file anyone with write access to the storage can change) is an AttributeModelError."""
    if not isinstance(version, str) or not VERSION_RE.match(version) or ".." in version:
        raise AttributeModelError(f"attribute model version {version!r} is not a version name "
                                  f"({VERSION_RE.pattern}): refused before it names a folder")
    return f"{root.rstrip('/')}/{MODEL_DIR}/{version}"


def safe_relative(rel: str, folder: str) -> str:
    """A file name of a manifest's `files`: relative, inside its folder (no '..', no absolute path)."""
    parts = rel.replace("\\", "/").split("/") if isinstance(rel, str) else []
    if not parts or rel.startswith("/") or any(p in ("", ".", "..") for p in parts) or ":" in parts[0]:
        raise AttributeModelError(f"attribute model {folder}: manifest file name {rel!r} is not a path inside "
                                  f"the artifact folder")
    return "/".join(parts)


def save_head(store, folder: str, head: RidgeHead, manifest: dict) -> None:
    """head.npz + model.json under `folder` of a ParquetStore's filesystem (model.json last: its
    presence marks a complete artifact)."""
    W = np.full((len(ATTRIBUTES), len(head.mean)), np.nan)
    b = np.full(len(ATTRIBUTES), np.nan)
    tm = np.full(len(ATTRIBUTES), np.nan)
    for j, a in enumerate(ATTRIBUTES):
        if head.weights.get(a) is not None:
            W[j], b[j], tm[j] = head.weights[a], head.bias[a], head.train_mean[a]
    buf = io.BytesIO()
    np.savez(buf, mean=head.mean, scale=head.scale, weights=W, bias=b, train_mean=tm)
    store.write_bytes(f"{folder}/head.npz", buf.getvalue())
    store.write_bytes(f"{folder}/{MANIFEST}", json.dumps(manifest, indent=2, sort_keys=True).encode())


def save_folder(store, folder: str, local_dir: str, manifest: dict) -> None:
    """Every file of a local folder (a LoRA adapter) + model.json under `folder`."""
    for base, _, files in os.walk(local_dir):
        for name in sorted(files):
            path = os.path.join(base, name)
            rel = os.path.relpath(path, local_dir).replace(os.sep, "/")
            with open(path, "rb") as fh:
                store.write_bytes(f"{folder}/{rel}", fh.read())
    store.write_bytes(f"{folder}/{MANIFEST}", json.dumps(manifest, indent=2, sort_keys=True).encode())


def read_manifest(store, folder: str) -> dict:
    try:
        return json.loads(store.read_bytes(f"{folder}/{MANIFEST}"))
    except FileNotFoundError:
        raise AttributeModelError(f"attribute model {store.uri(folder)}: no {MANIFEST} (not trained, or an "
                                  "interrupted save); materialise attribute_model") from None


class HeadPredictor:
    """The CPU head loaded back: predict(texts, responses) -> [n, 9] raw values (NaN where untrained)."""

    def __init__(self, manifest: dict, arrays: dict, embed: Embed, embedder_name: str):
        if manifest.get("embedder") != embedder_name:
            raise AttributeModelError(
                f"attribute model {manifest.get('version')}: trained on embeddings of {manifest.get('embedder')!r}, "
                f"but the embeddings resource is {embedder_name!r}; use the same embedder or retrain")
        self.manifest, self.version, self.embed = manifest, manifest["version"], embed
        self.W, self.b = arrays["weights"], arrays["bias"]
        self.mean, self.scale = arrays["mean"], arrays["scale"]

    def close(self) -> None:  # an engine of RewardResource's OwnedEngines
        pass

    def predict(self, texts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        if not len(texts):
            return np.zeros((0, len(ATTRIBUTES)))
        X = features(self.embed, texts, responses, self.manifest.get("max_chars", 2000))
        Z = (X - self.mean) / self.scale
        return np.where(np.isnan(self.b), np.nan, np.nan_to_num(Z @ np.nan_to_num(self.W).T) + np.nan_to_num(self.b))


def load(store, folder: str, *, embed: Optional[Embed] = None, embedder_name: str = "", device: str = "auto"):
    """An artifact folder -> a predictor with `.version`, `.manifest`, `.predict(texts, responses)`."""
    manifest = read_manifest(store, folder)
    if manifest.get("backend") == "head":
        if embed is None:
            raise AttributeModelError("the head backend needs the embeddings resource it was trained with")
        arrays = dict(np.load(io.BytesIO(store.read_bytes(f"{folder}/head.npz"))))
        return HeadPredictor(manifest, arrays, embed, embedder_name)
    if manifest.get("backend") == "lora":
        from .lora import LoraPredictor

        local = tempfile.mkdtemp(prefix="attribute-model-")
        for rel in manifest["files"]:
            rel = safe_relative(rel, store.uri(folder))
            dest = os.path.join(local, rel)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with open(dest, "wb") as fh:
                fh.write(store.read_bytes(f"{folder}/{rel}"))
        return LoraPredictor(manifest, local, device=device, cleanup=lambda: shutil.rmtree(local, ignore_errors=True))
    raise AttributeModelError(f"attribute model {store.uri(folder)}: unknown backend {manifest.get('backend')!r}")


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
