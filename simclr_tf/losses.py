"""The contrastive losses of SimCLR: NT-Xent, and NT-Logistic and margin triplet (the paper's
Table 2), on one device or across replicas (the same gathering for all three).

References:
    - [Chen et al., 2020. A Simple Framework for Contrastive Learning of Visual
      Representations](https://arxiv.org/abs/2002.05709) (SimCLR), eq. 1 and Algorithm 1.
    - [Chen et al., 2020. Big Self-Supervised Models are Strong Semi-Supervised
      Learners](https://arxiv.org/abs/2006.10029) (SimCLRv2).
"""

from __future__ import annotations

import numbers

import tensorflow as tf

from simclr_tf.config import check_semi_hard_negatives

# Replaces a query's similarity with itself in the returned logits, so that the contrastive
# accuracy metric (an argmax) never picks it. A finite number rather than -inf, so that downstream
# metrics such as `softmax * logits` (entropy) stay finite: -inf would turn `0 * logit` into NaN.
# The loss does not use it: it excludes the self-similarity exactly (see `_cross_entropy`), which a
# finite mask cannot do once logits reach its magnitude (unnormalised projections of norm 1e4 at
# temperature 0.05 give logits of 2e9).
_MASK_VALUE = -1e9

# Guards the L2 normalisation of an all-zero projection (the result is then zero, not NaN).
_NORM_EPSILON = 1e-12


def nt_xent(z_1, z_2, temperature=0.1, normalize=True, memory=None, memory_mask=None):
    """Normalised temperature-scaled cross entropy (NT-Xent), SimCLR's contrastive loss.

    Each of the `N` local samples has two views. A query (one view of sample `i`) must pick its
    positive (the other view of sample `i`) out of all `2 * N_global - 1` other views of the
    global batch: the other `2 * N_global - 2` views are its negatives. Similarities are cosine
    similarities (dot products of L2-normalised projections) when `normalize` is true, divided
    by `temperature` (paper, eq. 1 and Algorithm 1).

    Scale: like the original SimCLR code, the loss is the mean over the `N` local samples of
    `CE(view-1 query) + CE(view-2 query)`, which is **twice** the paper's average over the `2N`
    terms `l(2k-1, 2k) + l(2k, 2k-1)`. Keeping the original code's scale keeps its published
    hyperparameters (learning rates, weight decay) valid. For example, if all embeddings are
    identical, every term is `log(2N - 1)` and the loss is `2 * log(2N - 1)`.

    Inputs are cast to float32 first, whatever their dtype, so `bfloat16` / `float16`
    projections from a mixed-precision model give a float32 loss.

    Across replicas: when called in a `tf.distribute` replica context with more than one
    replica in sync, `z_1` and `z_2` are all-gathered from every replica along the batch axis, so
    each local query meets all `2 * N_global - 2` negatives. The all-gather is differentiable:
    its gradient all-reduces (sums) the upstream gradients of every replica and hands each
    replica the slice that belongs to its own inputs, so the gradient a replica's negatives
    receive from the other replicas' queries flows back to the replica that produced them. The
    returned loss is the mean over the *local* queries; averaging it over replicas (or dividing
    by the number of replicas and summing gradients, as the train step does) gives exactly the
    loss and gradients of one device holding the whole global batch. Outside a strategy, in a
    cross-replica context, or with one replica, nothing is gathered.

    With a memory buffer (SimCLRv2, after MoCo; see `simclr_tf.models.memory`), each query also
    meets the `K` keys of `memory` as extra negatives: its logits gain the `K` columns
    `sim(q, memory_k) / temperature`, so its softmax runs over its positive, the
    `2 * N_global - 2` in-batch negatives and the filled memory entries. Entries that
    `memory_mask` marks empty (the first steps, before the queue is full) are left out exactly,
    as the self-similarity is. The memory holds no gradient (its keys come from the momentum
    network) and is the same on every replica, so it is not gathered. With `memory=None` the
    computation is exactly the one without a buffer.

    Args:
        z_1: float tensor of shape `(N, D)`. Projections of the first views of the local batch.
        z_2: float tensor of shape `(N, D)`. Projections of the second views, in the same
            sample order as `z_1`.
        temperature: float. Softmax temperature tau (0.1 for ImageNet, 0.5 for CIFAR-10 in the
            paper). Must be positive. Defaults to `0.1`.
        normalize: bool. L2-normalise the projections (cosine similarity); the memory keys
            too. Defaults to `True`.
        memory: float tensor of shape `(K, D)` or None. Keys of a memory buffer, extra negatives
            of every query. Defaults to `None` (none).
        memory_mask: bool tensor of shape `(K,)` or None. Which memory entries hold a key; None
            means all. Defaults to `None`.

    Returns:
        A tuple `(loss, logits_ab, labels)`:
        - `loss`: float32 scalar, the mean over the local samples of the two directions' cross
          entropies (see "Scale" above).
        - `logits_ab`: float32 tensor of shape `(N, 2 * N_global)`, the logits of the view-1
          queries: `concat([sim(a_i, b_all), sim(a_i, a_all)], axis=1) / temperature`, where
          the query's similarity with itself (in the second half) is set to a very large
          negative number (`-1e9`), so it does not win an argmax and has zero probability
          (for any logits above -1e9; the loss itself excludes it exactly at any scale).
        - `labels`: float32 one-hot tensor of shape `(N, 2 * N_global)`: the positive of local
          query `i` on replica `r` is column `offset_r + i` of the first half, where
          `offset_r` is the number of samples on replicas `0 .. r-1`.
        With a `memory` of `K` keys both have `K` more columns at the end (the memory's
        similarities, `-1e9` where empty; labels 0).
        `logits_ab` and `labels` feed the contrastive accuracy and entropy metrics
        (`contrastive_metrics`, on the first block: the original's cross-view logits).

    Raises:
        ValueError: if `temperature` is not positive, or `z_1` and `z_2` do not have the same
            static rank-2 shape.

    Example:
        ```python
        z_1, z_2 = tf.split(projection_head(encoder(tf.concat([view_1, view_2], 0))), 2)
        loss, logits_ab, labels = nt_xent(z_1, z_2, temperature=0.1)
        accuracy = tf.reduce_mean(contrastive_metrics(logits_ab, labels)[0])
        ```
    """
    _check_temperature(temperature)
    logits_a, logits_b, labels, exclude, local_size = _pairwise_logits(
        z_1, z_2, temperature, normalize, memory=memory, memory_mask=memory_mask)
    loss_a = _cross_entropy(logits_a, labels, exclude)  # (N,)
    loss_b = _cross_entropy(logits_b, labels, exclude)  # (N,)
    # A replica may hold no samples in an uneven final evaluation batch: its loss is then 0,
    # not NaN.
    loss = tf.math.divide_no_nan(tf.reduce_sum(loss_a + loss_b), tf.cast(local_size, tf.float32))
    logits_ab = tf.where(exclude, tf.constant(_MASK_VALUE, tf.float32), logits_a)  # (N, 2 N_global)
    return loss, logits_ab, labels


def nt_logistic(z_1, z_2, temperature=0.1, normalize=True, semi_hard_negatives=False):
    """NT-Logistic: each positive and each negative pair scored by a logistic loss (paper, Table 1).

    For a query `u` with positive `v+` and negatives `v-` (the same `2 * N_global - 2` views as
    NT-Xent, gathered across replicas the same way), the paper's objective is
    `log sigmoid(u.v+ / t) + log sigmoid(-u.v- / t)`; here the loss of a query is
    `-log sigmoid(s+ / t) - mean over v- of log sigmoid(-s- / t)`: the negatives are averaged, so
    the positive and the negatives weigh the same whatever the batch size. With
    `semi_hard_negatives`, each query keeps one negative, its semi-hard one (the paper's "sh" rows;
    see `semi_hard_negative_mask`). Scale, arguments, gathering and return values as `nt_xent` (the
    loss sums both directions, averaged over the local samples).

    Args:
        z_1: float tensor of shape `(N, D)`. Projections of the first views.
        z_2: float tensor of shape `(N, D)`. Projections of the second views.
        temperature: float. Temperature t. Defaults to `0.1`.
        normalize: bool. L2-normalise the projections. Defaults to `True`.
        semi_hard_negatives: bool. Score only each query's semi-hard negative. Defaults to `False`.

    Returns:
        `(loss, logits_ab, labels)` as `nt_xent`.

    Raises:
        ValueError: as `nt_xent`.

    References:
        Chen et al., 2020, section 5.1, Tables 1 and 2. https://arxiv.org/abs/2002.05709
    """
    _check_temperature(temperature)
    logits_a, logits_b, labels, exclude, local_size = _pairwise_logits(z_1, z_2, temperature, normalize)

    def per_query(logits):  # (N, 2 N_global) -> (N,)
        positive = tf.reduce_sum(labels * logits, axis=1)
        negatives = _chosen_negatives(logits, labels, exclude, semi_hard_negatives)
        negative = tf.math.divide_no_nan(
            tf.reduce_sum(tf.where(negatives, tf.math.log_sigmoid(-logits), 0.0), axis=1),
            tf.reduce_sum(tf.cast(negatives, tf.float32), axis=1))
        return -tf.math.log_sigmoid(positive) - negative

    loss = tf.math.divide_no_nan(tf.reduce_sum(per_query(logits_a) + per_query(logits_b)),
                                 tf.cast(local_size, tf.float32))
    logits_ab = tf.where(exclude, tf.constant(_MASK_VALUE, tf.float32), logits_a)
    return loss, logits_ab, labels


def margin_triplet(z_1, z_2, margin=0.5, normalize=True, semi_hard_negatives=False):
    """Margin triplet: a negative costs when it is not `margin` less similar than the positive.

    The paper's objective (Table 1) is `-max(u.v- - u.v+ + m, 0)`; here the loss of a query `u`
    is the mean over its negatives `v-` of `max(s- - s+ + margin, 0)`, with `s` the dot products
    (cosine similarities when `normalize`), no temperature. With `semi_hard_negatives`, each query
    keeps one negative, its semi-hard one (the paper's "sh" rows; see `semi_hard_negative_mask`).
    Negatives, gathering, scale and return values as `nt_xent` (the logits are the similarities
    themselves, temperature 1).

    Args:
        z_1: float tensor of shape `(N, D)`. Projections of the first views.
        z_2: float tensor of shape `(N, D)`. Projections of the second views.
        margin: float >= 0. The margin m. Defaults to `0.5`.
        normalize: bool. L2-normalise the projections. Defaults to `True`.
        semi_hard_negatives: bool. Score only each query's semi-hard negative. Defaults to `False`.

    Returns:
        `(loss, logits_ab, labels)` as `nt_xent`.

    Raises:
        ValueError: if `margin` is negative, or the shapes are wrong (as `nt_xent`).

    References:
        Chen et al., 2020, section 5.1, Tables 1 and 2. https://arxiv.org/abs/2002.05709
    """
    if isinstance(margin, numbers.Real) and not margin >= 0:
        raise ValueError(f"`margin` must be a number >= 0 (a difference of cosine similarities, "
                         f"e.g. 0.5). Received: margin={margin!r}.")
    logits_a, logits_b, labels, exclude, local_size = _pairwise_logits(z_1, z_2, 1.0, normalize)

    def per_query(logits):  # (N, 2 N_global) -> (N,)
        positive = tf.reduce_sum(labels * logits, axis=1, keepdims=True)  # (N, 1)
        negatives = _chosen_negatives(logits, labels, exclude, semi_hard_negatives)
        hinge = tf.nn.relu(logits - positive + tf.cast(margin, tf.float32))  # (N, 2 N_global)
        return tf.math.divide_no_nan(tf.reduce_sum(tf.where(negatives, hinge, 0.0), axis=1),
                                     tf.reduce_sum(tf.cast(negatives, tf.float32), axis=1))

    loss = tf.math.divide_no_nan(tf.reduce_sum(per_query(logits_a) + per_query(logits_b)),
                                 tf.cast(local_size, tf.float32))
    logits_ab = tf.where(exclude, tf.constant(_MASK_VALUE, tf.float32), logits_a)
    return loss, logits_ab, labels


def contrastive_loss(name, z_1, z_2, *, temperature=0.1, normalize=True, margin=0.5, memory=None,
                     memory_mask=None, semi_hard_negatives=False):
    """The contrastive loss `name` (`nt_xent`, `nt_logistic` or `margin_triplet`) of `z_1`, `z_2`.

    `temperature` is read by NT-Xent and NT-Logistic, `margin` by margin triplet, `memory` and
    `memory_mask` (a memory buffer's extra negatives) by NT-Xent only, and
    `semi_hard_negatives` by NT-Logistic and margin triplet only (NT-Xent weighs its negatives by
    their hardness already; the paper mines none for it).

    Returns:
        `(loss, logits_ab, labels)` as `nt_xent`.

    Raises:
        ValueError: an unknown `name`, or an invalid argument of that loss.
    """
    check_semi_hard_negatives(name, semi_hard_negatives)
    if name == "nt_xent":
        return nt_xent(z_1, z_2, temperature=temperature, normalize=normalize, memory=memory,
                       memory_mask=memory_mask)
    if memory is not None:
        raise ValueError(f"A memory buffer's negatives are only used by `nt_xent`. Received: "
                         f"contrastive_loss={name!r} with a memory.")
    if name == "nt_logistic":
        return nt_logistic(z_1, z_2, temperature=temperature, normalize=normalize,
                           semi_hard_negatives=semi_hard_negatives)
    if name == "margin_triplet":
        return margin_triplet(z_1, z_2, margin=margin, normalize=normalize,
                              semi_hard_negatives=semi_hard_negatives)
    raise ValueError(f"`contrastive_loss` must be one of 'nt_xent', 'nt_logistic', 'margin_triplet'. "
                     f"Received: contrastive_loss={name!r}.")


def contrastive_metrics(logits_ab, labels, memory_size=0):
    """Contrastive accuracy and entropy of each view-1 query, on its cross-view logits only.

    As the original SimCLR's metrics: a query's candidates are the `N_global` view-2 projections
    of the global batch (`logits_ab` of the original, the first block of ours), not the
    same-view ones nor a memory buffer's keys. `hit` says whether the most similar of them is the
    positive; `entropy` is that of the softmax over them, `-sum(p * log(p + 1e-8))`.

    Args:
        logits_ab: float tensor of shape `(N, 2 * N_global + K)`, as the losses return it.
        labels: float one-hot tensor of the same shape; the positive sits in the first block.
        memory_size: int. `K`, the memory buffer's keys at the end of the row. Defaults to `0`.

    Returns:
        `(hit, entropy)`: float32 tensors of shape `(N,)`.

    Example:
        ```python
        loss, logits_ab, labels = nt_xent(z_1, z_2, temperature=0.1)
        hit, entropy = contrastive_metrics(logits_ab, labels)
        accuracy = tf.reduce_mean(hit)
        ```
    """
    logits_ab = tf.cast(logits_ab, tf.float32)
    global_size = (tf.shape(logits_ab)[1] - memory_size) // 2
    cross_view = logits_ab[:, :global_size]  # (N, N_global)
    positive = tf.argmax(labels[:, :global_size], axis=1)
    hit = tf.cast(tf.equal(tf.argmax(cross_view, axis=1), positive), tf.float32)
    probabilities = tf.nn.softmax(cross_view, axis=-1)
    entropy = -tf.reduce_sum(probabilities * tf.math.log(probabilities + 1e-8), axis=-1)
    return hit, entropy


def _check_temperature(temperature):
    if isinstance(temperature, numbers.Real) and not temperature > 0:
        raise ValueError(
            "`temperature` must be a positive number (the paper uses 0.1 on ImageNet, 0.5 on "
            f"CIFAR-10). Received: temperature={temperature!r}."
        )


def _negatives(labels, exclude):
    """Entries of the `(N, 2 N_global)` logits that are negatives: neither positive nor self."""
    return tf.logical_not(tf.logical_or(labels > 0, exclude))


def semi_hard_negative_mask(logits, labels, exclude):
    """Each query's semi-hard negative: the most similar negative that is less similar than the positive.

    Semi-hard mining of FaceNet (Schroff et al., 2015), which the SimCLR paper uses for NT-Logistic
    and margin triplet (its Table 2, "sh"): for a query with positive similarity `s+`, the
    candidates are the negatives with `s- < s+`, and the hardest of them (largest `s-`) is kept.
    A query none of whose negatives is less similar than its positive keeps its least similar
    negative instead (as TensorFlow Addons' `triplet_semihard_loss` does), so that every query
    with a negative is scored. Ties go to the first column. Across replicas the candidates are the
    gathered global negatives, as for the losses.

    Args:
        logits: float32 tensor of shape `(N, K)`, similarities (any positive scale).
        labels: float32 one-hot tensor of shape `(N, K)`, the positives.
        exclude: bool tensor of shape `(N, K)`, the self-similarities.

    Returns:
        bool tensor of shape `(N, K)`: one True per row (none for a row without negatives).

    References:
        Schroff et al., 2015. FaceNet. https://arxiv.org/abs/1503.03832
    """
    positive = tf.reduce_sum(labels * logits, axis=1, keepdims=True)  # (N, 1)
    negatives = _negatives(labels, exclude)  # (N, K)
    candidates = tf.logical_and(negatives, logits < positive)
    hardest = tf.argmax(tf.where(candidates, logits, -float("inf")), axis=1)  # (N,)
    easiest = tf.argmin(tf.where(negatives, logits, float("inf")), axis=1)  # (N,)
    chosen = tf.where(tf.reduce_any(candidates, axis=1), hardest, easiest)
    one = tf.cast(tf.one_hot(chosen, tf.shape(logits)[1]), tf.bool)
    return tf.logical_and(one, negatives)


def _chosen_negatives(logits, labels, exclude, semi_hard):
    """The negatives a query is scored against: all of them, or its semi-hard one."""
    if semi_hard:
        return semi_hard_negative_mask(tf.stop_gradient(logits), labels, exclude)
    return _negatives(labels, exclude)


def _pairwise_logits(z_1, z_2, temperature, normalize, memory=None, memory_mask=None):
    """The two directions' logits over the (gathered) global batch; see `nt_xent`.

    Returns:
        `(logits_a, logits_b, labels, exclude, local_size)`: float32 `(N, 2 N_global)` logits of
        the view-1 and view-2 queries (`[sim(q, other view of all), sim(q, same view of all)] / t`),
        the one-hot positives, the bool self-similarity mask, and `N`. With a `memory` of `K`
        keys, `K` more columns: `sim(q, memory) / t`, no positive there, the empty entries
        excluded.
    """
    z_1 = tf.cast(z_1, tf.float32)  # (N, D)
    z_2 = tf.cast(z_2, tf.float32)  # (N, D)
    _check_shapes(z_1.shape, z_2.shape)
    temperature = tf.cast(temperature, tf.float32)

    if normalize:
        z_1 = tf.math.l2_normalize(z_1, axis=-1, epsilon=_NORM_EPSILON)
        z_2 = tf.math.l2_normalize(z_2, axis=-1, epsilon=_NORM_EPSILON)

    local_size = tf.shape(z_1)[0]
    context = tf.distribute.get_replica_context()
    if context is not None and context.num_replicas_in_sync > 1:
        # Differentiable: the gradient of all_gather is an all-reduce(SUM) of the upstream
        # gradients followed by taking this replica's slice (see the docstring).
        z_1_all = context.all_gather(z_1, axis=0)  # (N_global, D)
        z_2_all = context.all_gather(z_2, axis=0)  # (N_global, D)
        # Where this replica's samples start in the gathered batch. Gathering the local sizes
        # (not assuming replica_id * N) keeps the labels right for uneven final batches.
        sizes = context.all_gather(tf.reshape(local_size, [1]), axis=0)  # (num_replicas,)
        replica_id = context.replica_id_in_sync_group
        offset = tf.reduce_sum(sizes * tf.cast(tf.range(tf.size(sizes)) < replica_id, sizes.dtype))
    else:
        z_1_all, z_2_all = z_1, z_2
        offset = tf.constant(0, dtype=local_size.dtype)
    global_size = tf.shape(z_1_all)[0]

    positives = tf.range(local_size) + offset  # (N,) index of each query's own sample
    labels = tf.one_hot(positives, 2 * global_size, dtype=tf.float32)  # (N, 2 N_global)
    is_self = tf.cast(tf.one_hot(positives, global_size), tf.bool)  # (N, N_global)

    def similarities(queries, keys):
        return tf.matmul(queries, keys, transpose_b=True) / temperature  # (N, N_global)

    # A query is excluded from its own softmax: the self-similarity sits in the second half.
    exclude = tf.concat([tf.zeros_like(is_self), is_self], axis=1)  # (N, 2 N_global)
    logits_a = tf.concat([similarities(z_1, z_2_all), similarities(z_1, z_1_all)], axis=1)
    logits_b = tf.concat([similarities(z_2, z_1_all), similarities(z_2, z_2_all)], axis=1)
    if memory is None:
        return logits_a, logits_b, labels, exclude, local_size

    memory = tf.stop_gradient(tf.cast(memory, tf.float32))  # (K, D): the momentum network's keys
    if normalize:
        memory = tf.math.l2_normalize(memory, axis=-1, epsilon=_NORM_EPSILON)
    slots = tf.shape(memory)[0]
    filled = tf.ones([slots], tf.bool) if memory_mask is None else tf.cast(memory_mask, tf.bool)
    empty = tf.broadcast_to(tf.logical_not(filled)[tf.newaxis, :], [local_size, slots])  # (N, K)
    logits_a = tf.concat([logits_a, similarities(z_1, memory)], axis=1)  # (N, 2 N_global + K)
    logits_b = tf.concat([logits_b, similarities(z_2, memory)], axis=1)  # (N, 2 N_global + K)
    labels = tf.concat([labels, tf.zeros([local_size, slots], tf.float32)], axis=1)
    exclude = tf.concat([exclude, empty], axis=1)
    return logits_a, logits_b, labels, exclude, local_size


def _cross_entropy(logits, labels, exclude):
    """Softmax cross entropy of each row, over the entries that `exclude` does not mark.

    Args:
        logits: float32 tensor of shape `(N, K)`.
        labels: float32 one-hot tensor of shape `(N, K)`; the positive is never excluded.
        exclude: bool tensor of shape `(N, K)`, entries left out of the softmax normaliser.

    Returns:
        float32 tensor of shape `(N,)`: `logsumexp(kept logits) - positive logit`.
    """
    positive = tf.reduce_sum(labels * logits, axis=1)  # (N,)
    # -inf drops an entry exactly at any logit scale. reduce_logsumexp subtracts the row maximum,
    # which is finite because the positive is always kept, so it is stable at small temperatures
    # and large norms; exp(-inf) = 0 contributes nothing, and the gradient of tf.where sends
    # nothing to the excluded entries, so no NaN appears in the forward or backward pass.
    kept = tf.where(exclude, tf.constant(-float("inf"), tf.float32), logits)  # (N, K)
    return tf.reduce_logsumexp(kept, axis=1) - positive


def _check_shapes(shape_1, shape_2):
    if shape_1.rank is not None and shape_1.rank != 2:
        raise ValueError(
            f"`z_1` must have shape (batch_size, dim). Received: z_1.shape={shape_1}. Flatten or "
            "pool the projections to rank 2 first."
        )
    if shape_2.rank is not None and shape_2.rank != 2:
        raise ValueError(
            f"`z_2` must have shape (batch_size, dim). Received: z_2.shape={shape_2}. Flatten or "
            "pool the projections to rank 2 first."
        )
    if not shape_1.is_compatible_with(shape_2):
        raise ValueError(
            "`z_1` and `z_2` must have the same shape (one row per sample for each view). "
            f"Received: z_1.shape={shape_1}, z_2.shape={shape_2}."
        )
