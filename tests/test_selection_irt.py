"""Seed selection on real GSM8K answers and the Rasch IRT fit (pure functions, no model)."""

import json

import numpy as np

from posttrain_assets.common.answers import answers_match, extract_final_answer
from posttrain_assets.scoring.difficulty import difficulty_z, rasch_fit
from posttrain_assets.selection.length import bin_targets, length_select, seed_loop_reference

from .conftest import SHARED_DATA, needs_shared
from .helpers import SAMPLE


def gsm_answer_lengths(path):
    return np.array([len(json.loads(x)["answer"]) for x in path.read_text().splitlines()], float)


def test_bin_targets_rise_toward_the_longest_bin():
    # w_i = exp(-2 ((5 - i) / 5)^2) = .135 .278 .487 .726 .923 1 -> 3.8 7.8 13.7 20.5 26.0 28.2 of 100
    assert bin_targets(100, 6, 2.0) == [4, 8, 14, 20, 26, 28]
    assert sum(bin_targets(37, 6, 2.0)) == 37
    assert bin_targets(10, 1, 2.0) == [10]


def test_length_selection_on_bundled_gsm8k_answers():
    lengths = gsm_answer_lengths(SAMPLE / "gsm8k" / "train_300.jsonl")
    idx, report = length_select(lengths, total_samples=60, num_bins=6, curve_sharpness=2.0, seed=42)
    assert [b["target"] for b in report["bins"]] == [2, 5, 8, 12, 16, 17]
    assert [b["actual"] for b in report["bins"]] == [2, 5, 8, 12, 16, 17]
    assert [b["available"] for b in report["bins"]] == [50, 48, 52, 48, 52, 50]  # quantile bins, ties
    assert len(idx) == 60 and len(set(idx.tolist())) == 60
    # every selected row lies in its bin, so the selection follows the target distribution
    edges = [b["high"] for b in report["bins"]][:-1]
    chosen_bins = np.searchsorted(edges, lengths[idx], side="right")
    assert np.bincount(chosen_bins, minlength=6).tolist() == [2, 5, 8, 12, 16, 17]
    again, _ = length_select(lengths, total_samples=60, seed=42)
    assert np.array_equal(idx, again)  # fixed seed: same rows


@needs_shared
def test_length_selection_full_gsm8k_train_exact_counts():
    lengths = gsm_answer_lengths(SHARED_DATA / "gsm8k" / "train.jsonl")
    idx, report = length_select(lengths, total_samples=1000, num_bins=6, seed=7)
    assert [b["actual"] for b in report["bins"]] == bin_targets(1000, 6, 2.0) == [38, 78, 137, 205, 260, 282]
    assert all(b["available"] > 1000 for b in report["bins"])
    ref = seed_loop_reference(lengths.tolist(), total_samples=1000, num_bins=6, seed=7)
    assert len(ref) == 1000  # the streaming reference picks the same number of rows


def test_rasch_fit_recovers_simulated_difficulties():
    rng = np.random.default_rng(0)
    beta_true = rng.normal(0, 1, 200)
    theta_true = rng.normal(0, 1, 300)
    p = 1 / (1 + np.exp(-(theta_true[None, :] - beta_true[:, None])))
    X = (rng.random(p.shape) < p).astype(float)
    beta, theta = rasch_fit(X)
    assert np.corrcoef(beta, beta_true)[0, 1] > 0.97
    assert np.mean(np.abs((beta - beta.mean()) - (beta_true - beta_true.mean()))) < 0.2
    assert np.corrcoef(theta, theta_true)[0, 1] > 0.95
    X[0, :] = 1  # an item everyone solves gets a finite, low difficulty
    assert np.isfinite(rasch_fit(X)[0][0]) and rasch_fit(X)[0][0] < beta.min() + 0.5


def test_difficulty_z_alignment_and_answer_parsing():
    z = difficulty_z(np.array([-0.2, -1.0, -2.0]), np.array([1.0, 0.5, 0.0]), np.array([-1.0, 0.0, 1.0]))
    assert z[0] < z[1] < z[2]
    assert np.allclose(difficulty_z(np.array([-0.2, -2.0]), np.zeros(2), np.zeros(2)), [-1, 1])
    assert extract_final_answer("so 5+3=8\n#### 8") == "8"
    assert extract_final_answer("The answer is \\boxed{12}.") == "12"
    assert extract_final_answer("She pays 1,200 dollars in total.") == "1200"
    assert answers_match("72", "72", math=True) and answers_match("72.0", "72", math=True)
    assert not answers_match("71", "72", math=True)
    assert answers_match("Lima ", "lima", math=False) and not answers_match("", "", math=False)


def test_length_selection_of_nothing():
    idx, report = length_select(np.zeros(0), total_samples=10)
    assert len(idx) == 0 and [b["actual"] for b in report["bins"]] == [0] * 6
    assert [b["target"] for b in report["bins"]] == bin_targets(10, 6, 2.0)
