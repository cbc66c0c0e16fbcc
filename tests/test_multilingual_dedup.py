"""Multilingual dedup: the multilingual USE by default, the unrepresentable guard (MiniLM on
Japanese), the language rule (a prompt and its translation are different rows), per-language
counts, and empty sources through the whole dedup chain."""

import glob
import json
import re

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from posttrain_assets.common.text import normalize_text, text_hash
from posttrain_assets.dedup.assets import DedupConfig, dedup_clusters, deduplicated_prompts, prompt_embeddings
from posttrain_assets.dedup.duplicates import cluster_prompts, summary_markdown
from posttrain_assets.dedup.embedding import embeddings_table
from posttrain_assets.ingest.assets import merged_prompts, raw_records
from posttrain_assets.ingest.merging import MERGED_SCHEMA
from resources.embeddings import USE_NAME, EmbeddingClient
from resources.storage import ParquetStore

from .conftest import BUNDLED_REGISTRY, SHARED_DATA, needs_shared
from .helpers import mat_metadata, materialize_source, resources_for, upstream_specs

KANA = re.compile(r"[\u3040-\u30ff]")
# templated Japanese instructions whose content words are katakana (unknown to MiniLM's vocabulary)
KATAKANA_PROMPTS = ["アーユルヴェーダとは？", "マイクロソフトとは？", "コモドールとは？", "ソクラテスとは？",
                    "マヨネーズとは？", "アリストテレスとは？"]


def language(text: str) -> str:
    if KANA.search(text):
        return "ja"
    import py3langid

    return py3langid.classify(text)[0]


@pytest.fixture(scope="module")
def use():
    return EmbeddingClient()


@pytest.fixture(scope="module")
def minilm():
    return EmbeddingClient(backend="sentence_transformers")


@pytest.fixture(scope="module")
def ja_chat():
    """Distinct user turns of 20+ characters of the RealPersonaChat LLM dialogues: unrelated prompts."""
    out, seen = [], set()
    for f in sorted(glob.glob(str(SHARED_DATA / "ja_realpersonachat_llm_dialogues" / "GPT*.json"))):
        for dlg in json.load(open(f, encoding="utf-8")):
            for u in dlg["utterances"]:
                if u["interlocutor"] == "user" and len(u["text"]) >= 20 and normalize_text(u["text"]) not in seen:
                    seen.add(normalize_text(u["text"]))
                    out.append(u["text"])
    return out


@pytest.fixture(scope="module")
def oasst_ja():
    """(English original, Japanese machine translation, hand-corrected translation) per message."""
    data = json.load(open(SHARED_DATA / "oasst2_ja_edited" / "edited_data_flat.json", encoding="utf-8"))
    return [(m["text"], m["text_ja"], m["text_ja_audited"]) for m in data.values()]


def merged_of(texts: list[str], languages=True, sources=None) -> pa.Table:
    """One source per text (a source's records with the same prompt form one group)."""
    n = len(texts)
    sources = sources or [f"s{i}" for i in range(n)]
    rows = [{**{c: None for c in MERGED_SCHEMA.names}, "all_prompt_id": f"{s}:{i}", "source": s,
             "source_prompt_id": str(i), "source_file": "f", "source_row": i, "kind": "sft", "metadata": "{}",
             "prompt": t, "messages": [{"role": "user", "content": t}],
             "prompt_norm_hash": text_hash(normalize_text(t)), "language": language(t) if languages else None}
            for i, (s, t) in enumerate(zip(sources, texts))]
    table = pa.Table.from_pylist(rows, schema=MERGED_SCHEMA)
    return table if languages else table.drop_columns(["language"])


def embed(merged: pa.Table, client: EmbeddingClient, guard: bool = True) -> pa.Table:
    texts = merged["prompt"].to_pylist()
    rep = client.representable(texts) if guard else None
    return embeddings_table(merged["all_prompt_id"].to_pylist(), client.encode(texts), rep, client.model_name)


def removed(res) -> dict[str, str]:
    """removed prompt -> its representative's prompt."""
    rows = res.clusters.to_pylist()
    by_id = {r["all_prompt_id"]: r for r in rows}
    return {r["all_prompt_id"]: by_id[r["representative_id"]]["all_prompt_id"] for r in rows if not r["keep"]}


def test_scripts_and_unknown_tokens_decide_what_a_model_represents(use, minilm):
    texts = ["How many clips did Natalia sell?", "Привет, как дела?", "アーユルヴェーダとは？",
             "量子力学について教えてください。", "नमस्ते, आप कैसे हैं?", "😀", ""]
    assert minilm.representable(texts).tolist() == [True, False, False, False, False, False, True]
    assert use.representable(texts).tolist() == [True, True, True, True, False, False, True]
    # a model of one's own: `scripts` declares what it was trained on
    assert EmbeddingClient(backend="openai", model="m", scripts=["latin"]).model_scripts() == frozenset({"latin"})


@needs_shared
def test_minilm_never_merges_real_japanese_prompts_semantically(minilm, ja_chat):
    texts = ja_chat[:300] + KATAKANA_PROMPTS
    # what the guard prevents: MiniLM sees only "[UNK] とは ？" in both
    v = minilm.encode(KATAKANA_PROMPTS[:2])
    assert v[0] @ v[1] > 0.99
    merged = merged_of(texts + [texts[0]])  # plus an exact copy in another source
    res = cluster_prompts(merged, embed(merged, minilm), {}, {}, DedupConfig())
    assert removed(res) == {f"s{len(texts)}:{len(texts)}": "s0:0"}  # only the exact duplicate
    assert res.stats["unrepresentable"] == len(texts)
    lang = {r["language"]: r for r in res.by_language.to_pylist()}
    assert lang["ja"]["unrepresentable"] == len(texts) + 1 and lang["ja"]["removed_exact"] == 1
    # without the guard the katakana prompts collapse into one cluster
    unguarded = cluster_prompts(merged, embed(merged, minilm, guard=False), {}, {}, DedupConfig())
    gone = {merged["prompt"][int(i.split(":")[1])].as_py() for i in removed(unguarded)}
    assert set(KATAKANA_PROMPTS) & gone


@needs_shared
def test_use_merges_japanese_paraphrases_not_unrelated_prompts(use, ja_chat, oasst_ja):
    pairs = [(mt, fixed) for _, mt, fixed in oasst_ja if normalize_text(mt) != normalize_text(fixed)]
    assert len(pairs) == 19
    # planted politeness forms: 〜ですか -> 〜でしょうか
    polite = [t for t in ja_chat if "ですか" in t][:40]
    texts = (ja_chat + KATAKANA_PROMPTS + [p for pair in pairs for p in pair]
             + [t.replace("ですか", "でしょうか", 1) for t in polite])
    merged = merged_of(texts)
    res = cluster_prompts(merged, embed(merged, use), {}, {}, DedupConfig())
    assert res.stats["threshold"] == 0.9 and res.stats["unrepresentable"] == 0
    label = res.clusters["cluster_id"].to_pylist()
    n_chat, n_kata = len(ja_chat), len(KATAKANA_PROMPTS)
    first_pair = n_chat + n_kata
    merged_pairs = sum(label[first_pair + 2 * k] == label[first_pair + 2 * k + 1] for k in range(len(pairs)))
    assert merged_pairs >= 14, merged_pairs  # measured 15 of 19 hand-corrected translations
    first_polite = first_pair + 2 * len(pairs)
    found = sum(label[first_polite + k] == label[ja_chat.index(t)] for k, t in enumerate(polite))
    assert found >= 0.9 * len(polite), (found, len(polite))
    # unrelated prompts: at most 3 of the ~860 real chit-chat turns go (two clusters of near-paraphrases:
    # "私は暑いのが苦手です" x3, and two questions on motorbike insurance), no katakana prompt
    chat_merged = n_chat + n_kata - len(set(label[:n_chat + n_kata]))
    assert chat_merged <= 3, chat_merged
    assert len(set(label[n_chat:n_chat + n_kata])) == n_kata


@needs_shared
def test_a_prompt_and_its_translation_are_different_rows(use, oasst_ja):
    en = [e for e, _, _ in oasst_ja]
    ja = [fixed for _, _, fixed in oasst_ja]
    merged = merged_of(en + ja)
    emb = embed(merged, use)
    res = cluster_prompts(merged, emb, {}, {}, DedupConfig())
    label = res.clusters["cluster_id"].to_pylist()
    n = len(en)
    assert sum(label[i] == label[n + i] for i in range(n)) == 0
    assert res.stats["language_rule"] == "semantic merges within one language"
    assert {r["language"]: r["before"] for r in res.by_language.to_pylist()} == {"en": n, "ja": n}
    # without the rule the two long code answers (cosine 0.94) would merge with their translation
    loose = cluster_prompts(merged, emb, {}, {}, DedupConfig(cross_language=True))
    label = loose.clusters["cluster_id"].to_pylist()
    assert 1 <= sum(label[i] == label[n + i] for i in range(n)) <= 3
    # no language column: no rule, no failure, everything counted as 'und'
    plain = merged_of(en + ja, languages=False)
    res = cluster_prompts(plain, emb, {}, {}, DedupConfig())
    assert res.stats["language_rule"] == "no language column"
    assert res.by_language.to_pylist()[0]["language"] == "und"
    assert set(res.clusters["language"].to_pylist()) == {None}


def test_per_language_counts_in_the_summary(use):
    texts = ["How many clips did Natalia sell in April and May?",
             "How many clips did Natalia sell in April and May",
             "Write a haiku about the sea.", "量子力学について教えてください。", "量子力学について教えてください！",
             "量子力学について教えてください。", "Привет, как дела?"]
    merged = merged_of(texts, sources=["a", "a", "a", "b", "b", "c", "c"])
    res = cluster_prompts(merged, embed(merged, use), {"a": 1, "b": 2, "c": 3}, {}, DedupConfig())
    lang = {r["language"]: r for r in res.by_language.to_pylist()}
    assert lang["en"] == {"language": "en", "before": 3, "after": 2, "removed_exact": 0, "removed_semantic": 1,
                          "unrepresentable": 0}
    assert lang["ja"] == {"language": "ja", "before": 3, "after": 1, "removed_exact": 1, "removed_semantic": 1,
                          "unrepresentable": 0}
    assert lang["ru"]["after"] == 1
    md = summary_markdown(res.summary, res.by_language)
    assert "| a | 3 | 2 | 1 | 0 | 0 | 1 |" in md and "By language:" in md and "| ja | 3 | 1 | 1 | 1 | 0 |" in md
    assert res.stats["languages"] == {"en": 3, "ja": 3, "ru": 1}


def test_all_sources_empty(use):
    merged = MERGED_SCHEMA.empty_table()
    emb = embeddings_table([], np.zeros((0, 1024), np.float32), model=USE_NAME, dim=1024)
    res = cluster_prompts(merged, emb, {}, {}, DedupConfig(), sources=["a", "b"])
    assert res.clusters.num_rows == 0 and res.report.num_rows == 0
    assert [(r["source"], r["before"], r["after"]) for r in res.summary.to_pylist()] == [("a", 0, 0), ("b", 0, 0)]


def test_empty_source_through_the_dedup_chain(tmp_path, instance):
    root = str(tmp_path / "storage")
    materialize_source("self_instruct", instance, root, BUNDLED_REGISTRY,
                       assets=[raw_records, merged_prompts, prompt_embeddings])
    store = ParquetStore(root)
    store.write(MERGED_SCHEMA.empty_table(), store.path("merged_prompts", "empty"))
    instance.add_dynamic_partitions("source", ["empty"])
    resources = resources_for(root, BUNDLED_REGISTRY)

    res = dg.materialize(upstream_specs("merged_prompts") + [prompt_embeddings], selection=[prompt_embeddings],
                         partition_key="empty", instance=instance, resources=resources)
    md = mat_metadata(res, "prompt_embeddings")
    assert (md["rows_in"], md["rows_out"], md["dim"], md["unrepresentable"]) == (0, 0, 1024, 0)
    emb = pq.read_table(f"{root}/prompt_embeddings/source=empty/data.parquet")
    assert emb.num_rows == 0 and emb.schema.field("embedding").type.list_size == 1024

    res = dg.materialize(upstream_specs("merged_prompts", "prompt_embeddings") + [dedup_clusters],
                         selection=[dedup_clusters], instance=instance, resources=resources)
    assert res.success
    summary = {r["source"]: r for r in pq.read_table(f"{root}/dedup_summary/data.parquet").to_pylist()}
    assert summary["empty"]["before"] == 0 and summary["self_instruct"]["before"] == 175
    md = mat_metadata(res, "dedup_clusters")
    assert md["threshold"] == 0.9 and md["threshold_source"] == f"default of {USE_NAME}"
    assert "By language:" in md["summary"]

    for key, rows in (("empty", 0), ("self_instruct", None)):
        res = dg.materialize(upstream_specs("merged_prompts") + [dg.AssetSpec("dedup_clusters"),
                                                                   deduplicated_prompts],
                             selection=[deduplicated_prompts], partition_key=key, instance=instance,
                             resources=resources)
        assert res.success
        kept = pq.read_table(f"{root}/deduplicated_prompts/source={key}/data.parquet")
        if rows is not None:
            assert kept.num_rows == rows and kept.schema.equals(MERGED_SCHEMA)
        md = mat_metadata(res, "deduplicated_prompts")
        assert md["rows_in"] == md["rows_out"] + md["removed"]
