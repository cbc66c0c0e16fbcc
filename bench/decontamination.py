"""Decontamination (issue 22): recall and precision of the n-gram rules on planted cases, characters
vs a real segmenter for Japanese and Chinese, and the matcher's speed.

    PYTHONPATH=/tmp/segdeps:. python -m bench.decontamination [--items 60] [--rows 200000] [--skip-speed]

(`/tmp/segdeps`: `python -m pip install --target /tmp/segdeps fugashi unidic-lite jieba`, a throwaway
target; without it part 2 prints why it is skipped.)

1. Planted cases. Items: a seeded sample of `--items` per English benchmark (GSM8K test, MATH-500,
   IFEval, MT-Bench) and every Japanese / Chinese item (tests/data/benchmarks ja_qa / zh_qa, 6 each,
   and bench/data decon_ja / decon_zh, 24 each, hand-written: bench/data/SOURCE.md). Each item gives
   one training row per case type: `exact`; `one_token_changed` (a number, else a capitalised name,
   else a word; for ja/zh a numeral, else one character, in the middle of the text);
   `three_tokens_changed` (three such changes anywhere: harder, it separates the settings); `embedded`
   (a real prompt of the same language before it and another after it: oasst_en / alpaca seed tasks,
   oasst2_ja_edited, oasst2 zh messages); `reformatted` (en: upper case, doubled spaces, line breaks,
   full-width digits; ja/zh: full-width digits and letters, a line break after every 、。，, ideographic
   spaces); `ja_spaced` (Japanese with a space at every change of script: kanji / hiragana / katakana /
   other — sometimes inside a word, as in 食 べます). A case counts as found when the rule fires
   for its own item. Negatives: real training rows (en: self_instruct seed tasks, alpaca seed tasks,
   GSM8K train — a known near-duplicate family of GSM8K test, shown apart; ja: oasst2_ja_edited,
   RealPersonaChat user turns; zh: oasst2 zh messages) and near misses (same template, other content:
   bench/data/decon_nearmiss.jsonl, hand-written, against the template items of decon_templates /
   decon_ja / decon_zh; IFEval: an item's instruction sentences that other IFEval items share, on
   the topic of a real self_instruct task). A negative is a false positive when the rule fires for
   any item. The index holds every bundled benchmark plus the ja/zh and template sets (as a user's
   registry would), n=8, cjk_n in {6, 8, 10, 13}; threshold 0.5 for coverage / tulu.
2. Tokens for ja / zh: the core's characters at n in {4, 6, 8, 10, 13} vs fugashi (unidic-lite)
   surfaces / jieba.lcut words at n in {3, 4, 5, 8}, hashed the same way (the bench swaps
   `ngrams.tokenize`; the core is unchanged), on the ja (zh) cases and negatives with an index of the
   ja (zh) items: recall and false positives at 0.5, and recall at the threshold just above the
   best-scoring negative (the same precision: no false positive), that negative being any but the
   one-topic-word near misses (the same sentence with one topic word changed, reported apart: to an
   n-gram rule it is a one-token change).
3. Speed: the index of every bundled benchmark checks `--rows` GSM8K-train-shaped rows (prompt =
   question, response = worked answer, ~500 characters together, real texts repeated with a varying
   suffix) in batches of 5,000 (the asset's batch_rows): rows/s of `Matcher.match` on prompts only
   and on prompts + responses, and the projection to 1M rows.
Numbers come from one run; ratios and rates, no wall-clock assertions.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
import random
import re
import time

import numpy as np
import pyarrow as pa

from posttrain_assets.decontamination import ngrams
from posttrain_assets.decontamination.benchmarks import BUNDLED, load_all, load_benchmarks
from posttrain_assets.decontamination.ngrams import Matcher, fired, index_rows

from .common import SHARED, table

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "bench" / "data"
SAMPLE = REPO / "posttrain_assets" / "sample_data"
TEST_REGISTRY = REPO / "tests" / "data" / "benchmarks" / "registry.yaml"
EN_BENCHMARKS = ("gsm8k_test", "math500", "ifeval", "mt_bench_en")
RULES = (("coverage", 0.5), ("tulu", 0.5), ("any_ngram", 0.0))
CASES = ("exact", "one_token_changed", "three_tokens_changed", "embedded", "reformatted", "ja_spaced")
CJK_NS = (6, 8, 10, 13)
KANJI_NUM = "一二三四五六七八九十百千"
NAMES = ["Priya", "Mateo", "Keiko", "Olusegun", "Ingrid", "Tariq"]


# ------------------------------------------------------------------------------------ real texts
def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.open(encoding="utf-8") if line.strip()]


def _oasst_messages(path: Path, lang: str) -> list[str]:
    out = []
    for tree in _jsonl(path):
        stack = [tree["prompt"]]
        while stack:
            m = stack.pop()
            stack += m.get("replies") or []
            if m.get("lang") == lang and m.get("text"):
                out.append(m["text"])
    return out


def real_texts() -> dict[str, dict[str, list[str]]]:
    """language -> named real training texts (prompts and replies)."""
    si = _jsonl(SAMPLE / "self_instruct" / "seed_tasks.jsonl")
    alpaca = json.loads((SAMPLE / "alpaca_seed_tasks" / "seed_tasks_alpaca_40.json").read_text())
    gsm = SHARED / "gsm8k" / "train.jsonl"
    gsm_rows = _jsonl(gsm if gsm.exists() else SAMPLE / "gsm8k" / "train_300.jsonl")
    ja_flat = json.loads((SAMPLE / "oasst2_ja_edited" / "edited_data_flat.json").read_text())
    rpc = [t for d in _jsonl(SAMPLE / "turns_realpersonachat" / "gpt4_user_turns_30.jsonl") for t in d["turns"]]
    zh_path = SHARED / "oasst2_openpaws_filtered" / "oasst2_filtered.jsonl"
    zh = _oasst_messages(zh_path if zh_path.exists() else SAMPLE / "oasst2_labelled" / "oasst2_filtered_60.jsonl", "zh")
    return {
        "en": {"self_instruct": [(t["instruction"] + "\n" + t["instances"][0]["input"]).strip() for t in si],
               "alpaca_seed_tasks": [(t["instruction"] + "\n" + (t.get("input") or "")).strip() for t in alpaca],
               "gsm8k_train": [r["question"] for r in gsm_rows],
               "oasst_en": _oasst_messages(SAMPLE / "oasst_en" / "en_100_tree_40.jsonl", "en")},
        "ja": {"oasst2_ja_edited": [v["text_ja"] for v in ja_flat.values() if v.get("text_ja")],
               "realpersonachat": [t for t in rpc if len(t) >= 8]},
        "zh": {"oasst2_zh": zh},
    }


# ------------------------------------------------------------------------------------ planted cases
def fullwidth(s: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in s)


def change_one(text: str, lang: str, rng: random.Random, spread: bool = False) -> str:
    """One token changed: a number, else a name / a character, chosen near the middle (`spread`:
    anywhere, and for ja/zh a character rather than a numeral half of the time)."""
    def pick(spans):
        if spread:
            return rng.choice(spans)
        mid = len(text) / 2
        spans = sorted(spans, key=lambda m: abs(m.start() - mid))[:3]
        return rng.choice(spans)
    if lang == "en":
        nums = list(re.finditer(r"\d+", text))
        if nums:
            m = pick(nums)
            return text[:m.start()] + str(int(m.group()) + 7) + text[m.end():]
        names = [m for m in re.finditer(r"(?<=[a-z,;] )[A-Z][a-z]{2,}", text)]
        if names:
            m = pick(names)
            return text[:m.start()] + rng.choice([n for n in NAMES if n != m.group()]) + text[m.end():]
        words = list(re.finditer(r"\b[a-z]{4,}\b", text))
        if not words:
            return text + " 7"
        m = pick(words)
        return text[:m.start()] + "zebra" + text[m.end():]
    nums = list(re.finditer(f"[0-9{KANJI_NUM}]", text))
    if nums and not (spread and rng.random() < 0.5):
        m = pick(nums)
        new = rng.choice([c for c in KANJI_NUM[:9] if c != m.group()]) if m.group() in KANJI_NUM else \
            str((int(m.group()) + 3) % 10)
        return text[:m.start()] + new + text[m.end():]
    chars = list(re.finditer(f"[{ngrams.CJK_CHARS}]", text))
    m = pick(chars)
    return text[:m.start()] + ("猫" if m.group() != "猫" else "山") + text[m.end():]


def reformat(text: str, lang: str, rng: random.Random) -> str:
    if lang == "en":
        words = text.split()
        out = words[0] if words else ""
        for i, w in enumerate(words[1:], 1):
            out += ("\n" if i % 6 == 0 else rng.choice(["  ", " ", "   "])) + w
        return re.sub(r"\d", lambda m: fullwidth(m.group()), out.upper())
    return "\u3000" + re.sub("([、。，])", "\\1\n", fullwidth(text)).replace("\n", "\n\u3000")


def _script(c: str) -> str:
    o = ord(c)
    if 0x3040 <= o <= 0x309F:
        return "hira"
    if 0x30A0 <= o <= 0x30FF:
        return "kata"
    if 0x3400 <= o <= 0x9FFF:
        return "kanji"
    return "other"


def space_by_script(text: str) -> str:
    out = ""
    for i, c in enumerate(text):
        if i and _script(c) != _script(text[i - 1]) and not c.isspace() and not text[i - 1].isspace():
            out += " "
        out += c
    return out


def planted(items: list[dict], context: dict[str, list[str]], seed: int) -> list[dict]:
    """One row per (item, case type): {case, language, benchmark, item_id, text}."""
    rng = random.Random(seed)
    rows = []
    for it in items:
        lang, text = it["language"], it["match_text"]
        lang = "en" if lang not in ("ja", "zh") else lang
        ctx = context[lang]
        three = text
        for _ in range(3):
            three = change_one(three, lang, rng, spread=True)
        cases = {"exact": text, "one_token_changed": change_one(text, lang, rng), "three_tokens_changed": three,
                 "embedded": rng.choice(ctx) + "\n\n" + text + "\n\n" + rng.choice(ctx),
                 "reformatted": reformat(text, lang, rng)}
        if lang == "ja":
            cases["ja_spaced"] = space_by_script(text)
        for case, t in cases.items():
            rows.append({"case": case, "language": lang, "benchmark": it["benchmark"], "item_id": it["item_id"], "text": t})
    return rows


def ifeval_near_misses(items: list[dict], topics: list[str], limit: int, seed: int) -> list[str]:
    """An IFEval item's instruction sentences that another IFEval item shares (its template), on the
    topic of a real task: 'same instruction, other topic'."""
    rng = random.Random(seed)
    split = lambda t: [s for s in re.split(r"(?<=[.!?])\s+|\n+", t) if s.strip()]  # noqa: E731
    grams = lambda s: {" ".join(w[i:i + 8]) for w in [ngrams.tokenize(s)] for i in range(len(w) - 7)}  # noqa: E731
    owners: dict[str, set] = {}
    for it in items:
        for g in grams(it["match_text"]):
            owners.setdefault(g, set()).add(it["item_id"])
    out = []
    for it in rng.sample(items, len(items)):
        sents = split(it["match_text"])
        shared = [s for s in sents if (g := grams(s)) and all(len(owners[x]) > 1 for x in g)]
        if shared and len(shared) < len(sents):
            out.append(rng.choice(topics) + " " + " ".join(shared))
        if len(out) == limit:
            break
    return out


# ------------------------------------------------------------------------------------ scoring
def score(matches: list[list], targets: list[tuple | None]) -> list[dict]:
    """Per row: for each rule, whether it fired (for the target item when there is one, else for any
    item) and the best coverage (of the target / of any item)."""
    out = []
    for ms, target in zip(matches, targets):
        ms = [m for m in ms if target is None or (m.benchmark, m.item_id) == target]
        out.append({**{rule: any(fired(m, rule, th) for m in ms) for rule, th in RULES},
                    "best": max((m.coverage for m in ms), default=0.0),
                    "best_tulu": max((m.tulu_coverage for m in ms), default=0.0)})
    return out


def rate(flags: list[bool]) -> str:
    return f"{sum(flags)}/{len(flags)} ({100 * sum(flags) / max(1, len(flags)):.0f}%)" if flags else "-"


def evaluate(matcher: Matcher, positives: list[dict], negatives: list[dict]) -> tuple[dict, dict]:
    """-> ({(case, lang): scores}, {(set, lang): scores})."""
    pos_scores = score(matcher.match([r["text"] for r in positives]), [(r["benchmark"], r["item_id"]) for r in positives])
    neg_scores = score(matcher.match([r["text"] for r in negatives]), [None] * len(negatives))
    pos, neg = {}, {}
    for r, s in zip(positives, pos_scores):
        pos.setdefault((r["case"], r["language"]), []).append(s)
    for r, s in zip(negatives, neg_scores):
        neg.setdefault((r["set"], r["language"]), []).append(s)
    return pos, neg


# ------------------------------------------------------------------------------------ segmenters
def segmenters() -> tuple[dict, str]:
    """language -> word tokenizer (normalised text in, word surfaces out, punctuation dropped), or why not."""
    try:
        import fugashi
        import jieba
    except ImportError as exc:
        return {}, f"{exc.name} not importable (pip install --target /tmp/segdeps fugashi unidic-lite jieba; PYTHONPATH=/tmp/segdeps:.)"
    import logging

    jieba.setLogLevel(logging.WARNING)
    tagger = fugashi.Tagger()
    word = re.compile(r"\w")
    return {"ja": lambda t: [w.surface for w in tagger(ngrams.normalize(t)) if word.search(w.surface)],
            "zh": lambda t: [w for w in jieba.lcut(ngrams.normalize(t)) if word.search(w)]}, ""


def compare_tokens(items: pa.Table, positives: list[dict], negatives: list[dict], lang: str, seg) -> list[list]:
    keep = [i for i, x in enumerate(items["language"].to_pylist()) if x == lang]
    sub = items.take(keep)
    pos = [r for r in positives if r["language"] == lang]
    neg = [r for r in negatives if r["language"] == lang]
    rows = []
    configs = [("characters (core)", n, None) for n in (4, 6, 8, 10, 13)] + \
              [("fugashi words" if lang == "ja" else "jieba words", n, seg) for n in (3, 4, 5, 8)]
    original = ngrams.tokenize
    for name, n, tok in configs:
        try:
            if tok is not None:
                ngrams.tokenize = tok
            idx, _ = index_rows(sub, n, n)
            p, q = evaluate(Matcher(idx), pos, neg)
        finally:
            ngrams.tokenize = original
        ps = [s for v in p.values() for s in v]
        qs = [s for v in q.values() for s in v]
        one_word = [s for (name, _), v in q.items() if "one topic word" in name for s in v]
        top = max((s["best"] for (name, _), v in q.items() if "one topic word" not in name for s in v), default=0.0)
        by_case = " ".join(f"{c[:5]}={sum(s['coverage'] for s in v)}/{len(v)}" for (c, _), v in sorted(p.items(), key=lambda kv: CASES.index(kv[0][0])))
        rows.append([name, n, rate([s["coverage"] for s in ps]), rate([s["coverage"] for s in qs]), f"{top:.2f}",
                     rate([s["best"] > top for s in ps]), rate([s["any_ngram"] for s in ps]), rate([s["any_ngram"] for s in qs]),
                     rate([s["coverage"] for s in one_word]), by_case])
    return rows


# ------------------------------------------------------------------------------------ speed
def speed(rows: int, batch: int = 5000) -> list[list]:
    specs = load_benchmarks(BUNDLED)
    items = load_all(specs)
    t0 = time.perf_counter()
    idx, stats = index_rows(items, 8, 8, {s.key for s in specs if s.answer_match})
    m = Matcher(idx)
    t_index = time.perf_counter() - t0
    gsm = SHARED / "gsm8k" / "train.jsonl"
    base = _jsonl(gsm if gsm.exists() else SAMPLE / "gsm8k" / "train_300.jsonl")
    prompts = [f"{base[i % len(base)]['question']} (variant {i // len(base)})" for i in range(rows)]
    responses = [f"{base[i % len(base)]['answer']} [{i}]" for i in range(rows)]
    chars = sum(map(len, prompts[:len(base)])) + sum(map(len, responses[:len(base)]))
    out = [["index: every bundled benchmark", f"{items.num_rows} items, {idx.num_rows} index rows",
            f"{t_index:.1f} s", "", ""]]
    for label, with_resp in (("prompts only", False), ("prompts + responses", True)):
        flagged = 0
        t0 = time.perf_counter()
        for b in range(0, rows, batch):
            res = m.match(prompts[b:b + batch], responses[b:b + batch] if with_resp else None)
            flagged += sum(1 for ms in res if any(fired(x, "coverage", 0.5) for x in ms))
        dt = time.perf_counter() - t0
        out.append([f"Matcher.match, {label}", f"{rows:,} rows (~{chars // min(len(base), rows)} chars/row)",
                    f"{dt:.1f} s", f"{rows / dt:,.0f}", f"{1_000_000 / (rows / dt) / 60:.1f} min (flagged {flagged:,})"])
    return out


# ------------------------------------------------------------------------------------ main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=60, help="items sampled per English benchmark")
    ap.add_argument("--rows", type=int, default=200_000, help="training rows for the speed part")
    ap.add_argument("--gsm8k-negatives", type=int, default=2000, help="GSM8K train questions used as negatives")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--only-speed", action="store_true")
    args = ap.parse_args()

    if not args.only_speed:
        specs = load_benchmarks(BUNDLED) + load_benchmarks(TEST_REGISTRY) + load_benchmarks(DATA / "registry.yaml")
        items = load_all(specs)
        all_items = items.to_pylist()
        rng = random.Random(args.seed)
        sample = []
        for b in EN_BENCHMARKS:
            rows = [r for r in all_items if r["benchmark"] == b]
            sample += rng.sample(rows, min(args.items, len(rows)))
        sample += [r for r in all_items if r["language"] in ("ja", "zh")]
        texts = real_texts()
        context = {"en": texts["en"]["oasst_en"] + texts["en"]["alpaca_seed_tasks"],
                   "ja": texts["ja"]["oasst2_ja_edited"], "zh": texts["zh"]["oasst2_zh"] or [r["answer"] for r in all_items if r["language"] == "zh"]}
        positives = planted(sample, context, args.seed)
        negatives = []
        for lang, sets in texts.items():
            for name, ts in sets.items():
                if name == "oasst_en":
                    continue
                if name == "gsm8k_train":
                    ts = random.Random(args.seed).sample(ts, min(args.gsm8k_negatives, len(ts)))
                negatives += [{"set": name, "language": lang, "text": t} for t in ts]
        for r in _jsonl(DATA / "decon_nearmiss.jsonl"):
            kind = "template" if r["kind"] == "template" else "one topic word"
            negatives.append({"set": f"near_miss ({kind})", "language": r["language"], "text": r["text"]})
        ife = [r for r in all_items if r["benchmark"] == "ifeval"]
        for t in ifeval_near_misses(ife, texts["en"]["self_instruct"], 60, args.seed):
            negatives.append({"set": "near_miss (IFEval instruction)", "language": "en", "text": t})

        print(f"planted: {len(positives)} rows from {len(sample)} items; negatives: {len(negatives)} rows\n")
        results = {}
        for cjk_n in CJK_NS:
            idx, stats = index_rows(items, 8, cjk_n, [])
            results[cjk_n] = evaluate(Matcher(idx), positives, negatives)
            if cjk_n == 8:
                short = {b: len(v.get("question", [])) for b, v in stats["too_short"].items()}
                print(f"items too short for one n-gram (n=8, cjk_n=8; never matched): {short}\n")

        pos8, neg8 = results[8]
        print("## 1a. Recall (planted) and false-positive rate (negatives), n=8, cjk_n=8, threshold 0.5\n")
        head = ["case", "lang", "rows", "coverage", "tulu", "any_ngram"]
        body = [[c, lang, len(v)] + [rate([s[r] for s in v]) for r, _ in RULES]
                for (c, lang), v in sorted(pos8.items(), key=lambda kv: (CASES.index(kv[0][0]), kv[0][1]))]
        body += [[f"negatives: {name}", lang, len(v)] + [rate([s[r] for s in v]) for r, _ in RULES]
                 for (name, lang), v in neg8.items()]
        tp = {r: sum(s[r] for v in pos8.values() for s in v) for r, _ in RULES}
        fp = {r: sum(s[r] for (name, _), v in neg8.items() if name != "gsm8k_train" for s in v) for r, _ in RULES}
        body.append(["precision (all planted vs negatives, GSM8K train left out)", "", ""] +
                    [f"{tp[r] / max(1, tp[r] + fp[r]):.3f} ({fp[r]} FP)" for r, _ in RULES])
        print(table(head, body) + "\n")

        print("## 1b. Japanese / Chinese by cjk_n (n=8 for the rest): coverage / tulu / any_ngram\n")
        head = ["case", "lang", "rows"] + [f"cjk_n={k}" for k in CJK_NS]
        keys = [k for k in sorted(pos8, key=lambda k: (CASES.index(k[0]), k[1])) if k[1] != "en"]
        body = [[c, lang, len(pos8[(c, lang)])] + [" / ".join(f"{100 * np.mean([s[r] for s in results[k][0][(c, lang)]]):.0f}%"
                                                              for r, _ in RULES) for k in CJK_NS] for c, lang in keys]
        body += [[f"negatives: {name}", lang, len(v)] + [" / ".join(f"{sum(s[r] for s in results[k][1][(name, lang)])} FP"
                                                                    for r, _ in RULES) for k in CJK_NS]
                 for (name, lang), v in neg8.items() if lang != "en" or name == "near_miss (template)"]
        print(table(head, body) + "\n")

        print("## 2. Japanese / Chinese tokens: characters vs a segmenter (coverage rule unless said)\n")
        segs, why = segmenters()
        if not segs:
            print(f"skipped: {why}\n")
        else:
            head = ["tokens", "n", "recall @0.5", "FP @0.5", "best negative*", "recall, 0 FP*", "any_ngram recall",
                    "any_ngram FP",
                    "one-topic-word near miss fired", "found @0.5 per case"]
            for lang in ("ja", "zh"):
                print(f"### {lang}\n")
                print(table(head, compare_tokens(items, positives, negatives, lang, segs[lang])) + "\n")
            print("* without the one-topic-word near miss (the same sentence with one topic word changed scores as\n"
                  "  a one-token change does: no n-gram rule can tell them apart)\n")

    if not args.skip_speed:
        print("## 3. Speed (this machine, one process, batches of 5,000)\n")
        print(table(["what", "size", "time", "rows/s", "1M rows (projected)"], speed(args.rows)) + "\n")


if __name__ == "__main__":
    main()
