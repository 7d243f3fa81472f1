"""Reward-model metrics against hand-computed values (and scikit-learn where installed)."""

import math

import numpy as np
import pytest

from editalign.eval.reward_metrics import (
    PairRewards,
    auroc,
    best_f1,
    expected_calibration_error,
    flatten_metrics,
    reward_metrics,
)


def test_auroc_hand_computed_with_ties():
    # positives 0.35, 0.8 vs negatives 0.1, 0.4: 3 of 4 pairs ordered
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    # a tie between a positive and a negative counts one half: (0.5 + 1) / 2
    assert auroc([1.0, 1.0, 0.0], [1, 0, 0]) == 0.75
    assert auroc([3, 2, 1], [1, 1, 0]) == 1.0
    assert math.isnan(auroc([1, 2], [1, 1]))


def test_auroc_matches_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 20, 500).astype(float)  # many ties
    labels = rng.random(500) < 0.3 + scores / 40
    assert auroc(scores, labels) == pytest.approx(metrics.roc_auc_score(labels, scores))


def test_best_f1_hand_computed():
    # cut after 1: P=1 R=.5 F=.667; after 2: .5/.5 F=.5; after 3: P=2/3 R=1 F=.8; all: .667
    f1, threshold = best_f1([0.9, 0.8, 0.7, 0.1], [1, 0, 1, 0])
    assert f1 == pytest.approx(0.8)
    assert threshold == 0.7
    # equal scores cannot be split: the only cuts are "top two" and "all"
    f1, _ = best_f1([1.0, 1.0, 0.0], [1, 0, 0])
    assert f1 == pytest.approx(2 / 3)  # P = 1/2, R = 1


def test_expected_calibration_error_hand_computed():
    # bin [0, .1): |0.05 − 0| with weight 1/3; bin [.9, 1]: |0.95 − 0.5| with weight 2/3
    ece = expected_calibration_error(np.array([0.05, 0.95, 0.95]), np.array([0, 1, 0]))
    assert ece == pytest.approx(0.05 / 3 + 0.45 * 2 / 3)


def test_reward_metrics_on_a_hand_made_pair():
    # ỹ: [equal, substituted, added, EOS]; ŷ: [equal, substituted, deleted, EOS]
    pair = PairRewards(
        revised_rewards=np.array([0.5, 0.9, 0.8, 0.1]), revised_labels=np.array([0, 2, 1, 0]),
        original_rewards=np.array([0.5, -0.7, 0.6, 0.3]), original_labels=np.array([0, 2, 3, 0]),
        original_logits=np.array([0.0, 0.0, 0.0, 0.0]),
        human_bad=np.array([False, True, False]))
    m = reward_metrics([pair])
    assert m["pairwise_accuracy_sum"] == 1.0  # 2.3 > 0.7
    assert m["pairwise_accuracy_last"] == 0.0  # 0.1 < 0.3
    assert m["pairwise_accuracy_edit"] == 1.0  # 0.9 + 0.8 + 0.1 > −0.7 + 0.6
    # bad original tokens (scored by −reward): 0.7 and −0.6 vs good token −0.5: 1 of 2
    assert m["token_auroc"] == 0.5
    assert m["human_auroc"] == 1.0  # the marked token has the lowest reward
    assert m["bad_token_rate"] == pytest.approx(2 / 3)
    # edit AUROC: bad original (0.7, −0.6) vs changed revised (−0.9, −0.8): all 4 ordered
    assert m["edit_auroc"] == 1.0
    # σ(0) = 0.5 for every original token: |0.5 − 1/3| (good share of the 3 tokens)
    assert m["calibration"]["token_ece"] == pytest.approx(0.5 - 1 / 3)
    assert m["calibration"]["mean_reward_original_deleted"] == pytest.approx(0.6)
    flat = flatten_metrics(m, "eval_")
    assert flat["eval_calibration_token_ece"] == m["calibration"]["token_ece"]
