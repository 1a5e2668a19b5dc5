"""Evaluation protocols on frozen features: weighted kNN, and a linear probe.

- Weighted kNN (Wu et al. 2018, instance discrimination; the usual monitor of self-supervised
  training): cosine similarity between L2-normalised features, the `k` nearest training
  examples vote for their class with weight `exp(similarity / temperature)`; k = 200 and
  temperature 0.1 by default.
- Linear probe: L2-regularised multinomial logistic regression on frozen features (scikit-learn),
  a fast stand-in for the paper's linear evaluation when features fit in memory; the CLI's
  `--train_mode=finetune --fine_tune_after_block=4` is the paper's protocol with augmentation.

References:
    - [Wu et al., 2018. Unsupervised Feature Learning via Non-Parametric Instance
      Discrimination](https://arxiv.org/abs/1805.01978)
"""

from __future__ import annotations

import logging
import math
import os
import time

import keras
import numpy as np
import tensorflow as tf

log = logging.getLogger(__name__)


def extract_features(encoder, dataset, *, feature="final_avg_pool"):
    """Runs a frozen encoder over `(images, labels)` batches.

    Args:
        encoder: a callable returning a dict of features (the ResNet or an exported module).
        dataset: iterable of `(images, labels)` batches, images float32 in [0, 1].
        feature: str. Which output to take. Defaults to `"final_avg_pool"`.

    Returns:
        `(features, labels)`: float32 `(N, D)` and int64 `(N,)` NumPy arrays.
    """
    call = None
    features, labels = [], []
    for images, batch_labels in dataset:
        if call is None:  # one trace for every batch, the smaller last one included
            spec = tf.TensorSpec([None, *images.shape[1:]], images.dtype)
            call = tf.function(lambda x: encoder(x, training=False)[feature], input_signature=[spec],
                               autograph=False)
        features.append(np.asarray(call(images), np.float32))
        labels.append(np.asarray(batch_labels).reshape(-1))
    if not features:
        raise ValueError("`dataset` is empty: no features to extract.")
    return np.concatenate(features), np.concatenate(labels).astype(np.int64)


def knn_predict(train_features, train_labels, query_features, *, num_classes, k=200, temperature=0.1,
                batch_size=1024):
    """Weighted kNN class scores for each query.

    Args:
        train_features: float `(N, D)`. The memory bank.
        train_labels: int `(N,)`, in `[0, num_classes)`.
        query_features: float `(M, D)`.
        num_classes: int. Number of classes.
        k: int. Neighbours that vote (capped at N). Defaults to `200`.
        temperature: float. Vote weight `exp(cos / temperature)`. Defaults to `0.1`.
        batch_size: int. Queries per matrix product. Defaults to `1024`.

    Returns:
        float32 `(M, num_classes)` scores; the prediction is their argmax.

    Raises:
        ValueError: on empty inputs, mismatched sizes, or non-positive `k` / `temperature`.
    """
    train_features = np.asarray(train_features, np.float32)
    query_features = np.asarray(query_features, np.float32)
    train_labels = np.asarray(train_labels).astype(np.int64).reshape(-1)
    if train_features.ndim != 2 or query_features.ndim != 2 or len(train_features) == 0:
        raise ValueError(
            "`train_features` and `query_features` must be non-empty (N, D) arrays. Received shapes "
            f"{train_features.shape} and {query_features.shape}."
        )
    if len(train_labels) != len(train_features):
        raise ValueError(
            f"{len(train_features)} training features but {len(train_labels)} labels: one label per row."
        )
    if k <= 0 or temperature <= 0:
        raise ValueError(
            f"`k` and `temperature` must be positive. Received: k={k}, temperature={temperature}."
        )
    if train_labels.min() < 0 or train_labels.max() >= num_classes:
        raise ValueError(
            f"Labels must be in [0, {num_classes}) for kNN; unlabelled (-1) rows must be removed."
        )
    k = min(int(k), len(train_features))
    bank = tf.math.l2_normalize(tf.constant(train_features), axis=1)  # (N, D)
    bank_labels = tf.constant(train_labels)
    scores = []
    for start in range(0, len(query_features), batch_size):
        queries = tf.math.l2_normalize(tf.constant(query_features[start:start + batch_size]), axis=1)
        similarity = tf.matmul(queries, bank, transpose_b=True)  # (m, N)
        top_similarity, top_index = tf.math.top_k(similarity, k=k)  # (m, k)
        weights = tf.exp(top_similarity / temperature)  # (m, k)
        votes = tf.one_hot(tf.gather(bank_labels, top_index), num_classes)  # (m, k, C)
        scores.append(tf.reduce_sum(votes * weights[..., None], axis=1).numpy())
    return np.concatenate(scores).astype(np.float32)


def knn_accuracy(train_features, train_labels, query_features, query_labels, *, num_classes, k=200,
                 temperature=0.1):
    """Top-1 accuracy of the weighted kNN classifier."""
    scores = knn_predict(train_features, train_labels, query_features, num_classes=num_classes, k=k,
                         temperature=temperature)
    return float(np.mean(np.argmax(scores, axis=1) == np.asarray(query_labels).reshape(-1)))


def linear_probe_accuracy(train_features, train_labels, test_features, test_labels, *, C=1.0, seed=0):
    """Top-1 accuracy of logistic regression on standardised frozen features (scikit-learn)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    classifier = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000, random_state=seed))
    with small_blas(np.asarray(train_features)):
        classifier.fit(np.asarray(train_features), np.asarray(train_labels))
    return float(classifier.score(np.asarray(test_features), np.asarray(test_labels)))


# Training features up to this many numbers are fitted on one BLAS thread (`small_blas`).
SINGLE_THREAD_ELEMENTS = 1 << 23


def small_blas(features):
    """A context with one BLAS thread where `features` are few (else BLAS' own default).

    OpenBLAS' threads wait for work by spinning; beside TensorFlow's thread pool or another busy
    process on a 2-core CPU, the digits' 1150x512 by 512x10 product took 15 ms on two threads
    instead of 0.7 ms on one, and their logistic-regression evaluation minutes instead of seconds.
    """
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1 if np.size(features) <= SINGLE_THREAD_ELEMENTS else None, user_api="blas")


# The paper's transfer protocol searches 45 values from 1e-6 to 1e5 (appendix B.8); nine over the range
# that matters for standardised features keep the search within seconds on CPU.
LOGISTIC_C_GRID = tuple(float(c) for c in np.logspace(-4, 4, 9))

# Training features above this many numbers take the fast path of `logistic_regression_eval`: 60,000
# x 512 features took 961 s on the exact path (nine fits of up to 1,000 float64 L-BFGS iterations on
# one BLAS thread, then a refit); the fast path 26 s of CPU time for a test top-1 of 85.7%.
FAST_LOGISTIC_ELEMENTS = SINGLE_THREAD_ELEMENTS
# The fast path's L-BFGS stopping rule: at most 100 iterations per fit, and a gradient tolerance of
# 1e-3 or a tenth of the regularisation, whichever is smaller (see `_fast_search`). On 60,000 x 512
# features (experiments/benchmark_linear_eval.py) 300 iterations gave the same C and a test top-1
# within 0.02% in twice the time; scikit-learn's default 1e-4 took 3x the iterations on 12,000.
FAST_MAX_ITER = 100
FAST_TOL = 1e-3


def logistic_regression_eval(train_features, train_labels, test_features, test_labels, *,
                             c_grid=LOGISTIC_C_GRID, validation_fraction=0.2, seed=0, max_iter=1000,
                             fast=None):
    """The transfer-learning linear evaluation of SimCLR (appendix B.8), on frozen features.

    An L2-regularised multinomial logistic regression (L-BFGS) on standardised features. The
    regularisation `C` (inverse strength) is chosen on a stratified validation part of the training
    features, then the classifier is refitted on all of them and scored on the test features.
    Fitted on a few labels per class (the paper's semi-supervised linear evaluation: pass only those
    training features), the validation part keeps at least one example of each class where every
    class has two. Each fit logs a line (INFO): C, validation top-1, seconds.

    Two paths to the same numbers. The exact path fits each C from zero in float64, each in a
    scaler-and-classifier pipeline. The fast path, for large inputs (60,000 x 512 features: a minute
    instead of a quarter of an hour, experiments/benchmark_linear_eval.py), standardises once in
    float32 and walks the grid from the strongest regularisation up, each fit warm-started from the
    previous one's weights with at most `FAST_MAX_ITER` iterations and tolerance `FAST_TOL`; it stops
    walking once the validation top-1 fell below the best at two further values of C (it rises, then
    falls, as the regularisation weakens) and refits on all the training features from the chosen
    C's weights. BLAS and OpenMP use the cores that the load average leaves idle (`idle_cores`).

    Args:
        train_features, train_labels: `(N, D)` float and `(N,)` int arrays (labels >= 0): the
            labelled training images the classifier may use, e.g. a `label_subset` of them.
        test_features, test_labels: the evaluation images, the same way.
        c_grid: values of `C` to try.
        validation_fraction: float. Share of the training features used to choose `C`.
        seed: int. Seed of the validation split and the solver.
        max_iter: int. L-BFGS iterations per fit of the exact path (bounds the time).
        fast: bool or None. The fast path; `None`: for training features of more than
            `FAST_LOGISTIC_ELEMENTS` numbers.

    Returns:
        dict with `top1`, `top5` (fractions), `C` (chosen), `validation_top1`, `train_examples`
        (the labels fitted on), `test_examples`, `path` (`"fast"` or `"exact"`), `fits` (C,
        validation top-1 and seconds of each fit of the search) and `classifier` (the fitted
        scikit-learn pipeline, scaler and logistic regression).

    References:
        - [Chen et al., 2020 (SimCLR), appendix B.8](https://arxiv.org/abs/2002.05709)
    """
    from sklearn.model_selection import train_test_split

    fast = np.size(train_features) > FAST_LOGISTIC_ELEMENTS if fast is None else bool(fast)
    dtype = np.float32 if fast else np.float64
    x, y = np.asarray(train_features, dtype), np.asarray(train_labels).reshape(-1)
    x_test, y_test = np.asarray(test_features, dtype), np.asarray(test_labels).reshape(-1)
    if len(np.unique(y)) < 2:
        raise ValueError("The logistic-regression evaluation needs at least two classes in the training "
                         f"images. Received labels: {sorted(set(y.tolist()))}.")
    counts = np.bincount(y)
    counts = counts[counts > 0]
    stratify = y if counts.min() >= 2 else None
    # scikit-learn's own count for a fraction, raised to one per class where stratifying needs it
    # (2 labels per class: half of them validate).
    validation_size = math.ceil(validation_fraction * len(y))
    if stratify is not None:
        validation_size = max(validation_size, len(counts))
    fit_part, val_part = train_test_split(np.arange(len(y)), test_size=validation_size, random_state=seed,
                                          stratify=stratify)
    search = _fast_search if fast else _exact_search
    model, best_c, best_score, fits = search(x, y, fit_part, val_part, c_grid, seed=seed, max_iter=max_iter)
    probabilities = model.predict_proba(x_test)
    classes = model.classes_
    ranked = classes[np.argsort(-probabilities, axis=1)]
    top1 = float(np.mean(ranked[:, 0] == y_test))
    top5 = float(np.mean(np.any(ranked[:, :5] == y_test[:, None], axis=1)))
    return {"top1": top1, "top5": top5, "C": best_c, "validation_top1": float(best_score),
            "train_examples": int(len(y)), "test_examples": int(len(y_test)),
            "path": "fast" if fast else "exact", "fits": fits, "classifier": model}


def _logged_fit(fit, c, fits, score=None):
    """Runs `fit()`, logs its line and appends `(C, validation top-1, seconds)` to `fits`."""
    started = time.perf_counter()
    model = fit()
    seconds = time.perf_counter() - started
    value = score(model) if score is not None else None
    if value is None:
        log.info("logistic regression refit on all training features, C=%g: %.1f s", c, seconds)
    else:
        fits.append((c, float(value), round(seconds, 2)))
        log.info("logistic regression C=%g: validation top-1 %.2f%% (%.1f s)", c, 100 * value, seconds)
    return model, value


def _exact_search(x, y, fit_part, val_part, c_grid, *, seed, max_iter):
    """Each C from zero in a scaler-and-classifier pipeline (float64); the best refitted on all."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def fit(c, xs, ys):
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter, random_state=seed))
        with warnings.catch_warnings(), small_blas(xs):
            warnings.simplefilter("ignore", ConvergenceWarning)  # bounded time: the last iterate is used
            return model.fit(xs, ys)

    x_fit, y_fit, x_val, y_val = x[fit_part], y[fit_part], x[val_part], y[val_part]
    fits = []
    scores = [(_logged_fit(lambda c=c: fit(c, x_fit, y_fit), c, fits, lambda m: m.score(x_val, y_val))[1], c)
              for c in c_grid]
    best_score, best_c = max(scores, key=lambda sc: (sc[0], -sc[1]))  # ties: the stronger regularisation
    model, _ = _logged_fit(lambda: fit(best_c, x, y), best_c, fits)
    return model, best_c, best_score, fits


def _fast_search(x, y, fit_part, val_part, c_grid, *, seed, max_iter):
    """The warm-started path over C (float32, standardised once); see `logistic_regression_eval`."""
    import copy
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    del max_iter  # the fast path's own cap
    scaler = StandardScaler().fit(x[fit_part])
    x_fit, x_val = scaler.transform(x[fit_part]), scaler.transform(x[val_part])
    y_fit, y_val = y[fit_part], y[val_part]
    classifier = LogisticRegression(max_iter=FAST_MAX_ITER, tol=FAST_TOL, warm_start=True, random_state=seed)
    fits, best = [], None  # best: (score, C, fitted classifier)
    worse = 0
    for c in sorted(c_grid):
        # A warm start from C' < C is off by (1/C' - 1/C) w / n in the gradient (scikit-learn's loss is
        # the mean): a fixed tolerance above that stops at once and the path stands still (60,000
        # features: every C from 0.1 on kept the weights of 0.01). A tenth of the regularisation moves.
        classifier.C, classifier.tol = c, min(FAST_TOL, 0.1 / (c * len(y_fit)))

        def fit():
            with warnings.catch_warnings(), _idle_cores_only():
                warnings.simplefilter("ignore", ConvergenceWarning)  # bounded time: the last iterate
                return classifier.fit(x_fit, y_fit)

        _, score = _logged_fit(fit, c, fits, lambda m: m.score(x_val, y_val))
        if best is None or score > best[0]:  # ties: the stronger regularisation, met first
            best, worse = (score, c, copy.deepcopy(classifier)), 0
        elif score < best[0]:
            worse += 1
            if worse >= 2:
                break
    best_score, best_c, refit = best
    scaler = StandardScaler().fit(x)  # the refit standardises on all training features, as a pipeline

    def fit_all():
        with warnings.catch_warnings(), _idle_cores_only():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return refit.fit(scaler.transform(x), y)

    _logged_fit(fit_all, best_c, fits)
    model = make_pipeline(scaler, refit)
    return model, best_c, best_score, fits


def idle_cores() -> int:
    """The cores that the 1-minute load average leaves idle, at least one.

    Threads beyond them only wait: on 2 cores under a load of 9 (other jobs), a logistic-regression fit
    on 3,840 x 512 features took 228 ms per L-BFGS iteration on two threads and 44 ms on one.
    """
    cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except OSError:  # no load average on this system: trust the cores
        load = 0.0
    return max(1, min(cores, math.floor(cores - load + 0.5)))


def _idle_cores_only():
    """A context in which BLAS and OpenMP use `idle_cores()` threads."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(idle_cores())


class KNNMonitor(keras.callbacks.Callback):
    """Weighted-kNN top-1 of the encoder's features every `every_epochs` epochs.

    Adds `knn_top1` to the epoch logs (so TensorBoard and the history show it) and writes it as a
    summary when `log_dir` is given.

    Args:
        train_dataset: `(images, labels)` batches of labelled training images (eval preprocessing).
        eval_dataset: `(images, labels)` batches of the evaluation split.
        num_classes: int.
        every_epochs: int. Period in epochs. Defaults to `1`.
        k, temperature: kNN parameters. Default to `200` and `0.1`.
        log_dir: str or None. TensorBoard directory.
    """

    def __init__(self, train_dataset, eval_dataset, *, num_classes, every_epochs=1, k=200,
                 temperature=0.1, log_dir=None):
        super().__init__()
        self.train_dataset = train_dataset
        self.eval_dataset = eval_dataset
        self.num_classes = num_classes
        self.every_epochs = max(1, int(every_epochs))
        self.k = k
        self.temperature = temperature
        self.writer = tf.summary.create_file_writer(log_dir) if log_dir else None
        self.history = []

    def evaluate(self):
        encoder = self.model  # a SimCLRModel's call returns its features, whatever its encoder
        bank, bank_labels = extract_features(encoder, self.train_dataset)
        queries, query_labels = extract_features(encoder, self.eval_dataset)
        keep = bank_labels >= 0
        return knn_accuracy(bank[keep], bank_labels[keep], queries, query_labels,
                            num_classes=self.num_classes, k=self.k, temperature=self.temperature)

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every_epochs:
            return
        accuracy = self.evaluate()
        self.history.append((epoch + 1, accuracy))
        if logs is not None:
            logs["knn_top1"] = accuracy
        if self.writer is not None:
            with self.writer.as_default():
                tf.summary.scalar("knn_top1", accuracy, step=int(self.model.optimizer.iterations.numpy()))
            self.writer.flush()
        log.info(f"epoch {epoch + 1}: kNN top-1 {accuracy:.2%}")
