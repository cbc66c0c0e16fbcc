"""Prompt embeddings: what is embedded, chunked resumable encoding, the run fingerprint.

Table: all_prompt_id, embedding (fixed-size float32 list), representable (the model can represent
every part of the prompt: see `EmbeddingClient.representable`), model (the embedding model)."""

from dataclasses import dataclass
import hashlib
import time
from typing import Callable, Optional

import numpy as np
import pyarrow as pa

from resources.faults import EMBEDDING_CHUNK, Checkpoint, no_checkpoint

MODEL_TYPE = pa.dictionary(pa.int32(), pa.string())


def embeddings_schema(dim: int) -> pa.Schema:
    if dim <= 0:
        raise ValueError(f"embedding dimension must be positive, got {dim}")
    return pa.schema([("all_prompt_id", pa.string()), ("embedding", pa.list_(pa.float32(), dim)),
                      ("representable", pa.bool_()), ("model", MODEL_TYPE)])


def embeddings_table(ids: list[str], vectors: np.ndarray, representable: Optional[np.ndarray] = None,
                     model: Optional[str] = None, dim: Optional[int] = None) -> pa.Table:
    """`dim` is needed only for an empty table (0 rows carry no dimension)."""
    dim = vectors.shape[1] if vectors.ndim == 2 and vectors.shape[1] else dim
    schema = embeddings_schema(dim or 0)
    n = len(ids)
    flat = pa.array(np.ascontiguousarray(vectors, np.float32).ravel(), pa.float32())
    rep = np.ones(n, bool) if representable is None else np.asarray(representable, bool)
    return pa.Table.from_arrays([
        pa.array(ids, pa.string()), pa.FixedSizeListArray.from_arrays(flat, dim),
        pa.array(rep, pa.bool_()), pa.array([model] * n, pa.string()).dictionary_encode().cast(MODEL_TYPE),
    ], schema=schema)


@dataclass
class EmbedRun:
    table: pa.Table
    chunks_total: int
    chunks_resumed: int
    encoded_rows: int
    seconds: float


def embed_in_chunks(ids: list[str], parts: list[tuple[str, str]], encode: Callable[[list[str]], np.ndarray],
                    *, fingerprint: str, chunk_rows: int, store, chunk_dir: str,
                    representable: Optional[Callable[[list[str]], np.ndarray]] = None,
                    model: Optional[str] = None, dim: Optional[Callable[[], int]] = None,
                    log: Optional[Callable[[str], None]] = None,
                    checkpoint: Checkpoint = no_checkpoint) -> EmbedRun:
    """Embed length-sorted chunks, each saved atomically as it finishes; finished chunks of an
    interrupted run with the same fingerprint are reused. Returns vectors in input order.
    `representable(texts)` -> bool per text (None: all); `dim()` -> the model's dimension, asked
    only for an empty input (whose table is still typed: vectors are 2 x dim). `checkpoint` is called
    after each chunk is written (`resources.faults`)."""
    t0 = time.monotonic()
    order = sorted(range(len(parts)), key=lambda i: (len(parts[i][0]) + len(parts[i][1]), i))
    n_chunks = (len(order) + chunk_rows - 1) // chunk_rows
    base = f"{chunk_dir}/{fingerprint}"
    pieces: list[pa.Table] = []
    resumed = encoded = 0
    for c in range(n_chunks):
        idx = order[c * chunk_rows:(c + 1) * chunk_rows]
        path = f"{base}/chunk-{c:05d}.parquet"
        if store.exists(path):
            part = store.read(path)
            if part["all_prompt_id"].to_pylist() == [ids[i] for i in idx]:
                pieces.append(part)
                resumed += 1
                continue
        chunk_parts = [parts[i] for i in idx]
        # representability first: a model may reuse its tokenisation in the encode that follows
        rep = conversation_representable(chunk_parts, representable) if representable else None
        vecs = conversation_vectors(chunk_parts, encode)
        part = embeddings_table([ids[i] for i in idx], vecs, rep, model)
        store.write(part, path)
        pieces.append(part)
        encoded += len(idx)
        checkpoint(EMBEDDING_CHUNK)
        if log:
            done = min((c + 1) * chunk_rows, len(order))
            rate = encoded / max(time.monotonic() - t0, 1e-9)
            log(f"embedded {done:,}/{len(order):,} rows (chunk {c + 1}/{n_chunks}, {rate:,.0f} rows/s)")
    if pieces:
        table = pa.concat_tables(pieces)
        position = {pid: i for i, pid in enumerate(table["all_prompt_id"].to_pylist())}
        table = table.take(pa.array([position[x] for x in ids], pa.int64()))
    else:
        if dim is None:
            raise ValueError("embed_in_chunks: an empty input needs `dim` (the model's dimension)")
        size = 2 * int(dim())  # [final turn ; earlier turns]
        table = embeddings_table([], np.zeros((0, size), np.float32), model=model, dim=size)
    return EmbedRun(table, n_chunks, resumed, encoded, time.monotonic() - t0)


def embedding_parts(table: pa.Table) -> list[tuple[str, str]]:
    """(final user turn, earlier turns) per prompt; the earlier part is "" for single-turn prompts."""
    out = []
    for prompt, msgs in zip(table["prompt"].to_pylist(), table["messages"].to_pylist()):
        users = [i for i, m in enumerate(msgs or []) if m["role"] == "user"]
        if not msgs or len(msgs) < 2 or not users:
            out.append((prompt, ""))
            continue
        last = users[-1]
        earlier = "\n\n".join(f"{m['role']}: {m['content']}" for i, m in enumerate(msgs) if i != last)
        out.append((msgs[last]["content"], earlier))
    return out


def conversation_vectors(parts: list[tuple[str, str]], encode: Callable[[list[str]], np.ndarray]) -> np.ndarray:
    """[final turn ; earlier turns] / sqrt(2) from two unit vectors, so that the cosine of two prompts
    is the mean of their final-turn and context similarities. A single-turn prompt uses its text for
    both halves (its cosine with another single-turn prompt is the plain text cosine). Conversations
    that share a long history but end in different questions therefore stay apart, which they do
    not when the whole rendered conversation is embedded (mean pooling drowns the last turn)."""
    finals = encode([f for f, _ in parts])
    multi = [i for i, (_, c) in enumerate(parts) if c]
    context = finals.copy()
    if multi:
        context[multi] = encode([parts[i][1] for i in multi])
    return np.hstack([finals, context]).astype(np.float32) / np.float32(np.sqrt(2.0))


def conversation_representable(parts: list[tuple[str, str]],
                               representable: Callable[[list[str]], np.ndarray]) -> np.ndarray:
    """A prompt is representable when its final turn and its earlier turns (if any) both are."""
    ok = np.asarray(representable([f for f, _ in parts]), bool).copy()
    multi = [i for i, (_, c) in enumerate(parts) if c]
    if multi:
        ok[multi] &= np.asarray(representable([parts[i][1] for i in multi]), bool)
    return ok


def embedding_fingerprint(model: str, normalize: bool, max_seq_length, ids: list[str],
                          parts: list[tuple[str, str]], options: str = "") -> str:
    h = hashlib.blake2b(digest_size=12)
    h.update(f"{model}|{normalize}|{max_seq_length}|{options}|conversation-v2".encode())
    for i, (f, c) in zip(ids, parts):
        h.update(i.encode() + b"\x00" + hashlib.blake2b(f"{f}\x1f{c}".encode(), digest_size=8).digest())
    return h.hexdigest()
