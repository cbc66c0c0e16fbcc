"""The CPU attribute model's choice of text vectors: a ridge head per attribute (steerlm/head.py) over
(a) the default multilingual embedder (USE v3) and (b) the embedded SmolLM2-135M's mean-pooled last
hidden states (first 256 tokens), on HelpSteer (500 rows) + HelpSteer2 (100) and the bundled OASST trees with human labels;
train / validation split by prompt or tree (seeded); per attribute validation MAE and Spearman next to
predicting the training mean. l2 picked by 5-fold CV on the training rows only.

    .venv/bin/python -m bench.attribute_head [--val 0.2] [--max-chars 2000]

Writes bench/results/attribute_head-<vectors>.json."""

import argparse
import json
import time

import numpy as np

from .common import REPO, RESULTS, SHARED

L2_GRID = (1.0, 10.0, 100.0, 1000.0, 10000.0)


def rows() -> list[dict]:
    """{group, text, labels} for every labelled reply / scored response."""
    from posttrain_assets.steerlm.attributes import helpsteer_labels, oasst_labels

    out = []
    for name, path in (("helpsteer", SHARED / "helpsteer_sample" / "helpsteer_train_500.jsonl"),
                       ("helpsteer2", SHARED / "helpsteer2_sample" / "helpsteer2_train_head100.jsonl")):
        for line in path.read_text().splitlines():
            r = json.loads(line)
            out.append({"source": name, "group": f"{name}:{r['prompt']}", "text": f"{r['prompt']}\n\n{r['response']}",
                        "labels": helpsteer_labels(r)})

    def walk(msg, context, tree):
        text = context + ("\n\n" if context else "") + msg["text"]
        if msg.get("role") == "assistant":
            labels = oasst_labels(msg.get("labels"))
            if labels:
                out.append({"source": "oasst2_labelled", "group": f"oasst:{tree}", "text": text, "labels": labels})
        for child in msg.get("replies") or []:
            walk(child, text, tree)

    for line in (REPO / "posttrain_assets/sample_data/oasst2_labelled/oasst2_filtered_60.jsonl").read_text().splitlines():
        tree = json.loads(line)
        walk(tree["prompt"], "", tree["message_tree_id"])
    return out


def use_vectors(texts):
    from resources.embeddings import EmbeddingClient

    return EmbeddingClient(batch_size=32).encode(texts)


def cached(name: str, texts, embed):
    """Vectors of `texts` by `embed`, cached under bench/results/ (keyed by method and texts)."""
    import hashlib

    RESULTS.mkdir(parents=True, exist_ok=True)
    key = hashlib.blake2b("\x1f".join(texts).encode(), digest_size=8).hexdigest()
    path = RESULTS / f"attribute-{name}-{key}.npy"
    if path.exists():
        return np.load(path), None
    t0 = time.perf_counter()
    X = np.asarray(embed(texts), dtype=np.float64)
    np.save(path, X)
    return X, time.perf_counter() - t0


def llm_vectors(texts, max_tokens=256):
    import torch
    from transformers import AutoModel, AutoTokenizer

    from resources.llm import embedded_model_dir

    folder = embedded_model_dir()
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder, torch_dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), 8):
            if i % 80 == 0:
                print(f"  smollm2 hidden states: {i}/{len(texts)}", flush=True)
            enc = tok(texts[i:i + 8], return_tensors="pt", padding=True, truncation=True, max_length=max_tokens)
            h = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            out.append(((h * mask).sum(1) / mask.sum(1)).numpy())
    return np.concatenate(out)


def cv_l2(X, Y, seed=0):
    from posttrain_assets.steerlm.head import evaluate, fit

    folds = np.random.default_rng(seed).integers(0, 5, len(X))
    best = None
    for l2 in L2_GRID:
        maes = []
        for k in range(5):
            head = fit(X[folds != k], Y[folds != k], l2)
            ev = evaluate(head, X[folds == k], Y[folds == k])
            maes += [v["mae"] for v in ev.values() if v["mae"] is not None]
        score = float(np.mean(maes))
        if best is None or score < best[1]:
            best = (l2, score)
    return best[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--val", type=float, default=0.2)
    ap.add_argument("--max-chars", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vectors", default="use_multilingual,smollm2_mean_pooled",
                    help="comma-separated: use_multilingual, smollm2_mean_pooled")
    args = ap.parse_args()

    from posttrain_assets.steerlm.attributes import label_vector
    from posttrain_assets.steerlm.head import evaluate, fit, split_groups

    data = rows()
    texts = [r["text"][-args.max_chars:] for r in data]
    Y = np.array([[np.nan if v is None else v for v in label_vector(r["labels"])] for r in data], dtype=float)
    split = np.array(split_groups([r["group"] for r in data], args.val, args.seed))
    result = {"rows": len(data), "train": int((split == "train").sum()), "val": int((split == "val").sum()),
              "by_source": {s: sum(1 for r in data if r["source"] == s) for s in {r["source"] for r in data}},
              "vectors": {}}
    methods = {"use_multilingual": use_vectors, "smollm2_mean_pooled": llm_vectors}
    for name in args.vectors.split(","):
        embed = methods[name]
        print(f"{name}: embedding {len(texts)} texts", flush=True)
        X, embed_s = cached(name, texts, embed)
        tr, va = split == "train", split == "val"
        l2 = cv_l2(X[tr], Y[tr], args.seed)
        t0 = time.perf_counter()
        head = fit(X[tr], Y[tr], l2)
        fit_s = time.perf_counter() - t0
        result["vectors"][name] = {"dim": X.shape[1], "l2": l2,
                                   "embed_s": None if embed_s is None else round(embed_s, 1),
                                   "rows_per_s": None if embed_s is None else round(len(texts) / embed_s, 1),
                                   "fit_s": round(fit_s, 3),
                                   "val": evaluate(head, X[va], Y[va])}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"attribute_head-{'+'.join(result['vectors'])}.json").write_text(json.dumps(result, indent=2))
    print(f"{result['rows']} rows ({result['by_source']}); train {result['train']}, val {result['val']} (split by prompt / tree)")
    for name, v in result["vectors"].items():
        print(f"\n{name}: dim {v['dim']}, l2 {v['l2']}, embedding {v['rows_per_s']} rows/s, fit {v['fit_s']} s")
        print("| attribute | val n | MAE | mean-baseline MAE | Spearman |")
        print("|---|---|---|---|---|")
        for a, m in v["val"].items():
            print(f"| {a} | {m['n']} | {m['mae']} | {m['baseline_mae']} | {m['spearman']} |")


if __name__ == "__main__":
    main()
