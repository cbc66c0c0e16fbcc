"""The CPU attribute head (issue 11, in progress) on real rows embedded with the default embedder:
the masked loss trains an attribute only on the rows that have it, the split keeps every group on
one side, predictions load back as 0-4 labels, and on real HelpSteer rows the head is closer to the
human helpfulness score than the training mean (validation rows of other prompts)."""

import json

import numpy as np
import pytest

from posttrain_assets.steerlm.attributes import ATTRIBUTES, helpsteer_labels, label_vector, oasst_labels
from posttrain_assets.steerlm.head import evaluate, fit, split_groups
from resources.embeddings import EmbeddingClient

from .conftest import SHARED_DATA, needs_shared
from .helpers import SAMPLE


def _oasst_rows():
    out = []

    def walk(msg, context, tree):
        text = context + "\n\n" + msg["text"] if context else msg["text"]
        if msg.get("role") == "assistant" and oasst_labels(msg.get("labels")):
            out.append((tree, text[-600:], oasst_labels(msg["labels"])))
        for child in msg.get("replies") or []:
            walk(child, text, tree)

    for line in (SAMPLE / "oasst2_labelled" / "oasst2_filtered_60.jsonl").read_text().splitlines():
        t = json.loads(line)
        walk(t["prompt"], "", t["message_tree_id"])
    return out


def _matrix(labels):
    return np.array([[np.nan if v is None else v for v in label_vector(lab)] for lab in labels], dtype=float)


def test_split_keeps_groups_whole_and_is_seeded():
    groups = [f"tree{i // 3}" for i in range(300)]
    split = split_groups(groups, 0.2, seed=7)
    by_group = {}
    for g, s in zip(groups, split):
        by_group.setdefault(g, set()).add(s)
    assert all(len(s) == 1 for s in by_group.values())
    assert split == split_groups(groups, 0.2, seed=7) and split != split_groups(groups, 0.2, seed=8)
    assert 0 < split.count("val") < 300
    with pytest.raises(ValueError, match="val_fraction"):
        split_groups(groups, 1.0)


def test_masked_heads_train_only_on_rows_with_the_attribute():
    rows = _oasst_rows()
    assert len(rows) == 64  # labelled assistant replies in the 60 bundled trees
    X = EmbeddingClient().encode([t for _, t, _ in rows])
    Y = _matrix([lab for _, _, lab in rows])
    # one row keeps only 4 labels: the HelpSteer heads have no rows at all, the OASST heads all of them
    head = fit(X, Y, l2=10.0)
    assert {a: head.train_rows[a] for a in ATTRIBUTES} == {**{a: len(rows) for a in ATTRIBUTES[:4]},
                                                           **{a: 0 for a in ATTRIBUTES[4:]}}
    assert all(head.weights[a] is None for a in ATTRIBUTES[4:])
    labels = head.predict_labels(X[:3])
    assert [sorted(lab) for lab in labels] == [sorted(ATTRIBUTES[:4])] * 3
    assert all(0 <= v <= 4 and isinstance(v, int) for lab in labels for v in lab.values())
    # humor missing on half the rows: its head trains on the other half only
    Y2 = Y.copy()
    Y2[::2, 2] = np.nan
    assert fit(X, Y2, l2=10.0).train_rows["humor"] == len(rows) - (len(rows) + 1) // 2
    ev = evaluate(head, X, Y)
    assert ev["helpfulness"] == {"n": 0, "mae": None, "baseline_mae": None, "spearman": None}


@needs_shared
def test_helpsteer_helpfulness_head_beats_the_mean():
    lines = (SHARED_DATA / "helpsteer_sample" / "helpsteer_train_500.jsonl").read_text().splitlines()
    rows = [json.loads(x) for x in lines]
    texts = [f"{r['prompt']}\n\n{r['response']}"[-1500:] for r in rows]
    X = EmbeddingClient().encode(texts)
    Y = _matrix([helpsteer_labels(r) for r in rows])
    split = np.array(split_groups([r["prompt"] for r in rows], 0.25, seed=0))
    head = fit(X[split == "train"], Y[split == "train"], l2=1000.0)
    ev = evaluate(head, X[split == "val"], Y[split == "val"])
    assert ev["helpfulness"]["n"] == int((split == "val").sum())
    assert ev["helpfulness"]["mae"] < ev["helpfulness"]["baseline_mae"], ev["helpfulness"]
    assert all(ev[a]["mae"] is None for a in ATTRIBUTES[:4])  # HelpSteer has no OASST attributes
