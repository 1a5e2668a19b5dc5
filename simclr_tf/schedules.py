"""SimCLR's learning-rate schedule: linear warm-up, cosine decay to zero, and its step counts.

`compute_schedule` turns a run's epochs, batch size and base learning rate into steps and a peak
rate (one pure, tested function); `WarmupCosineDecay` is the schedule over those steps.

References:
    - [Chen et al., 2020. A Simple Framework for Contrastive Learning of Visual
      Representations](https://arxiv.org/abs/2002.05709) (SimCLR), appendix B.1 and B.6.
    - [Chen et al., 2020. Big Self-Supervised Models are Strong Semi-Supervised
      Learners](https://arxiv.org/abs/2006.10029) (SimCLRv2), square-root learning-rate scaling.
    - [Goyal et al., 2017. Accurate, Large Minibatch SGD](https://arxiv.org/abs/1706.02677)
      (linear warm-up and scaling).
    - [Loshchilov & Hutter, 2016. SGDR: Stochastic Gradient Descent with Warm
      Restarts](https://arxiv.org/abs/1608.03983) (cosine decay).
"""

from __future__ import annotations

import dataclasses
import math
import numbers

import keras
from keras import ops

from simclr_tf.config import LEARNING_RATE_SCALINGS
from simclr_tf.validation import check_number, check_one_of


@keras.saving.register_keras_serializable(package="simclr_tf")
class WarmupCosineDecay(keras.optimizers.schedules.CosineDecay):
    """Linear warm-up to a peak learning rate, then cosine decay to zero (SimCLR's schedule).

    ```python
    lr(step) = peak * step / warmup_steps                                  if step < warmup_steps
             = peak * 0.5 * (1 + cos(pi * (step - warmup_steps) / (total_steps - warmup_steps)))
                                                                           if step < total_steps
             = 0                                                           if step >= total_steps
    ```

    If `warmup_steps >= total_steps` (a short run with a long warm-up), training ends during the
    warm-up: the learning rate follows the ramp and is 0 from `total_steps` on.

    It is Keras' `CosineDecay(0.0, decay_steps=total_steps - warmup_steps, warmup_target=peak,
    warmup_steps=warmup_steps)` with the rate held at 0 from `total_steps` on, under SimCLR's
    names and with SimCLR's argument checks.

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
        check_number("peak_learning_rate", peak_learning_rate, low=0.0,
                      hint="It is the learning rate after the warm-up, e.g. 0.3 * batch_size / 256.")
        for arg, value, low in (("warmup_steps", warmup_steps, 0), ("total_steps", total_steps, 1)):
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < low:
                raise ValueError(
                    f"`{arg}` must be an integer >= {low}. Received: {arg}={value!r}. "
                    "`compute_schedule` derives both from epochs and the batch size."
                )
        super().__init__(
            initial_learning_rate=0.0,
            decay_steps=max(int(total_steps) - int(warmup_steps), 1),
            alpha=0.0,
            name=name,
            warmup_target=float(peak_learning_rate),
            warmup_steps=int(warmup_steps),
        )
        self.peak_learning_rate = float(peak_learning_rate)
        self.total_steps = int(total_steps)

    def __call__(self, step):
        # Keras' CosineDecay with a warm-up is exactly the original's curve while training runs
        # (tested against the formula). It would continue the ramp past `total_steps` when the
        # warm-up is longer than the run; the original's rate is 0 from `total_steps` on.
        learning_rate = super().__call__(step)
        done = ops.greater_equal(ops.cast(step, learning_rate.dtype), float(self.total_steps))
        return ops.where(done, ops.zeros_like(learning_rate), learning_rate)

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
    check_one_of("learning_rate_scaling", learning_rate_scaling, LEARNING_RATE_SCALINGS)
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


