"""The attribute model artifact (the model layer): its folder, manifest and weights, loaded back as a
predictor. The `attribute_model` asset (posttrain_assets/steerlm) trains and saves one; the reward
resource's `attributes` backend and `attribute_labelled_sft` load one by version. Pure (no Dagster);
the embedder is passed in (`embed(texts) -> [n, d]`).

An artifact is a folder `<root>/models/attribute_model/<version>/` with `model.json` (backend,
features, metrics, counts) and the weights (`head.npz`, or the LoRA adapter + score head). The version
names the folder: a user of the model gets it from the `attribute_model` asset's materialization
(its `version` metadata), never from a pointer file in the storage.

Backends:
- `head`: ridge heads over frozen features of each example: the embedder's vectors of the whole text
  and of the reply alone, plus 6 length features (log characters / words / lines of the reply and of
  the context);
- `lora`: a LoRA adapter + score head over a causal LM (resources/attributes/lora.py)."""

from __future__ import annotations

import io
import json
import math
import os
import re
import shutil
import tempfile
from typing import Callable, Optional, Sequence

import numpy as np

from .names import ATTRIBUTES

#: the asset whose materialization records the version of the artifact to use
ASSET = "attribute_model"
FEATURES = "embed(text)+embed(response)+6 length features"
FEATURES_VERSION = 1
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


# --------------------------------------------------------------------------- artifacts
#: an artifact version (data_version: 16 hex digits; a user's own folder name: letters, digits, _ . -)
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def artifact_dir(root: str, version: str) -> str:
    """The folder of an artifact version; a version that could name another folder (from a config or
    a materialization's metadata) is an AttributeModelError."""
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


def save_head(store, folder: str, head, manifest: dict) -> None:
    """head.npz + model.json under `folder` of a ParquetStore's filesystem (model.json last: its
    presence marks a complete artifact). `head`: mean, scale and per attribute weights / bias /
    train_mean (None where untrained), as steerlm/head.py's RidgeHead has them."""
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
