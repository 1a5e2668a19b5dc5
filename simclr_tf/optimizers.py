"""Optimizers of SimCLR: LARS, the warm-up + cosine learning-rate schedule, and weight decay.

SimCLR trains with LARS (layer-wise adaptive rate scaling) at large batch sizes, a learning rate
that grows linearly over the first epochs and then follows a cosine to zero, and an L2 weight
decay that LARS applies itself (coupled, added to the gradient before the trust ratio) except for
the supervised head, whose decay is an explicit loss term (`weight_decay_loss`).

References:
    - [Chen et al., 2020. A Simple Framework for Contrastive Learning of Visual
      Representations](https://arxiv.org/abs/2002.05709) (SimCLR), appendix B.1 and B.6.
    - [Chen et al., 2020. Big Self-Supervised Models are Strong Semi-Supervised
      Learners](https://arxiv.org/abs/2006.10029) (SimCLRv2), square-root learning-rate scaling.
    - [You et al., 2017. Large Batch Training of Convolutional
      Networks](https://arxiv.org/abs/1708.03888) (LARS).
    - [Loshchilov & Hutter, 2016. SGDR: Stochastic Gradient Descent with Warm
      Restarts](https://arxiv.org/abs/1608.03983) (cosine decay).
"""

from __future__ import annotations

import dataclasses
import math
import numbers

import keras
import tensorflow as tf
from keras import ops

OPTIMIZERS = ("lars", "momentum", "adam")
LEARNING_RATE_SCALINGS = ("linear", "sqrt", "none")

# Substrings of variable paths, as laid down by the model's layer names (see models/resnet.py).
_BATCH_NORM = "batch_norm"
_SUPERVISED_HEAD = "head_supervised"


def _variable_names(variable) -> tuple[str, ...]:
    """The strings exclusion patterns are matched against: the Keras 3 path and the name."""
    return tuple(name for name in (getattr(variable, "path", None), variable.name) if name)


def _matches_any(variable, patterns) -> bool:
    return any(pattern in name for pattern in patterns for name in _variable_names(variable))


@keras.saving.register_keras_serializable(package="simclr_tf")
class LARS(keras.optimizers.Optimizer):
    """Layer-wise adaptive rate scaling (LARS) with momentum, as in the SimCLR code.

    For each variable `w` with gradient `g`, learning rate `lr`, momentum velocity `v`:

    ```python
    if decay applies to w:
        g = g + weight_decay * w
    if adaptation applies to w:
        trust_ratio = eta * ||w|| / ||g||    # 1 if ||w|| == 0 or ||g|| == 0
        scaled_lr = lr * trust_ratio
    else:
        scaled_lr = lr
    v = momentum * v + scaled_lr * g
    update = momentum * v + scaled_lr * g if nesterov else v
    w = w - update
    ```

    The weight decay is *coupled*: it enters the gradient, and so the trust ratio, before the
    momentum. It is therefore kept out of the Keras base class, which would apply a second,
    decoupled decay `w -= lr * weight_decay * w`; `weight_decay` is a plain attribute here.

    Whether decay or adaptation applies to a variable is decided once, in `build`, by matching
    substrings of the variable's path (e.g. `"resnet/block_group1_block1_conv1_batch_norm/gamma"`)
    and name, so the update itself has no Python branching on tensors and runs inside
    `tf.function` and XLA (`jit_compile=True`).

    Args:
        learning_rate: float, a `keras.optimizers.schedules.LearningRateSchedule`, or a callable
            taking no arguments. The learning rate before the trust ratio.
        momentum: float in `[0, 1)`. Momentum of the velocity. Defaults to `0.9`.
        weight_decay: float, non-negative. Coupled L2 weight decay. Defaults to `0.0`.
        eta: float, positive. Trust coefficient of the layer-wise adaptation. Defaults to
            `0.001`.
        nesterov: bool. Use Nesterov momentum. Defaults to `False`.
        exclude_from_weight_decay: sequence of str. Variables whose path or name contains one of
            these substrings receive no weight decay. Defaults to
            `("batch_norm", "bias", "head_supervised")`: batch-norm parameters and biases are not
            decayed, and the supervised head is decayed through `weight_decay_loss` instead.
            This replaces the base class' `exclude_from_weight_decay()` method, which configures
            the decoupled decay LARS does not use.
        exclude_from_layer_adaptation: sequence of str or `None`. Variables matching one of these
            substrings get no trust ratio (plain momentum SGD). `None` uses
            `exclude_from_weight_decay`. Defaults to `None`.
        **kwargs: further arguments of `keras.optimizers.Optimizer` (`name`, `clipnorm`,
            `global_clipnorm`, `use_ema`, `loss_scale_factor`, ...), except `weight_decay`, which
            is LARS' own.

    Raises:
        ValueError: if `momentum`, `weight_decay` or `eta` is out of range.

    Example:
        ```python
        schedule = WarmupCosineDecay(peak_learning_rate=4.8, warmup_steps=3128, total_steps=31279)
        optimizer = LARS(schedule, momentum=0.9, weight_decay=1e-6)
        model.compile(optimizer=optimizer)
        ```

    References:
        - [You et al., 2017. Large Batch Training of Convolutional
          Networks](https://arxiv.org/abs/1708.03888).
        - [Chen et al., 2020. A Simple Framework for Contrastive Learning of Visual
          Representations](https://arxiv.org/abs/2002.05709), appendix B.1.
    """

    def __init__(
        self,
        learning_rate,
        momentum=0.9,
        weight_decay=0.0,
        eta=0.001,
        nesterov=False,
        exclude_from_weight_decay=("batch_norm", "bias", "head_supervised"),
        exclude_from_layer_adaptation=None,
        name=None,
        **kwargs,
    ):
        # The base class must not see weight_decay: it would add a decoupled decay on top of ours.
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        _check_number("momentum", momentum, low=0.0, high=1.0, high_inclusive=False,
                      hint="Use e.g. 0.9, the SimCLR value.")
        _check_number("weight_decay", weight_decay, low=0.0,
                      hint="Use 0.0 for no decay, or e.g. 1e-6 as in SimCLR.")
        _check_number("eta", eta, low=0.0, low_inclusive=False,
                      hint="Use e.g. 0.001, the SimCLR value.")
        self.momentum = float(momentum)
        self.weight_decay = float(weight_decay)
        self.eta = float(eta)
        self.nesterov = bool(nesterov)
        self.exclude_from_weight_decay = _as_patterns(
            "exclude_from_weight_decay", exclude_from_weight_decay)
        self.exclude_from_layer_adaptation = (
            None
            if exclude_from_layer_adaptation is None
            else _as_patterns("exclude_from_layer_adaptation", exclude_from_layer_adaptation)
        )

    def _adaptation_patterns(self):
        if self.exclude_from_layer_adaptation is None:
            return self.exclude_from_weight_decay
        return self.exclude_from_layer_adaptation

    def uses_weight_decay(self, variable) -> bool:
        """Whether LARS adds `weight_decay * w` to this variable's gradient."""
        return self.weight_decay > 0 and not _matches_any(variable, self.exclude_from_weight_decay)

    def uses_layer_adaptation(self, variable) -> bool:
        """Whether LARS scales this variable's learning rate by the trust ratio."""
        return not _matches_any(variable, self._adaptation_patterns())

    def build(self, variables):
        """Creates one momentum slot per variable and fixes the per-variable exclusions.

        Args:
            variables: list of model variables (Keras variables, whose `path` the exclusion
                patterns are matched against).
        """
        if self.built:
            return
        super().build(variables)
        self._momentums = self.add_optimizer_variables(variables, "momentum")
        # Decided here, where the variables still carry their Keras path: update_step may receive
        # the backend variable (or a per-replica component) instead.
        self._decay_flags = [self.uses_weight_decay(v) for v in variables]
        self._adaptation_flags = [self.uses_layer_adaptation(v) for v in variables]

    def _apply_weight_decay(self, variables):
        # LARS' weight decay is coupled and applied in update_step; the base class' decoupled
        # decay (`w -= lr * weight_decay * w`) must not run as well.
        return

    def update_step(self, gradient, variable, learning_rate):
        """Applies one LARS update to `variable` (see the class docstring for the rule)."""
        index = self._get_variable_index(variable)
        velocity = self._momentums[index]
        learning_rate = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        momentum = ops.cast(self.momentum, variable.dtype)

        if self._decay_flags[index]:
            gradient = ops.add(gradient, ops.multiply(ops.cast(self.weight_decay, variable.dtype), variable))

        if self._adaptation_flags[index]:
            w_norm = ops.sqrt(ops.sum(ops.square(variable)))
            g_norm = ops.sqrt(ops.sum(ops.square(gradient)))
            # Dividing by a norm of 1 where it is 0 keeps the branch not taken finite.
            ratio = self.eta * w_norm / ops.where(ops.greater(g_norm, 0), g_norm, ops.ones_like(g_norm))
            trust_ratio = ops.where(
                ops.greater(w_norm, 0),
                ops.where(ops.greater(g_norm, 0), ratio, ops.ones_like(ratio)),
                ops.ones_like(ratio),
            )
            scaled_lr = ops.multiply(learning_rate, trust_ratio)
        else:
            scaled_lr = learning_rate

        step = ops.multiply(scaled_lr, gradient)
        self.assign(velocity, ops.add(ops.multiply(momentum, velocity), step))
        if self.nesterov:
            update = ops.add(ops.multiply(momentum, velocity), step)
        else:
            update = velocity
        self.assign_sub(variable, update)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "momentum": self.momentum,
                "weight_decay": self.weight_decay,
                "eta": self.eta,
                "nesterov": self.nesterov,
                "exclude_from_weight_decay": list(self.exclude_from_weight_decay),
                "exclude_from_layer_adaptation": (
                    None
                    if self.exclude_from_layer_adaptation is None
                    else list(self.exclude_from_layer_adaptation)
                ),
            }
        )
        return config


def _as_patterns(name, patterns) -> tuple[str, ...]:
    if isinstance(patterns, str) or not all(isinstance(p, str) for p in patterns):
        raise ValueError(
            f"`{name}` must be a list or tuple of substrings of variable paths, e.g. "
            f"('batch_norm', 'bias'). Received: {name}={patterns!r}."
        )
    return tuple(patterns)


def _check_number(name, value, *, low, high=math.inf, low_inclusive=True, high_inclusive=True, hint=""):
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value >= low if low_inclusive else value > low) and (
            value <= high if high_inclusive else value < high
        )
    if not ok:
        if math.isinf(high):
            allowed = f"a number {'>=' if low_inclusive else '>'} {low}"
        else:
            left, right = "[" if low_inclusive else "(", "]" if high_inclusive else ")"
            allowed = f"a number in {left}{low}, {high}{right}"
        raise ValueError(f"`{name}` must be {allowed}. Received: {name}={value!r}. {hint}".rstrip())


@keras.saving.register_keras_serializable(package="simclr_tf")
class WarmupCosineDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to a peak learning rate, then cosine decay to zero (SimCLR's schedule).

    ```python
    lr(step) = peak * step / warmup_steps                                  if step < warmup_steps
             = peak * 0.5 * (1 + cos(pi * (step - warmup_steps) / (total_steps - warmup_steps)))
                                                                           if step < total_steps
             = 0                                                           if step >= total_steps
    ```

    If `warmup_steps >= total_steps` (a short run with a long warm-up), training ends during the
    warm-up: the learning rate follows the ramp and is 0 from `total_steps` on.

    Args:
        peak_learning_rate: float, non-negative. The learning rate at the end of the warm-up.
        warmup_steps: int, non-negative. Length of the linear warm-up; 0 starts at the peak.
        total_steps: int, positive. Step at which the learning rate reaches 0.
        name: str. Name of the schedule. Defaults to `"WarmupCosineDecay"`.

    Raises:
        ValueError: if an argument is out of range.

    Example:
        ```python
        schedule = WarmupCosineDecay(peak_learning_rate=4.8, warmup_steps=3128, total_steps=31279)
        schedule(3128)   # 4.8
        schedule(31279)  # 0.0
        ```

    References:
        - [Goyal et al., 2017. Accurate, Large Minibatch SGD: Training ImageNet in 1
          Hour](https://arxiv.org/abs/1706.02677) (linear warm-up).
        - [Loshchilov & Hutter, 2016. SGDR](https://arxiv.org/abs/1608.03983) (cosine decay).
    """

    def __init__(self, peak_learning_rate, warmup_steps, total_steps, name="WarmupCosineDecay"):
        super().__init__()
        _check_number("peak_learning_rate", peak_learning_rate, low=0.0,
                      hint="It is the learning rate after the warm-up, e.g. 0.3 * batch_size / 256.")
        for arg, value, low in (("warmup_steps", warmup_steps, 0), ("total_steps", total_steps, 1)):
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < low:
                raise ValueError(
                    f"`{arg}` must be an integer >= {low}. Received: {arg}={value!r}. "
                    "`compute_schedule` derives both from epochs and the batch size."
                )
        self.peak_learning_rate = float(peak_learning_rate)
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)
        self.name = name

    def __call__(self, step):
        step = ops.cast(step, "float32")
        peak = ops.cast(self.peak_learning_rate, "float32")
        warmup = float(self.warmup_steps)
        decay_steps = float(max(self.total_steps - self.warmup_steps, 1))
        # The Python-side max() keeps the division finite when warm-up covers the whole run; the
        # cosine branch is then never selected before total_steps.
        warmup_lr = peak * step / warmup if self.warmup_steps > 0 else peak
        progress = ops.clip((step - warmup) / decay_steps, 0.0, 1.0)
        cosine_lr = peak * 0.5 * (1.0 + ops.cos(math.pi * progress))
        learning_rate = ops.where(step < warmup, warmup_lr, cosine_lr)
        return ops.where(step >= float(self.total_steps), ops.zeros_like(learning_rate), learning_rate)

    def get_config(self):
        return {
            "peak_learning_rate": self.peak_learning_rate,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
            "name": self.name,
        }


@dataclasses.dataclass(frozen=True)
class ScheduleSteps:
    """The learning-rate schedule of a run, in steps.

    Attributes:
        peak_learning_rate: learning rate after the warm-up (the base rate, scaled by the batch).
        steps_per_epoch: full batches per epoch (at least 1).
        total_steps: length of training.
        warmup_steps: length of the linear warm-up.
    """

    peak_learning_rate: float
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int


def compute_schedule(
    *,
    base_learning_rate: float,
    learning_rate_scaling: str,
    batch_size: int,
    num_train_examples: int,
    train_epochs: float,
    train_steps: int,
    warmup_epochs: float,
) -> ScheduleSteps:
    """Derives the peak learning rate and the step counts of a run from its config values.

    Args:
        base_learning_rate: float. The configured learning rate before batch-size scaling.
        learning_rate_scaling: str. `"linear"`, `"sqrt"` or `"none"`.
        batch_size: int. Global training batch size.
        num_train_examples: int. Images in the training split.
        train_epochs: float. Epochs to train; used when `train_steps` is 0.
        train_steps: int. Steps to train; wins over `train_epochs` when positive.
        warmup_epochs: float. Epochs of linear warm-up.

    Returns:
        A `ScheduleSteps`.

    Raises:
        ValueError: on an unknown `learning_rate_scaling`, a non-positive `batch_size` or
            `num_train_examples`, negative lengths, or a run of zero steps.

    Example:
        ```python
        compute_schedule(base_learning_rate=0.3, learning_rate_scaling="linear", batch_size=4096,
                         num_train_examples=1281167, train_epochs=100, train_steps=0,
                         warmup_epochs=10)
        # ScheduleSteps(peak_learning_rate=4.8, steps_per_epoch=312, total_steps=31279,
        #               warmup_steps=3128)
        ```
    """
    if learning_rate_scaling not in LEARNING_RATE_SCALINGS:
        raise ValueError(
            f"`learning_rate_scaling` must be one of {', '.join(map(repr, LEARNING_RATE_SCALINGS))}. "
            f"Received: learning_rate_scaling={learning_rate_scaling!r}."
        )
    for name, value in (("batch_size", batch_size), ("num_train_examples", num_train_examples)):
        if not isinstance(value, numbers.Integral) or value <= 0:
            raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}.")
    for name, value in (("train_epochs", train_epochs), ("train_steps", train_steps),
                        ("warmup_epochs", warmup_epochs)):
        if not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
            raise ValueError(f"`{name}` must be a non-negative number. Received: {name}={value!r}.")

    # Learning-rate scaling with the batch size:
    # - "linear": lr = base * B / 256 (Goyal et al. 2017; SimCLR v1 uses base 0.3 with LARS).
    # - "sqrt": lr = base * sqrt(B) (SimCLRv2, appendix: 0.075 * sqrt(B) with LARS), better for
    #   small batches and long training.
    # - "none": lr = base, for optimizers tuned at a fixed batch size.
    if learning_rate_scaling == "linear":
        peak_learning_rate = base_learning_rate * batch_size / 256.0
    elif learning_rate_scaling == "sqrt":
        peak_learning_rate = base_learning_rate * math.sqrt(batch_size)
    else:
        peak_learning_rate = float(base_learning_rate)

    # Only full batches count as an epoch step (the pipeline drops the remainder); a data set
    # smaller than a batch still has one step per epoch.
    steps_per_epoch = max(1, num_train_examples // batch_size)
    # As the original code: the run length rounds up, counting a trailing partial epoch's
    # images, and warm-up rounds to the nearest step.
    if train_steps > 0:
        total_steps = int(train_steps)
    else:
        total_steps = int(math.ceil(num_train_examples * train_epochs / batch_size))
    if total_steps <= 0:
        raise ValueError(
            "The run has no training steps: set `train_epochs > 0` or `train_steps > 0`. "
            f"Received: train_epochs={train_epochs!r}, train_steps={train_steps!r}."
        )
    warmup_steps = int(round(warmup_epochs * num_train_examples / batch_size))
    return ScheduleSteps(
        peak_learning_rate=peak_learning_rate,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        warmup_steps=warmup_steps,
    )


def build_optimizer(name, learning_rate, *, momentum=0.9, weight_decay=0.0, lars_eta=0.001):
    """Creates the optimizer named in the config.

    Only LARS applies `weight_decay` itself; for `momentum` and `adam` the decay is an explicit
    loss term (`weight_decay_loss`), as in the original code.

    Args:
        name: str. `"lars"`, `"momentum"` (SGD with Nesterov momentum) or `"adam"`.
        learning_rate: float or `keras.optimizers.schedules.LearningRateSchedule`.
        momentum: float. Momentum of LARS and SGD. Defaults to `0.9`.
        weight_decay: float. LARS' coupled weight decay. Defaults to `0.0`.
        lars_eta: float. LARS' trust coefficient. Defaults to `0.001`.

    Returns:
        A `keras.optimizers.Optimizer`.

    Raises:
        ValueError: on an unknown `name`.

    Example:
        ```python
        optimizer = build_optimizer("lars", WarmupCosineDecay(4.8, 3128, 31279), weight_decay=1e-6)
        ```
    """
    if name == "lars":
        return LARS(learning_rate, momentum=momentum, weight_decay=weight_decay, eta=lars_eta)
    if name == "momentum":
        return keras.optimizers.SGD(learning_rate, momentum=float(momentum), nesterov=True)
    if name == "adam":
        return keras.optimizers.Adam(learning_rate)
    raise ValueError(
        f"`optimizer` must be one of {', '.join(map(repr, OPTIMIZERS))}. Received: optimizer={name!r}."
    )


def weight_decay_loss(variables, *, optimizer_name, weight_decay):
    """The explicit L2 weight-decay term the model adds to its loss.

    As the original SimCLR code: with LARS, which decays the other weights itself, only the
    supervised head's weights (paths containing `"head_supervised"`, biases excepted) are decayed
    here; with `momentum` and `adam` every variable except batch-norm parameters (`"batch_norm"`
    in the path) is. The term is `weight_decay * sum(tf.nn.l2_loss(v))`, with
    `l2_loss(v) = sum(v ** 2) / 2`.

    Args:
        variables: iterable of variables, usually `model.trainable_variables`.
        optimizer_name: str. `"lars"`, `"momentum"` or `"adam"`.
        weight_decay: float. The decay coefficient lambda.

    Returns:
        A float32 scalar tensor; 0.0 when `weight_decay` is 0 or no variable matches.

    Raises:
        ValueError: on an unknown `optimizer_name`.

    Example:
        ```python
        loss = contrastive_loss + weight_decay_loss(
            model.trainable_variables, optimizer_name="lars", weight_decay=1e-6)
        ```
    """
    if optimizer_name not in OPTIMIZERS:
        raise ValueError(
            f"`optimizer_name` must be one of {', '.join(map(repr, OPTIMIZERS))}. "
            f"Received: optimizer_name={optimizer_name!r}."
        )
    if optimizer_name == "lars":
        decayed = [
            v for v in variables
            if _matches_any(v, (_SUPERVISED_HEAD,)) and not _matches_any(v, ("bias",))
        ]
    else:
        decayed = [v for v in variables if not _matches_any(v, (_BATCH_NORM,))]
    if not weight_decay or not decayed:
        return tf.constant(0.0, tf.float32)
    l2 = tf.add_n([tf.nn.l2_loss(tf.cast(v, tf.float32)) for v in decayed])
    return tf.cast(weight_decay, tf.float32) * l2
