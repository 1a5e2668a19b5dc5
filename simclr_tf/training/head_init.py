"""Fine-tuning that starts from a linear probe (`--ft_head_init=linear_probe`).

With a handful of labels, fine-tuning the whole network from a random supervised head first pushes
the random head's gradients into the pretrained features. "Linear probing then fine-tuning" (LP-FT,
Kumar et al. 2022) first fits the head on the frozen features and fine-tunes from there. Here the
probe is the logistic regression of the linear evaluation (standardised features, L2 penalty) on
the labelled training images, un-augmented, through the features the head reads (`ft_proj_selector`);
the standardisation is folded into the head's kernel and bias, so the network's logits at step 0
are the probe's decision function.
"""

from __future__ import annotations

import warnings

import numpy as np

from simclr_tf.data import pipeline

# L2 strength of the probe: scikit-learn's default. Too few labels to choose it on a validation part.
PROBE_C = 1.0


def probe_head_weights(features, labels, num_classes, *, C=PROBE_C, seed=0):
    """Kernel `(D, num_classes)` and bias whose logits are a logistic regression's decision function.

    The regression is fitted on standardised `features`; the scaling is folded into the weights.
    Classes without a labelled example get a zero kernel and a constant logit 10 below the smallest
    logit of the labelled examples, so they start unlikely but trainable.

    Returns:
        `(kernel, bias, train_top1)`, float32 arrays and the probe's accuracy on `features`.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    from simclr_tf.evaluation import small_blas

    x = np.asarray(features, np.float64)
    y = np.asarray(labels).reshape(-1)
    if len(np.unique(y)) < 2:
        raise ValueError("`--ft_head_init=linear_probe` needs labelled images of at least two classes. "
                         f"Received labels: {sorted(set(y.tolist()))}.")
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale == 0] = 1.0
    classifier = LogisticRegression(C=C, max_iter=2000, random_state=seed)
    with warnings.catch_warnings(), small_blas(x):
        warnings.simplefilter("ignore", ConvergenceWarning)
        classifier.fit((x - mean) / scale, y)
    coef, intercept = classifier.coef_, classifier.intercept_
    if len(classifier.classes_) == 2:  # scikit-learn keeps one row for two classes: logit difference
        coef = np.concatenate([-coef / 2, coef / 2])
        intercept = np.concatenate([-intercept / 2, intercept / 2])
    kernel = np.zeros((x.shape[1], num_classes))
    bias = np.zeros(num_classes)
    fitted = classifier.classes_
    for row, label in enumerate(fitted):
        kernel[:, label] = coef[row] / scale
        bias[label] = intercept[row] - np.dot(coef[row], mean / scale)
    missing = np.setdiff1d(np.arange(num_classes), fitted)
    bias[missing] = (x @ kernel[:, fitted] + bias[fitted]).min() - 10.0  # below every labelled logit
    top1 = float(np.mean(np.argmax(x @ kernel + bias, axis=1) == y))
    return kernel.astype(np.float32), bias.astype(np.float32), top1


def init_head_from_probe(model, source, *, image_size, batch_size=256, seed=0) -> float:
    """Sets `model.supervised_head` to a linear probe fitted on `source`; returns its training top-1.

    `source` is the labelled training set of the fine-tuning (its images un-augmented, as in the
    evaluation). Call it in the strategy's scope or cross-replica context: the assignment reaches
    every replica's copy of the head.
    """
    dataset = pipeline.build_eval_dataset(source, global_batch_size=batch_size, image_size=image_size)
    features, labels = [], []
    for images, batch_labels in dataset:
        features.append(np.asarray(model.supervised_head_input(images), np.float32))
        labels.append(np.asarray(batch_labels).reshape(-1))
    head = model.supervised_head
    kernel, bias, top1 = probe_head_weights(np.concatenate(features), np.concatenate(labels),
                                            head.num_classes, seed=seed)
    head.dense.kernel.assign(kernel.astype(head.dense.kernel.dtype))
    head.dense.bias.assign(bias.astype(head.dense.bias.dtype))
    return top1
