"""Calibrate the semantic dedup threshold of an embedding model on real pairs.

    .venv/bin/python -m bench.calibrate_dedup [--backend use_multilingual|sentence_transformers]
                                              [--thresholds 0.8 0.85 ...] [--show 0.9]

Material (families = texts that are duplicates of each other; every other pair is distinct):
- real English prompts (`bench.common.real_prompts`: bundled sources + ../shared/data: GSM8K,
  HH-RLHF, Self-Instruct, OASST, awesome-chatgpt-prompts; oasst2 also holds other languages) and
  planted English variants of some (case, whitespace, punctuation, two words swapped, a phrase
  replaced by a synonym);
- ../shared/data/oasst2_ja_edited: each message's Japanese machine translation `text_ja` and its
  hand-corrected `text_ja_audited` (a real Japanese paraphrase pair where they differ), and the
  English original `text` (a *different* training row: cross-language pairs must not merge);
- ../shared/data/ja_realpersonachat_llm_dialogues: the distinct user turns (20+ characters; the
  shorter ones are greetings that paraphrase each other) of 150 Japanese chit-chat dialogues
  (unrelated prompts; texts equal up to punctuation/spacing form one family)
  and planted Japanese variants of some (punctuation, 〜ですか -> 〜でしょうか and other politeness
  forms, the two halves of a sentence around 、 or two sentences swapped).

The real dedup (`cluster_prompts`: exact + faiss_graph, connected components, the language rule and
the unrepresentable guard) runs at each threshold. A cluster of m records holding f families makes
m - 1 removals of which m - f are right: precision = right / removals, recall = right / (records -
families). Cross-language pairs (an English message vs its Japanese translation) are counted
separately: how many have cosine >= threshold (they would merge without the language rule) and how
many the run merged (must be 0).
"""

import argparse
import glob
import hashlib
import json
import random
import re
import unicodedata

import numpy as np
import pyarrow as pa

from posttrain_assets.common.text import normalize_text, text_hash
from posttrain_assets.dedup.assets import DedupConfig, FaissGraphDedup
from posttrain_assets.dedup.duplicates import cluster_prompts
from posttrain_assets.dedup.embedding import embeddings_table
from resources.embeddings import EmbeddingClient, default_threshold

from .common import RESULTS, SHARED, real_prompts, table

JA_MIN_CHARS = 20
KANA = re.compile(r"[\u3040-\u30ff]")
EN_SYNONYMS = [("How many", "What number of"), ("How much", "What amount of"), ("Write", "Compose"),
               ("Explain", "Describe"), ("Can you", "Could you"), ("can you", "could you"),
               ("What is", "What's"), ("I want", "I would like"), ("Give me", "Provide"),
               ("buy", "purchase"), ("big", "large"), ("help", "assist")]
JA_POLITE = [("ですか？", "でしょうか？"), ("ですか。", "でしょうか。"), ("ですか", "でしょうか"),
             ("ますか？", "ますでしょうか？"), ("ください。", "くださいませんか。"), ("ください", "下さい"),
             ("教えて", "教えていただけますか"), ("ですね。", "ですよね。"), ("ですね", "ですよね"),
             ("でした。", "だった。"), ("です。", "だ。"), ("ますね", "ますよね")]


def language(text: str) -> str:
    """ISO 639-1 (py3langid; kana -> ja), 'und' without letters (as the ingest stage does)."""
    if not re.search(r"[^\W\d_]", text):
        return "und"
    if KANA.search(text):
        return "ja"
    import py3langid

    return py3langid.classify(text[:2000])[0]


def skeleton(text: str) -> str:
    """Text without case, spacing or punctuation: equal skeletons = the same prompt."""
    return "".join(c for c in unicodedata.normalize("NFKC", text).casefold() if c.isalnum())


def en_variant(t: str, rng: random.Random) -> str | None:
    words = t.split()
    kind = rng.randrange(5)
    if kind == 0:
        return t.upper()
    if kind == 1:
        return "  " + t.replace(" ", "  ") + "\n"
    if kind == 2:
        return re.sub(r"[.,?!;:]", "", t) + "!"
    if kind == 3 and len(words) > 2:
        i = rng.randrange(len(words) - 1)
        words[i], words[i + 1] = words[i + 1], words[i]
        return " ".join(words)
    hits = [(a, b) for a, b in EN_SYNONYMS if a in t]
    if hits:
        a, b = rng.choice(hits)
        return t.replace(a, b, 1)
    return None


def ja_variant(t: str, rng: random.Random) -> str | None:
    kinds = ["punct", "polite", "order"]
    rng.shuffle(kinds)
    for kind in kinds:
        if kind == "punct":
            v = t.replace("。", "！") if "。" in t else t.replace("？", "?") if "？" in t else t.replace("、", "")
            if v == t:
                v = t + "。" if not t.endswith(("。", "！", "？", "!", "?")) else t[:-1]
        elif kind == "polite":
            hits = [(a, b) for a, b in JA_POLITE if a in t]
            if not hits:
                continue
            a, b = hits[0]
            v = t.replace(a, b, 1)
        else:
            sentences = [s for s in re.split(r"(?<=[。！？!?])", t) if s]
            if len(sentences) >= 2:
                i = rng.randrange(len(sentences) - 1)
                sentences[i], sentences[i + 1] = sentences[i + 1], sentences[i]
                v = "".join(sentences)
            elif "、" in t:
                a, b = t.split("、", 1)
                end = re.search(r"[。！？!?]+$", b)
                tail = end.group(0) if end else ""
                v = b[:len(b) - len(tail)] + "、" + a + tail
            else:
                continue
        if v != t and normalize_text(v) != normalize_text(t):
            return v
    return None


def material(seed: int = 0, en_variants: int = 1500, ja_variants: int = 400):
    """texts, family id, category, and the cross-language pairs (index en, index ja)."""
    rng = random.Random(seed)
    texts, family, category = [], [], []
    fam_of: dict[str, int] = {}

    def add(text: str, cat: str, fam: int | None = None) -> int:
        if fam is None:
            fam = fam_of.setdefault(skeleton(text), len(fam_of))
        texts.append(text)
        family.append(fam)
        category.append(cat)
        return len(texts) - 1

    en = [t for t in real_prompts() if len(t) < 4000]
    for t in en:
        add(t, "real")
    for i in rng.sample(range(len(en)), min(en_variants, len(en))):
        v = en_variant(en[i], rng)
        if v is not None:
            add(v, "en_variant", family[i])

    ja_chat, seen = [], set()
    for f in sorted(glob.glob(str(SHARED / "ja_realpersonachat_llm_dialogues" / "GPT*.json"))):
        for dlg in json.load(open(f, encoding="utf-8")):
            for u in dlg["utterances"]:
                # 20+ characters: the short turns are greetings and weather talk that paraphrase
                # each other ("今日は暑いですね" / "今日も暑いですね"), not unrelated prompts
                if (u["interlocutor"] == "user" and len(u["text"]) >= JA_MIN_CHARS
                        and normalize_text(u["text"]) not in seen):
                    seen.add(normalize_text(u["text"]))
                    ja_chat.append(u["text"])
    ja_first = len(texts)
    for t in ja_chat:
        add(t, "ja_chat")
    cross = []
    oasst = json.load(open(SHARED / "oasst2_ja_edited" / "edited_data_flat.json", encoding="utf-8"))
    for m in oasst.values():
        e = add(m["text"], "oasst_en")
        j = add(m["text_ja"], "oasst_ja_mt")
        cross.append((e, j))
        if normalize_text(m["text_ja_audited"]) != normalize_text(m["text_ja"]):
            cross.append((e, add(m["text_ja_audited"], "oasst_ja_audited", family[j])))
    ja_all = list(range(ja_first, len(texts)))
    ja_all = [i for i in ja_all if category[i] in ("ja_chat", "oasst_ja_mt") and len(texts[i]) >= 6]
    for i in rng.sample(ja_all, min(ja_variants, len(ja_all))):
        v = ja_variant(texts[i], rng)
        if v is not None:
            add(v, "ja_variant", family[i])
    return texts, np.asarray(family), category, cross


def cached_vectors(client: EmbeddingClient, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    RESULTS.mkdir(parents=True, exist_ok=True)
    options = f"{client.model_name}|{client.lower_all_caps}|{client.max_unknown_share}|{client.model_scripts()}"
    key = hashlib.blake2b(("\x1f".join(texts) + options).encode(), digest_size=8).hexdigest()
    path = RESULTS / f"calibrate-{client.backend}-{key}.npz"
    if path.exists():
        z = np.load(path)
        return z["X"], z["rep"]
    X = client.encode(texts)
    rep = client.representable(texts)
    np.savez(path, X=X, rep=rep)
    return X, rep


def merged_table(texts: list[str], langs: list[str]) -> pa.Table:
    n = len(texts)
    # one source per text: records of one source with the same normalised prompt are one group
    cols = {"all_prompt_id": [f"s{i}:{i}" for i in range(n)], "source": [f"s{i}" for i in range(n)],
            "source_prompt_id": [str(i) for i in range(n)], "kind": ["sft"] * n, "prompt": texts,
            "prompt_norm_hash": [text_hash(normalize_text(t)) for t in texts], "language": langs}
    return pa.table(cols)


def removal_scores(labels: np.ndarray, family: np.ndarray) -> tuple[int, float, float]:
    """(removals, precision, recall) of clusters `labels` against the true `family` of each text."""
    n = len(labels)
    removals = n - len(np.unique(labels))
    right = n - len(set(zip(labels.tolist(), family.tolist())))
    ideal = n - len(np.unique(family))
    return removals, right / max(removals, 1), right / max(ideal, 1)


def evaluate(labels: np.ndarray, family: np.ndarray, category: list[str], cross, langs: list[str]) -> dict:
    """Removal precision / recall over clusters (`labels` per text) against the families, overall
    and among the Japanese / English texts."""
    out = dict(zip(("removals", "precision", "recall"), removal_scores(labels, family)))
    for lang in ("ja", "en"):
        idx = np.array([i for i, x in enumerate(langs) if x == lang], np.int64)
        out[lang] = removal_scores(labels[idx], family[idx])
    # pair recall per planted category: the variant is in its original's cluster
    first = {}
    for i, f in enumerate(family.tolist()):
        first.setdefault(f, i)
    for cat in ("en_variant", "ja_variant", "oasst_ja_audited"):
        idx = [i for i, c in enumerate(category) if c == cat]
        out[cat] = (sum(labels[i] == labels[first[family[i]]] for i in idx), len(idx))
    # wrong removals by language of the removed record: clusters with > 1 family
    out["cross_merged"] = sum(labels[e] == labels[j] for e, j in cross)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="use_multilingual")
    ap.add_argument("--thresholds", type=float, nargs="*",
                    default=[0.75, 0.8, 0.85, 0.88, 0.9, 0.92, 0.94, 0.96])
    ap.add_argument("--show", type=float, default=None, help="list the wrong merges at this threshold")
    ap.add_argument("--no-guard", action="store_true", help="also a run without the unrepresentable guard")
    args = ap.parse_args()

    texts, family, category, cross = material()
    langs = [language(t) for t in texts]
    client = EmbeddingClient(backend=args.backend)
    X, rep = cached_vectors(client, texts)
    cats = sorted(set(category))
    print(f"{client.model_name} ({X.shape[1]}-d): {len(texts):,} texts, {len(np.unique(family)):,} families; "
          + ", ".join(f"{c} {category.count(c)}" for c in cats))
    print(f"languages: {dict(sorted(((l, langs.count(l)) for l in set(langs)), key=lambda x: -x[1])[:8])}; "
          f"unrepresentable: {int((~rep).sum())} "
          f"(ja {sum(1 for r, l in zip(rep, langs) if not r and l == 'ja')})")
    sims = np.array([X[e] @ X[j] for e, j in cross])
    print(f"cross-language pairs (English message vs Japanese translation): {len(cross)}, cosine "
          f"min {sims.min():.3f} / median {np.median(sims):.3f} / max {sims.max():.3f}")

    merged = merged_table(texts, langs)
    emb = embeddings_table(merged["all_prompt_id"].to_pylist(), X, rep, client.model_name)
    runs = [("language rule + guard", {}, emb)]
    if args.no_guard:
        runs.append(("no guard", {}, embeddings_table(merged["all_prompt_id"].to_pylist(), X, None, client.model_name)))
    runs.append(("no language rule", {"cross_language": True}, emb))
    rows = []
    for t in args.thresholds:
        for name, extra, e in runs:
            if name != "language rule + guard" and t != default_threshold(client.model_name):
                continue
            res = cluster_prompts(merged, e, {}, {}, DedupConfig(method=FaissGraphDedup(threshold=t), **extra))
            lab = np.asarray(res.clusters["cluster_id"].to_numpy())
            r = evaluate(lab, family, category, cross, langs)
            cross_ge = int((sims >= t).sum())
            rows.append([f"{t:.2f}", name, f"{r['removals']:,}", f"{r['precision']:.3f}", f"{r['recall']:.3f}",
                         f"{r['ja'][1]:.3f} / {r['ja'][2]:.3f}", f"{r['en'][1]:.3f} / {r['en'][2]:.3f}",
                         "{}/{}".format(*r["oasst_ja_audited"]), "{}/{}".format(*r["ja_variant"]),
                         "{}/{}".format(*r["en_variant"]), f"{cross_ge}/{len(cross)}", str(r["cross_merged"])])
            if args.show is not None and abs(t - args.show) < 1e-9 and not extra:
                wrong(lab, family, texts, langs)
    print()
    print(table(["threshold", "run", "removals", "precision", "recall", "ja P / R", "en P / R",
                 "ja paraphrase (MT vs audited)",
                 "ja planted", "en planted", "cross-lang cos >= t", "cross-lang merged"], rows))


def wrong(labels, family, texts, langs, k: int = 40) -> None:
    by = {}
    for i, lab in enumerate(labels.tolist()):
        by.setdefault(lab, []).append(i)
    shown = 0
    print("\nwrong merges (clusters holding several families):")
    for members in sorted(by.values(), key=len, reverse=True):
        fams = {family[i] for i in members}
        if len(fams) > 1 and shown < k:
            shown += 1
            one = {}
            for i in members:
                one.setdefault(family[i], i)
            print("  " + " || ".join(f"[{langs[i]}] {texts[i][:70]!r}" for i in list(one.values())[:4]))


if __name__ == "__main__":
    main()
