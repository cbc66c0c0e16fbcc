"""Real prompt texts for the benchmarks: the bundled sources plus ../shared/data when present."""

from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
RESULTS = REPO / "bench" / "results"


def real_prompts() -> list[str]:
    """Distinct real prompts (first user turn), from ../shared/data when present, else the bundled slices."""
    from partitions.registry import load_registry, parse_registry
    from posttrain_assets.ingest.loaders import load_rows, rows_to_table
    from posttrain_assets.ingest.merging import merge_prompts

    specs = [s for s in load_registry().sources if not s.synthetic]  # (a synthetic source has no files)
    if SHARED.is_dir():
        extra = [
            {"key": "gsm8k_train", "kind": "cot", "adapter": "gsm8k", "loader": {"path": str(SHARED / "gsm8k/train.jsonl")}},
            {"key": "gsm8k_test", "kind": "cot", "adapter": "gsm8k", "loader": {"path": str(SHARED / "gsm8k/test.jsonl")}},
            {"key": "hh", "kind": "preference", "adapter": "hh_rlhf", "loader": {"path": str(SHARED / "hh_rlhf_harmless_base/test.jsonl.gz")}},
            {"key": "si_user", "kind": "sft", "adapter": "generic", "fields": {"prompt": "instruction"},
             "loader": {"path": str(SHARED / "self_instruct/user_oriented_instructions.jsonl")}},
            {"key": "oasst", "kind": "sft", "adapter": "oasst_tree", "loader": {"path": str(SHARED / "oasst_en_100/en_100_tree.jsonl")}},
        ]
        specs += list(parse_registry({"sources": [{"licence": "x", **e} for e in extra]}).sources)
    seen, out = set(), []
    for spec in specs:
        t = merge_prompts(rows_to_table(load_rows(spec)), spec).table
        for msgs in t["messages"].to_pylist():
            text = msgs[-1]["content"] if msgs else ""
            if text and text not in seen:
                seen.add(text)
                out.append(text)
    return out


def cached_embeddings(texts: list[str], name: str) -> np.ndarray:
    """Embed once with the bundled model; cached under bench/results/ (keyed by the texts)."""
    import hashlib

    from resources.embeddings import EmbeddingClient

    RESULTS.mkdir(parents=True, exist_ok=True)
    key = hashlib.blake2b("\x1f".join(texts).encode(), digest_size=8).hexdigest()
    path = RESULTS / f"{name}-{key}.npy"
    if path.exists():
        return np.load(path)
    X = EmbeddingClient(batch_size=64).encode(texts)
    np.save(path, X)
    return X


def table(headers: list[str], rows: list[list]) -> str:
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in cells])
