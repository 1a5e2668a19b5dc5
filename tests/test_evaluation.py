"""kNN monitor and linear probe on frozen features."""

import numpy as np
import pytest

from simclr_tf.evaluation import knn_accuracy, knn_predict, linear_probe_accuracy


def test_knn_hand_worked_case():
    # Bank: two points of class 0 near the x axis, one of class 1 on the y axis.
    bank = np.array([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0]])
    labels = np.array([0, 0, 1])
    query = np.array([[0.6, 0.8]])  # cos with bank: 0.6, ~0.676, 0.8
    scores = knn_predict(bank, labels, query, num_classes=2, k=2, temperature=0.5)
    cos = bank @ query[0] / np.linalg.norm(bank, axis=1)
    # k=2 keeps the class-1 point (0.8) and the second class-0 point (0.676).
    expected = np.array([np.exp(cos[1] / 0.5), np.exp(cos[2] / 0.5)])
    np.testing.assert_allclose(scores[0], expected, rtol=1e-5)
    assert np.argmax(scores[0]) == 1
    # With k=3 the two class-0 votes outweigh it at a high temperature.
    scores = knn_predict(bank, labels, query, num_classes=2, k=3, temperature=10.0)
    assert np.argmax(scores[0]) == 0


def test_knn_matches_a_numpy_reference():
    rng = np.random.default_rng(0)
    bank, queries = rng.normal(size=(300, 16)), rng.normal(size=(50, 16))
    labels = rng.integers(0, 5, 300)
    got = knn_predict(bank, labels, queries, num_classes=5, k=20, temperature=0.1, batch_size=7)
    b = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    sim = q @ b.T
    want = np.zeros((50, 5))
    for i in range(50):
        top = np.argsort(-sim[i])[:20]
        for j in top:
            want[i, labels[j]] += np.exp(sim[i, j] / 0.1)
    np.testing.assert_allclose(got, want, rtol=1e-4)


def test_knn_and_probe_separate_clusters():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(4, 8)) * 5
    labels = np.repeat(np.arange(4), 30)
    features = centres[labels] + rng.normal(size=(120, 8))
    assert knn_accuracy(features[::2], labels[::2], features[1::2], labels[1::2], num_classes=4, k=10) == 1.0
    assert linear_probe_accuracy(features[::2], labels[::2], features[1::2], labels[1::2]) == 1.0
    # Random labels: chance level, not perfect.
    shuffled = rng.permutation(labels)
    assert knn_accuracy(features[::2], shuffled[::2], features[1::2], shuffled[1::2], num_classes=4) < 0.6


def test_knn_bad_input():
    with pytest.raises(ValueError, match="one label per row"):
        knn_predict(np.zeros((3, 2)), [0, 1], np.zeros((1, 2)), num_classes=2)
    with pytest.raises(ValueError, match="positive"):
        knn_predict(np.ones((3, 2)), [0, 1, 1], np.ones((1, 2)), num_classes=2, k=0)
    with pytest.raises(ValueError, match="unlabelled"):
        knn_predict(np.ones((3, 2)), [0, -1, 1], np.ones((1, 2)), num_classes=2)


def test_logistic_regression_eval_chooses_c_on_validation_and_scores_held_out():
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from simclr_tf.evaluation import logistic_regression_eval

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 16)) * 3
    labels = np.repeat(np.arange(4), 50)
    features = centres[labels] + rng.normal(size=(200, 16))
    test_labels = np.repeat(np.arange(4), 10)
    test_features = centres[test_labels] + rng.normal(size=(40, 16))
    grid = (1e-3, 1e-1, 10.0)
    result = logistic_regression_eval(features, labels, test_features, test_labels, c_grid=grid, seed=3)
    # The same search written out with scikit-learn.
    x_fit, x_val, y_fit, y_val = train_test_split(features, labels, test_size=0.2, random_state=3,
                                                  stratify=labels)
    scores = [make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=1000, random_state=3))
              .fit(x_fit, y_fit).score(x_val, y_val) for c in grid]
    best = max(zip(scores, grid, strict=True), key=lambda sc: (sc[0], -sc[1]))
    assert result["C"] == best[1] and result["validation_top1"] == pytest.approx(best[0])
    final = make_pipeline(StandardScaler(), LogisticRegression(C=best[1], max_iter=1000, random_state=3))
    final.fit(features, labels)
    assert result["top1"] == pytest.approx(final.score(test_features, test_labels))
    assert result["top5"] == 1.0  # four classes: the true one is always among the top five
    assert result["train_examples"] == 200 and result["test_examples"] == 40
    with pytest.raises(ValueError, match="at least two classes"):
        logistic_regression_eval(features, np.zeros(200, int), test_features, test_labels)


def test_small_blas_uses_one_thread_for_small_features_only():
    from threadpoolctl import threadpool_info

    from simclr_tf.evaluation import SINGLE_THREAD_ELEMENTS, small_blas

    def blas_threads():
        return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]

    before = blas_threads()
    with small_blas(np.zeros((1437, 512))):
        assert all(n == 1 for n in blas_threads())
    assert blas_threads() == before  # restored
    with small_blas(np.zeros(SINGLE_THREAD_ELEMENTS + 1, np.float32)):
        assert blas_threads() == before  # a large problem keeps BLAS' own threads
