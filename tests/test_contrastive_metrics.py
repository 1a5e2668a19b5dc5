"""The contrastive accuracy and entropy are the original SimCLR's: over the cross-view logits only.

The original (tf2/objective.py, tf2/metrics.py) computes `logits_ab = h1 @ h2_large.T / t` of shape
`(N, N_global)` and reports `argmax(logits_ab) == argmax(labels)` and the entropy of
`softmax(logits_ab)`; the same-view logits (`logits_aa`) and, here, a memory buffer's keys are no
candidates of these metrics. The reference below is that computation written out in NumPy.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from simclr_tf.config import LossConfig
from simclr_tf.losses import contrastive_loss, contrastive_metrics
from simclr_tf.models.heads import ProjectionHead
from simclr_tf.models.simclr import SimCLRModel

SIZE = 8


def _original_metrics(z_1, z_2, scale, normalize=True):
    """Per-query (hit, entropy) of the original code, from the projections of both views."""
    z_1, z_2 = np.asarray(z_1, np.float64), np.asarray(z_2, np.float64)
    if normalize:
        z_1 = z_1 / np.linalg.norm(z_1, axis=1, keepdims=True)
        z_2 = z_2 / np.linalg.norm(z_2, axis=1, keepdims=True)
    n = len(z_1)
    logits_ab = z_1 @ z_2.T / scale  # (N, N): view-1 queries against every view-2 projection
    labels = np.eye(n, 2 * n)  # the original's one-hot labels over [ab, aa]
    hit = (np.argmax(logits_ab, axis=1) == np.argmax(labels, axis=1)).astype(np.float64)
    p = np.exp(logits_ab - logits_ab.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    entropy = -np.sum(p * np.log(p + 1e-8), axis=1)
    return hit, entropy


def _all_logits_entropy(z_1, z_2, scale):
    """The entropy over all 2N logits of a query (same-view ones included): what is NOT wanted."""
    z_1 = z_1 / np.linalg.norm(z_1, axis=1, keepdims=True)
    z_2 = z_2 / np.linalg.norm(z_2, axis=1, keepdims=True)
    logits = np.concatenate([z_1 @ z_2.T, z_1 @ z_1.T], axis=1) / scale
    logits[:, len(z_1):][np.eye(len(z_1), dtype=bool)] = -1e9
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    return -np.sum(p * np.log(p + 1e-8), axis=1)


def _pair(n, d, seed):
    rng = np.random.default_rng(seed)
    z_1 = rng.normal(size=(n, d)).astype(np.float32)
    z_2 = (0.6 * z_1 + rng.normal(size=(n, d))).astype(np.float32)  # related views: some hits, not all
    return z_1, z_2


@pytest.mark.parametrize("name, scale", [("nt_xent", 0.2), ("nt_logistic", 0.5), ("margin_triplet", 1.0)])
@pytest.mark.parametrize("n, d", [(6, 4), (16, 8)])
def test_metrics_of_every_loss_equal_the_original_definition(name, scale, n, d):
    z_1, z_2 = _pair(n, d, seed=n + d)
    _, logits_ab, labels = contrastive_loss(name, z_1, z_2, temperature=scale, margin=0.5)
    hit, entropy = contrastive_metrics(logits_ab, labels)
    want_hit, want_entropy = _original_metrics(z_1, z_2, scale)  # margin triplet: no temperature
    np.testing.assert_array_equal(hit.numpy(), want_hit)
    np.testing.assert_allclose(entropy.numpy(), want_entropy, rtol=1e-4, atol=1e-5)
    assert 0 < want_hit.mean() < 1  # the case tells a right metric from a wrong one
    assert not np.allclose(want_entropy, _all_logits_entropy(z_1, z_2, scale), atol=1e-3)


def test_memory_keys_are_no_candidates_of_the_metrics():
    z_1, z_2 = _pair(8, 4, seed=3)
    memory = np.random.default_rng(4).normal(size=(5, 4)).astype(np.float32)
    mask = tf.constant([True, True, True, False, False])
    _, logits_ab, labels = contrastive_loss("nt_xent", z_1, z_2, temperature=0.1, memory=memory,
                                            memory_mask=mask)
    assert logits_ab.shape == (8, 2 * 8 + 5)
    hit, entropy = contrastive_metrics(logits_ab, labels, memory_size=5)
    want_hit, want_entropy = _original_metrics(z_1, z_2, 0.1)
    np.testing.assert_array_equal(hit.numpy(), want_hit)
    np.testing.assert_allclose(entropy.numpy(), want_entropy, rtol=1e-4, atol=1e-5)


def test_a_replica_slice_of_the_gathered_batch():
    """Under a strategy a replica holds N local queries against N_global keys, its positives at an
    offset: the metrics read the first N_global columns and that offset."""
    rng = np.random.default_rng(7)
    local, global_size, offset = 3, 6, 3
    logits_ab = rng.normal(size=(local, 2 * global_size)).astype(np.float32)
    labels = np.zeros_like(logits_ab)
    labels[np.arange(local), offset + np.arange(local)] = 1.0
    logits_ab[0, offset] = 9.0  # query 0 finds its positive; the others may not
    hit, entropy = contrastive_metrics(tf.constant(logits_ab), tf.constant(labels))
    cross = logits_ab[:, :global_size].astype(np.float64)
    want_hit = np.argmax(cross, axis=1) == offset + np.arange(local)
    p = np.exp(cross - cross.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    np.testing.assert_array_equal(hit.numpy(), want_hit.astype(np.float32))
    np.testing.assert_allclose(entropy.numpy(), -np.sum(p * np.log(p + 1e-8), axis=1), rtol=1e-4, atol=1e-6)


def _model(memory_buffer_size=0):
    encoder = keras.Sequential([keras.layers.Flatten(), keras.layers.Dense(12, activation="relu")])
    head = ProjectionHead("nonlinear", proj_out_dim=6, num_proj_layers=2, name="projection_head")
    model = SimCLRModel(encoder, head, loss_config=LossConfig(
        temperature=0.2, memory_buffer_size=memory_buffer_size, memory_momentum=0.5))
    model.build((None, SIZE, SIZE, 3))
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    return model


@pytest.mark.parametrize("memory_buffer_size", [0, 10])
def test_the_train_step_reports_the_original_metrics(memory_buffer_size):
    model = _model(memory_buffer_size)
    rng = np.random.default_rng(0)
    for _ in range(3):  # with a buffer, the later steps have keys in the queue
        base = rng.uniform(size=(8, SIZE, SIZE, 3)).astype(np.float32)
        views = tuple(tf.constant(np.clip(base + 0.3 * rng.normal(size=base.shape), 0, 1), tf.float32)
                      for _ in range(2))
        z = model(views, training=True)["proj_head_output"].numpy()  # what the step's loss sees
        for metric in model.metrics:
            metric.reset_state()
        logs = model.train_step((views, tf.fill([8], -1)))
        want_hit, want_entropy = _original_metrics(z[:8], z[8:], 0.2)
        np.testing.assert_allclose(float(logs["contrastive_acc"]), want_hit.mean(), atol=1e-6)
        np.testing.assert_allclose(float(logs["contrastive_entropy"]), want_entropy.mean(), rtol=1e-4)
    if memory_buffer_size:
        assert int(model.memory.filled) == memory_buffer_size
