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


def _clusters(rng, counts, dim=16, spread=3.0, centres=None):
    """Gaussian clusters: `counts[c]` points around centre c; returns (features, labels, centres)."""
    if centres is None:
        centres = rng.normal(size=(len(counts), dim)) * spread
    labels = np.repeat(np.arange(len(counts)), counts)
    return centres[labels] + rng.normal(size=(len(labels), centres.shape[1])), labels, centres


def test_logistic_regression_eval_is_scikit_learns_classifier_and_top_k():
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import top_k_accuracy_score
    from sklearn.preprocessing import StandardScaler

    from simclr_tf.evaluation import logistic_regression_eval

    rng = np.random.default_rng(0)  # eight overlapping classes: top-1 < top-5 < 1
    features, labels, centres = _clusters(rng, [40] * 8, spread=0.6)
    test_features, test_labels, _ = _clusters(rng, [25] * 8, centres=centres)
    result = logistic_regression_eval(features, labels, test_features, test_labels, c_grid=(1e-2, 1.0),
                                      seed=3)
    # scikit-learn directly, at the chosen C, on every training feature.
    scaler = StandardScaler().fit(features)
    reference = LogisticRegression(C=result["C"], max_iter=1000, random_state=3)
    reference.fit(scaler.transform(features), labels)
    fitted = result["classifier"][-1]
    np.testing.assert_allclose(fitted.coef_, reference.coef_, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(fitted.intercept_, reference.intercept_, rtol=1e-4, atol=1e-5)
    probabilities = reference.predict_proba(scaler.transform(test_features))
    top1 = top_k_accuracy_score(test_labels, probabilities, k=1)
    top5 = top_k_accuracy_score(test_labels, probabilities, k=5)
    assert 0.3 < top1 < top5 < 1.0  # the case tells the two apart
    assert result["top1"] == pytest.approx(top1) and result["top5"] == pytest.approx(top5)
    assert result["train_examples"] == 320 and result["test_examples"] == 200


def test_logistic_regression_eval_chooses_c_hand_worked():
    from simclr_tf.evaluation import logistic_regression_eval

    rng = np.random.default_rng(1)
    # Two far-apart classes, 150 and 50 examples; the stratified validation part (ceil(0.2 * 200) =
    # 40) holds 30 and 10. At C = 1e-6 the weights vanish and the unpenalised intercept predicts
    # the majority class everywhere: 30 / 40 = 0.75 on validation; at C = 10 every point is right.
    features, labels, centres = _clusters(rng, [150, 50], spread=5.0)
    test_features, test_labels, _ = _clusters(rng, [20, 20], centres=centres)
    tiny = logistic_regression_eval(features, labels, test_features, test_labels, c_grid=(1e-6,))
    assert tiny["C"] == 1e-6 and tiny["validation_top1"] == 0.75 and tiny["top1"] == 0.5
    chosen = logistic_regression_eval(features, labels, test_features, test_labels, c_grid=(1e-6, 10.0))
    assert chosen["C"] == 10.0 and chosen["validation_top1"] == 1.0 and chosen["top1"] == 1.0
    # Every C perfect: the tie goes to the strongest regularisation, the smallest C.
    tied = logistic_regression_eval(features, labels, test_features, test_labels, c_grid=(100.0, 1.0, 10.0))
    assert tied["C"] == 1.0 and tied["validation_top1"] == 1.0
    with pytest.raises(ValueError, match="at least two classes"):
        logistic_regression_eval(features, np.zeros(200, int), test_features, test_labels)


def test_logistic_regression_eval_on_two_labels_per_class():
    from simclr_tf.evaluation import logistic_regression_eval

    rng = np.random.default_rng(2)
    features, labels, centres = _clusters(rng, [2] * 10, spread=5.0)
    test_features, test_labels, _ = _clusters(rng, [5] * 10, centres=centres)
    # ceil(0.2 * 20) = 4 validation images cannot hold the 10 classes: one of each validates and
    # one of each is fitted, so the validation accuracy is a whole number of tenths.
    result = logistic_regression_eval(features, labels, test_features, test_labels, c_grid=(1.0, 10.0))
    assert result["train_examples"] == 20 and result["test_examples"] == 50
    assert result["validation_top1"] * 10 == pytest.approx(round(result["validation_top1"] * 10))
    assert result["top1"] == 1.0  # centres 5 sigma apart


def test_logistic_linear_evaluation_uses_only_the_labels_per_class(tmp_path, monkeypatch):
    import dataclasses

    import tensorflow as tf
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from simclr_tf import evaluation
    from simclr_tf.config import Config, DataConfig, TrainConfig
    from simclr_tf.data.labels import label_subset
    from simclr_tf.training import inputs, linear_eval

    config = dataclasses.replace(
        Config(),
        data=dataclasses.replace(DataConfig(), dataset="digits", image_size=8, train_labels_per_class=2),
        train=dataclasses.replace(TrainConfig(), model_dir=str(tmp_path), eval_batch_size=512, seed=5),
    )
    splits = inputs.data_splits(config)

    def encoder(images, training=False):  # the red channel's 64 pixels, a fixed "encoder"
        return {"final_avg_pool": tf.reshape(images[..., 0], [tf.shape(images)[0], 64])}

    calls = []
    real = evaluation.logistic_regression_eval
    monkeypatch.setattr(evaluation, "logistic_regression_eval",
                        lambda *args, **kwargs: calls.append(real(*args, **kwargs)) or calls[-1])
    numbers = linear_eval._logistic(config, splits, encoder)

    # The reference: every labelled training image's features, then the data package's own subset.
    features, labels = evaluation.extract_features(encoder,
                                                   inputs.eval_dataset(config, splits.labelled_train))
    subset = label_subset(labels, per_class=2, seed=5)
    classes = splits.num_classes
    assert classes == 10 and len(subset) == 2 * classes < len(labels)
    scaler = StandardScaler().fit(features[subset])
    reference = LogisticRegression(C=numbers["linear_eval_C"], max_iter=1000, random_state=5)
    reference.fit(scaler.transform(features[subset]), labels[subset])
    fitted = calls[0]["classifier"][-1]
    np.testing.assert_allclose(fitted.coef_, reference.coef_, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(fitted.intercept_, reference.intercept_, rtol=1e-4, atol=1e-5)
    test_features, test_labels = evaluation.extract_features(encoder,
                                                             inputs.eval_dataset(config, splits.eval))
    assert numbers["linear_eval_top1"] == pytest.approx(
        reference.score(scaler.transform(test_features), test_labels))
    assert numbers["linear_eval_train_labels"] == numbers["linear_eval_train_examples"] == 2 * classes
    assert numbers["linear_eval_label_subset"] == "2 per class"
    assert f"fitted on {2 * classes} labelled training images (2 per class of {len(labels)})" in (
        numbers["linear_eval_description"])


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
