"""NT-Xent against a NumPy transcription of SimCLR's Algorithm 1, analytic cases and invariants."""

import itertools
import math

import numpy as np
import pytest
import tensorflow as tf

from simclr_tf import losses
from simclr_tf.losses import contrastive_loss, margin_triplet, nt_logistic, nt_xent, semi_hard_negative_mask


def reference_nt_xent(z_1, z_2, temperature, normalize):
    """SimCLR's loss, written straight from Algorithm 1 of the paper, in float64.

    The 2N samples are interleaved as in the paper: sample 2k-1 is the first view of example k and
    sample 2k its second view (0-based here: 2k and 2k+1). The paper averages l(2k-1, 2k) +
    l(2k, 2k-1) over 2N; the original code (and `nt_xent`) reports twice that.
    """
    z_1 = np.asarray(z_1, np.float64)
    z_2 = np.asarray(z_2, np.float64)
    n = len(z_1)
    z = np.empty((2 * n, z_1.shape[1]))
    z[0::2], z[1::2] = z_1, z_2
    if normalize:
        z = z / np.linalg.norm(z, axis=1, keepdims=True)
    s = z @ z.T  # s[i, j] = sim(z_i, z_j)

    def pair_loss(i, j):  # l(i, j) of the paper
        others = [s[i, k] / temperature for k in range(2 * n) if k != i]
        # l(i, j) = -log(exp(s_ij / t) / sum_{k != i} exp(s_ik / t)), with the log taken term by
        # term and every exponent shifted by the same m, so that large logits neither overflow
        # exp() nor underflow the ratio to log(0).
        m = max(others)
        return -(s[i, j] / temperature - m - math.log(sum(math.exp(o - m) for o in others)))

    paper_loss = sum(pair_loss(2 * k, 2 * k + 1) + pair_loss(2 * k + 1, 2 * k) for k in range(n)) / (2 * n)
    return 2.0 * paper_loss


def _pair(n, d, seed, scale=1.0):
    rng = np.random.default_rng(seed)
    # With scale 1 the rows have norm ~1, so the logits of normalize=False stay within ~1/t.
    z_1 = rng.normal(size=(n, d)) * scale / math.sqrt(d)
    z_2 = rng.normal(size=(n, d)) * scale / math.sqrt(d)
    return z_1.astype(np.float32), z_2.astype(np.float32)


GRID = list(itertools.product([1, 2, 8, 32], [2, 16, 128], [0.05, 0.1, 0.5, 1.0], [True, False]))


@pytest.mark.parametrize("n, d, temperature, normalize", GRID)
def test_matches_algorithm_1(n, d, temperature, normalize):
    z_1, z_2 = _pair(n, d, seed=n * 1000 + d)
    loss, logits_ab, labels = nt_xent(z_1, z_2, temperature=temperature, normalize=normalize)
    expected = reference_nt_xent(z_1, z_2, temperature, normalize)
    assert loss.dtype == tf.float32
    np.testing.assert_allclose(loss.numpy(), expected, rtol=2e-5, atol=2e-5)
    assert logits_ab.shape == (n, 2 * n)
    assert labels.shape == (n, 2 * n)
    np.testing.assert_array_equal(np.argmax(labels.numpy(), axis=1), np.arange(n))
    np.testing.assert_array_equal(labels.numpy().sum(axis=1), np.ones(n))


def test_logits_are_the_view_1_similarities_with_self_masked():
    n, d, temperature = 4, 8, 0.2
    z_1, z_2 = _pair(n, d, seed=7)
    _, logits_ab, _ = nt_xent(z_1, z_2, temperature=temperature, normalize=True)
    a = z_1 / np.linalg.norm(z_1, axis=1, keepdims=True)
    b = z_2 / np.linalg.norm(z_2, axis=1, keepdims=True)
    logits = logits_ab.numpy()
    np.testing.assert_allclose(logits[:, :n], a @ b.T / temperature, rtol=1e-5, atol=1e-5)
    off_diagonal = ~np.eye(n, dtype=bool)
    np.testing.assert_allclose(
        logits[:, n:][off_diagonal], (a @ a.T / temperature)[off_diagonal], rtol=1e-5, atol=1e-5
    )
    np.testing.assert_array_equal(np.diag(logits[:, n:]), np.full(n, -1e9, np.float32))


def test_perfectly_separated_views_give_full_contrastive_accuracy():
    # Orthogonal examples, both views identical: each query's positive is its largest logit.
    z = np.eye(6, dtype=np.float32)
    _, logits_ab, labels = nt_xent(z, z, temperature=0.1)
    np.testing.assert_array_equal(np.argmax(logits_ab, axis=1), np.argmax(labels, axis=1))


@pytest.mark.parametrize("n", [1, 2, 8, 32])
@pytest.mark.parametrize("normalize", [True, False])
def test_identical_embeddings_give_two_log_2n_minus_1(n, normalize):
    # Every logit is the same, so every query gives its positive probability 1 / (2N - 1).
    z = np.tile(np.array([[0.3, -0.4, 1.2]], np.float32), (n, 1))
    loss, _, _ = nt_xent(z, z, temperature=0.1, normalize=normalize)
    np.testing.assert_allclose(loss.numpy(), 2.0 * math.log(2 * n - 1), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("normalize", [True, False])
def test_a_single_example_has_zero_loss_at_any_scale(normalize):
    # With N = 1 the positive is the only candidate besides the query itself, so l = -log(1) = 0,
    # even when the logits (here -2e9 without normalisation) dwarf any finite self-mask.
    z_1 = np.array([[1e4, 0.0]], np.float32)
    z_2 = np.array([[-1e4, 0.0]], np.float32)
    loss, _, _ = nt_xent(z_1, z_2, temperature=0.05, normalize=normalize)
    assert loss.numpy() == 0.0


def test_symmetric_in_the_two_views():
    z_1, z_2 = _pair(8, 16, seed=3)
    loss_12, _, _ = nt_xent(z_1, z_2, temperature=0.1)
    loss_21, _, _ = nt_xent(z_2, z_1, temperature=0.1)
    np.testing.assert_allclose(loss_12.numpy(), loss_21.numpy(), rtol=1e-6)


def test_invariant_to_the_order_of_examples():
    z_1, z_2 = _pair(8, 16, seed=4)
    order = np.random.default_rng(0).permutation(8)
    loss, _, _ = nt_xent(z_1, z_2, temperature=0.5)
    shuffled, _, _ = nt_xent(z_1[order], z_2[order], temperature=0.5)
    np.testing.assert_allclose(loss.numpy(), shuffled.numpy(), rtol=1e-6)


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
def test_low_precision_inputs_give_a_float32_loss(dtype):
    z_1, z_2 = _pair(8, 16, seed=5)
    low_1, low_2 = tf.cast(z_1, dtype), tf.cast(z_2, dtype)
    loss, logits_ab, labels = nt_xent(low_1, low_2, temperature=0.1)
    assert loss.dtype == tf.float32 and logits_ab.dtype == tf.float32 and labels.dtype == tf.float32
    # Computed in float32: exact up to float32 rounding on the rounded inputs ...
    same_inputs, _, _ = nt_xent(tf.cast(low_1, tf.float32), tf.cast(low_2, tf.float32), temperature=0.1)
    np.testing.assert_allclose(loss.numpy(), same_inputs.numpy(), rtol=1e-6)
    # ... and close to the loss of the unrounded inputs.
    full, _, _ = nt_xent(z_1, z_2, temperature=0.1)
    np.testing.assert_allclose(loss.numpy(), full.numpy(), rtol=2e-2)


@pytest.mark.parametrize("normalize", [True, False])
def test_stable_at_low_temperature_and_large_norms(normalize):
    # Rows of norm ~1e4 at temperature 0.05: without normalisation the logits reach ~2e9.
    z_1, z_2 = _pair(8, 4, seed=6, scale=1e4)
    with tf.GradientTape() as tape:
        t_1, t_2 = tf.constant(z_1), tf.constant(z_2)
        tape.watch([t_1, t_2])
        loss, logits_ab, _ = nt_xent(t_1, t_2, temperature=0.05, normalize=normalize)
    gradients = tape.gradient(loss, [t_1, t_2])
    assert np.isfinite(loss.numpy())
    assert np.all(np.isfinite(logits_ab.numpy()))
    assert all(np.all(np.isfinite(g.numpy())) for g in gradients)
    np.testing.assert_allclose(
        loss.numpy(), reference_nt_xent(z_1, z_2, 0.05, normalize), rtol=1e-5, atol=1e-5
    )


def test_all_zero_projection_does_not_give_nan():
    z_1 = np.zeros((4, 8), np.float32)
    z_2 = np.ones((4, 8), np.float32)
    with tf.GradientTape() as tape:
        t_1 = tf.constant(z_1)
        tape.watch(t_1)
        loss, _, _ = nt_xent(t_1, z_2, temperature=0.1)
    # Hand-worked, N = 4, t = 0.1: z_1 normalises to 0 and z_2 to one vector u. A view-1 query has
    # 2N - 1 logits of 0 (its positive among them): CE = log(2N - 1). A view-2 query has its
    # positive and the N - 1 other view-1 logits at 0 and N - 1 view-2 logits at u.u / t = 10:
    # CE = log(N + (N - 1) e^10). The loss is their sum, averaged over the N samples.
    n, t = 4, 0.1
    np.testing.assert_allclose(loss.numpy(), math.log(2 * n - 1) + math.log(n + (n - 1) * math.exp(1 / t)),
                               rtol=1e-6)
    # At 0 the normalisation is x / sqrt(epsilon), so d loss / d z_1[k] = epsilon^-1/2 * dL/dz1_hat[k]:
    # view-1 queries give (N / (2N - 1) - 1) u / t each, and the view-2 queries' softmax weight
    # q = 1 / (N + (N - 1) e^10) on each view-1 logit gives (N q - 1) u / t, all over N.
    q = 1.0 / (n + (n - 1) * math.exp(1 / t))
    u = np.ones(8) / math.sqrt(8)
    row = (n / (2 * n - 1) - 1 + n * q - 1) * u / t / n / math.sqrt(losses._NORM_EPSILON)
    np.testing.assert_allclose(tape.gradient(loss, t_1).numpy(), np.tile(row, (4, 1)), rtol=1e-5)


def _finite_difference_gradient(f, x, eps=1e-6):
    grad = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        plus, minus = x.copy(), x.copy()
        plus[index] += eps
        minus[index] -= eps
        grad[index] = (f(plus) - f(minus)) / (2 * eps)
    return grad


@pytest.mark.parametrize(
    "n, d, temperature, normalize",
    [(2, 3, 0.5, True), (3, 4, 0.1, True), (3, 4, 0.2, False), (1, 2, 0.1, True)],
)
def test_gradients_match_finite_differences_of_the_reference(n, d, temperature, normalize):
    z_1, z_2 = _pair(n, d, seed=10 + n)
    t_1, t_2 = tf.constant(z_1), tf.constant(z_2)
    with tf.GradientTape() as tape:
        tape.watch([t_1, t_2])
        loss, _, _ = nt_xent(t_1, t_2, temperature=temperature, normalize=normalize)
    grad_1, grad_2 = (g.numpy() for g in tape.gradient(loss, [t_1, t_2]))

    x_1, x_2 = z_1.astype(np.float64), z_2.astype(np.float64)
    expected_1 = _finite_difference_gradient(
        lambda v: reference_nt_xent(v, x_2, temperature, normalize), x_1)
    expected_2 = _finite_difference_gradient(
        lambda v: reference_nt_xent(x_1, v, temperature, normalize), x_2)
    np.testing.assert_allclose(grad_1, expected_1, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(grad_2, expected_2, rtol=1e-3, atol=1e-4)


def test_same_result_in_a_tf_function_with_unknown_batch_size():
    z_1, z_2 = _pair(8, 16, seed=8)
    spec = tf.TensorSpec([None, 16], tf.float32)
    traced = tf.function(lambda a, b: nt_xent(a, b, temperature=0.1)[0], input_signature=[spec, spec])
    np.testing.assert_allclose(
        traced(z_1, z_2).numpy(), reference_nt_xent(z_1, z_2, 0.1, True), rtol=2e-5, atol=2e-5
    )


@pytest.mark.parametrize("temperature", [0, 0.0, -1])
def test_non_positive_temperature_is_rejected(temperature):
    z = np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match=r"`temperature` must be a positive number.*Received: temperature="):
        nt_xent(z, z, temperature=temperature)


def test_mismatched_shapes_are_rejected():
    with pytest.raises(ValueError, match=r"`z_1` and `z_2` must have the same shape.*\(2, 3\).*\(3, 3\)"):
        nt_xent(np.ones((2, 3), np.float32), np.ones((3, 3), np.float32))
    with pytest.raises(ValueError, match=r"`z_1` and `z_2` must have the same shape"):
        nt_xent(np.ones((2, 3), np.float32), np.ones((2, 4), np.float32))


def test_inputs_of_rank_other_than_two_are_rejected():
    with pytest.raises(ValueError, match=r"`z_1` must have shape \(batch_size, dim\)"):
        nt_xent(np.ones((2, 3, 1), np.float32), np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"`z_2` must have shape \(batch_size, dim\)"):
        nt_xent(np.ones((2, 3), np.float32), np.ones((2,), np.float32))


# --- NT-Logistic and margin triplet (the paper's Table 1 and 2) --------------------------------------


def _reference_pairs(z_1, z_2, normalize):
    """Queries, positives and negatives of the 2N views, written out in float64."""
    z = np.concatenate([np.asarray(z_1, np.float64), np.asarray(z_2, np.float64)])  # (2N, D)
    if normalize:
        z = z / np.linalg.norm(z, axis=1, keepdims=True)
    n = len(z_1)
    for i in range(2 * n):
        positive = (i + n) % (2 * n)
        negatives = [k for k in range(2 * n) if k not in (i, positive)]
        yield z[i], z[positive], [z[k] for k in negatives]


def _reference_semi_hard(u, v_pos, v_negs):
    """FaceNet's semi-hard negative of query u, as a one-element list (see `semi_hard_negative_mask`).

    The most similar of the negatives less similar than the positive; if there is none, the least
    similar negative.
    """
    if not v_negs:
        return []
    sims = [u @ v for v in v_negs]
    candidates = [k for k, s in enumerate(sims) if s < u @ v_pos]
    if candidates:
        return [v_negs[max(candidates, key=lambda k: sims[k])]]
    return [v_negs[min(range(len(sims)), key=lambda k: sims[k])]]


def _reference_queries(z_1, z_2, normalize, semi_hard):
    for u, v_pos, v_negs in _reference_pairs(z_1, z_2, normalize):
        yield u, v_pos, _reference_semi_hard(u, v_pos, v_negs) if semi_hard else v_negs


def reference_nt_logistic(z_1, z_2, temperature, normalize, semi_hard=False):
    """-log sigmoid(u.v+ / t) - mean over v- of log sigmoid(-u.v- / t), summed over the 2N queries / N."""
    def log_sigmoid(x):
        return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))

    total = 0.0
    for u, v_pos, v_negs in _reference_queries(z_1, z_2, normalize, semi_hard):
        total -= log_sigmoid(u @ v_pos / temperature)
        if v_negs:
            total -= sum(log_sigmoid(-(u @ v) / temperature) for v in v_negs) / len(v_negs)
    return total / len(z_1)


def reference_margin_triplet(z_1, z_2, margin, normalize, semi_hard=False):
    """Mean over v- of max(u.v- - u.v+ + m, 0), summed over the 2N queries / N."""
    total = 0.0
    for u, v_pos, v_negs in _reference_queries(z_1, z_2, normalize, semi_hard):
        if v_negs:
            total += sum(max(u @ v - u @ v_pos + margin, 0.0) for v in v_negs) / len(v_negs)
    return total / len(z_1)


VARIANT_GRID = list(itertools.product([1, 2, 8], [4, 32], [True, False]))


@pytest.mark.parametrize("n, d, normalize", VARIANT_GRID)
@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_nt_logistic_matches_its_formula(n, d, normalize, temperature):
    z_1, z_2 = _pair(n, d, seed=n * 100 + d)
    loss, logits_ab, labels = nt_logistic(z_1, z_2, temperature=temperature, normalize=normalize)
    np.testing.assert_allclose(loss.numpy(), reference_nt_logistic(z_1, z_2, temperature, normalize),
                               rtol=2e-5, atol=2e-5)
    assert logits_ab.shape == labels.shape == (n, 2 * n)


@pytest.mark.parametrize("n, d, normalize", VARIANT_GRID)
@pytest.mark.parametrize("margin", [0.0, 0.5, 2.0])
def test_margin_triplet_matches_its_formula(n, d, normalize, margin):
    z_1, z_2 = _pair(n, d, seed=n * 100 + d + 1)
    loss, _, _ = margin_triplet(z_1, z_2, margin=margin, normalize=normalize)
    np.testing.assert_allclose(loss.numpy(), reference_margin_triplet(z_1, z_2, margin, normalize),
                               rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("n, d, normalize", VARIANT_GRID)
@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_nt_logistic_with_semi_hard_negatives_matches_its_formula(n, d, normalize, temperature):
    z_1, z_2 = _pair(n, d, seed=n * 100 + d + 2)
    loss, _, _ = nt_logistic(z_1, z_2, temperature=temperature, normalize=normalize, semi_hard_negatives=True)
    expected = reference_nt_logistic(z_1, z_2, temperature, normalize, semi_hard=True)
    np.testing.assert_allclose(loss.numpy(), expected, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("n, d, normalize", VARIANT_GRID)
@pytest.mark.parametrize("margin", [0.0, 0.5, 2.0])
def test_margin_triplet_with_semi_hard_negatives_matches_its_formula(n, d, normalize, margin):
    z_1, z_2 = _pair(n, d, seed=n * 100 + d + 3)
    loss, _, _ = margin_triplet(z_1, z_2, margin=margin, normalize=normalize, semi_hard_negatives=True)
    expected = reference_margin_triplet(z_1, z_2, margin, normalize, semi_hard=True)
    np.testing.assert_allclose(loss.numpy(), expected, rtol=2e-5, atol=2e-5)


def test_semi_hard_negatives_by_hand():
    """One query row of similarities: positive 0.5; negatives 0.9 (harder), 0.4 and -0.2 (semi-hard)."""
    logits = tf.constant([[0.5, 0.9, 0.4, -0.2, 0.3]])
    labels = tf.constant([[1.0, 0.0, 0.0, 0.0, 0.0]])
    exclude = tf.constant([[False, False, False, False, True]])  # the self-similarity (0.3) is no negative
    got = semi_hard_negative_mask(logits, labels, exclude).numpy()
    np.testing.assert_array_equal(got, [[False, False, True, False, False]])  # 0.4: the hardest below 0.5
    # No negative less similar than the positive: the least similar negative (0.6) is kept.
    logits = tf.constant([[0.5, 0.9, 0.6, 0.7, 0.3]])
    got = semi_hard_negative_mask(logits, labels, exclude).numpy()
    np.testing.assert_array_equal(got, [[False, False, True, False, False]])
    # Margin triplet on two samples with orthonormal views: each query's only negative is semi-hard
    # (similarity 0 < 1), so mining changes nothing; with four samples it keeps one of three.
    z_1 = np.eye(4, dtype=np.float32)[:2]
    full, _, _ = margin_triplet(z_1, z_1, margin=1.5)
    mined, _, _ = margin_triplet(z_1, z_1, margin=1.5, semi_hard_negatives=True)
    np.testing.assert_allclose(mined.numpy(), full.numpy(), rtol=1e-6)
    z_1 = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]], np.float32)  # sims 0.6, 0, 0.8 between rows
    z_2 = z_1.copy()
    mined, _, _ = margin_triplet(z_1, z_2, margin=0.5, semi_hard_negatives=True)
    # Query row 0: positive 1; negatives 0.6, 0 (other view) and 0.6, 0 (same view): keeps a 0.6,
    # hinge 0.6 - 1 + 0.5 = 0.1. Row 1: negatives 0.6, 0.8: keeps 0.8, hinge 0.3. Row 2: keeps 0.8,
    # hinge 0.3. Both views alike, so the loss is 2 * (0.1 + 0.3 + 0.3) / 3.
    np.testing.assert_allclose(mined.numpy(), 2 * 0.7 / 3, rtol=1e-5)


def test_semi_hard_negatives_only_for_the_losses_that_use_them():
    z_1, z_2 = _pair(4, 8, seed=5)
    with pytest.raises(ValueError, match=r"`semi_hard_negatives` applies to `contrastive_loss` nt_logistic "
                                         r"or margin_triplet.*Received: contrastive_loss='nt_xent'"):
        contrastive_loss("nt_xent", z_1, z_2, semi_hard_negatives=True)
    got = contrastive_loss("margin_triplet", z_1, z_2, margin=0.3, semi_hard_negatives=True)[0]
    expected = margin_triplet(z_1, z_2, 0.3, semi_hard_negatives=True)[0]
    np.testing.assert_array_equal(got.numpy(), expected.numpy())


def test_variants_by_hand():
    # Two samples, orthonormal views: every similarity is 0 but each positive is 1.
    z_1 = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]], np.float32)
    loss, _, _ = margin_triplet(z_1, z_1, margin=1.5)  # per query: max(0 - 1 + 1.5, 0) = 0.5
    np.testing.assert_allclose(loss.numpy(), 2 * 0.5, rtol=1e-6)  # two directions
    loss, _, _ = nt_logistic(z_1, z_1, temperature=1.0)  # -log sig(1) - log sig(0) per query
    np.testing.assert_allclose(loss.numpy(), 2 * (math.log1p(math.exp(-1.0)) + math.log(2.0)), rtol=1e-6)


def test_contrastive_loss_dispatches_and_nt_xent_is_unchanged():
    z_1, z_2 = _pair(4, 8, seed=3)
    for name, expected in [("nt_xent", nt_xent(z_1, z_2, temperature=0.2)),
                           ("nt_logistic", nt_logistic(z_1, z_2, temperature=0.2)),
                           ("margin_triplet", margin_triplet(z_1, z_2, margin=0.3))]:
        got = contrastive_loss(name, z_1, z_2, temperature=0.2, margin=0.3)
        for a, b in zip(got, expected, strict=True):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    with pytest.raises(ValueError, match=r"`contrastive_loss` must be one of 'nt_xent'.*"
                                         r"Received: contrastive_loss='xent'"):
        contrastive_loss("xent", z_1, z_2)
    with pytest.raises(ValueError, match=r"`margin` must be a number >= 0.*Received: margin=-1"):
        margin_triplet(z_1, z_2, margin=-1)
    with pytest.raises(ValueError, match=r"`temperature` must be a positive number"):
        nt_logistic(z_1, z_2, temperature=0.0)


_REPLICAS_SCRIPT = r"""
import json, sys
import numpy as np
import tensorflow as tf
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2)
from simclr_tf.losses import contrastive_loss
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
rng = np.random.default_rng(0)
x_1, x_2 = (rng.normal(size=(8, 6)).astype(np.float32) for _ in range(2))
w0 = rng.normal(size=(6, 5)).astype(np.float32)
out = {}
variants = [(name, False) for name in ("nt_xent", "nt_logistic", "margin_triplet")]
for name, sh in variants + [("nt_logistic", True), ("margin_triplet", True)]:
    kwargs = dict(temperature=0.3, margin=0.4, semi_hard_negatives=sh)
    w = tf.Variable(w0)
    with tf.GradientTape() as tape:
        single, _, _ = contrastive_loss(name, x_1 @ w, x_2 @ w, **kwargs)
    single_grad = tape.gradient(single, w).numpy()
    with strategy.scope():
        wd = tf.Variable(w0)

    def step(a, b):
        with tf.GradientTape() as tape:
            loss, _, _ = contrastive_loss(name, a @ wd, b @ wd, **kwargs)
            scaled = loss / 2.0
        return loss, tape.gradient(scaled, wd)

    shard = lambda x: strategy.experimental_distribute_values_from_function(
        lambda ctx: x[ctx.replica_id_in_sync_group * 4:(ctx.replica_id_in_sync_group + 1) * 4])
    losses, grads = strategy.run(tf.function(step), (shard(x_1), shard(x_2)))
    mean_loss = float(strategy.reduce("MEAN", losses, axis=None))
    grad = strategy.reduce("SUM", grads, axis=None).numpy()
    out[name + ("+sh" if sh else "")] = [abs(mean_loss - float(single)),
                                         float(np.abs(grad - single_grad).max()), float(single)]
print(json.dumps(out))
"""


def test_every_variant_across_two_replicas_equals_one_device_with_the_global_batch():
    """The loss averaged over 2 replicas and the gradient summed over them equal one device's."""
    import json
    import os
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _REPLICAS_SCRIPT], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    for name, (loss_error, grad_error, loss) in result.items():
        assert loss > 0, name
        assert loss_error < 1e-5 and grad_error < 1e-5, (name, loss_error, grad_error)
