"""LARS, weight decay, and which variables they leave alone (decided by the variable's role).

SimCLR trains with LARS (layer-wise adaptive rate scaling) and an L2 weight decay that LARS applies
itself (coupled: added to the gradient before the trust ratio), except for the supervised head,
whose decay is an explicit loss term (`weight_decay_loss`). Batch-norm parameters and biases get
neither decay nor adaptation, as in the original code.

Which variables those are is decided by role, through the layers that own them
(`VariableRoles.of(model)`): every variable of a normalisation layer (any
`keras.layers.BatchNormalization`, our fused subclass included, `LayerNormalization`,
`GroupNormalization`), every layer's `bias`, and the supervised head's variables. So a
`keras.applications` backbone or a batch norm named "bn" is treated right once the optimizer knows
the model: `SimCLRModel` hands its roles to the optimizer when compiled or built, and any other
Keras model is named with `LARS(..., exclude_from=model)`. Where a name is all there is (LARS on
bare variables), the original code's name rule applies, widened to Keras' own naming: `NAME_RULE`,
substrings of variable paths; LARS warns when it has to fall back to it.

The roles, the name rule and the explicit decay term (`weight_decay_loss`) are in
`simclr_tf.variable_roles`; this module re-exports them.

The learning-rate schedule is in `simclr_tf.schedules`.

References:
    - [You et al., 2017. Large Batch Training of Convolutional
      Networks](https://arxiv.org/abs/1708.03888) (LARS).
    - [Chen et al., 2020. A Simple Framework for Contrastive Learning of Visual
      Representations](https://arxiv.org/abs/2002.05709) (SimCLR), appendix B.1.
"""

from __future__ import annotations

import warnings

import keras
from keras import ops

from simclr_tf.config import OPTIMIZERS
from simclr_tf.validation import check_number, check_one_of
from simclr_tf.variable_roles import NAME_RULE, VariableRoles, matches_any, weight_decay_loss

# `VariableRoles`, `NAME_RULE` and `weight_decay_loss` live in `simclr_tf.variable_roles`; re-exported.
__all__ = ["LARS", "NAME_RULE", "VariableRoles", "build_optimizer", "weight_decay_loss"]


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

    Whether decay or adaptation applies to a variable is decided once, in `build` (again if
    `set_variable_roles` comes later), so the update itself has no Python branching on tensors and
    runs inside `tf.function` and XLA (`jit_compile=True`). Normalisation parameters, biases and
    the supervised head are excluded by role: the roles of the layers of `exclude_from`, or those a
    model hands over with `set_variable_roles` (`SimCLRModel` does, in `compile` and `build`).
    Without either (bare variables), by the name rule `NAME_RULE`, with a warning.

    Args:
        learning_rate: float, a `keras.optimizers.schedules.LearningRateSchedule`, or a callable
            taking no arguments. The learning rate before the trust ratio.
        momentum: float in `[0, 1)`. Momentum of the velocity. Defaults to `0.9`.
        weight_decay: float, non-negative. Coupled L2 weight decay. Defaults to `0.0`.
        eta: float, positive. Trust coefficient of the layer-wise adaptation. Defaults to
            `0.001`.
        nesterov: bool. Use Nesterov momentum. Defaults to `False`.
        exclude_from_weight_decay: sequence of str or `None`. Variables whose path or name
            contains one of these substrings receive no weight decay, on top of the roles a
            model hands over. `None` (the default) excludes by role only, or by `NAME_RULE`
            (`("batch_norm", "bias", "head_supervised")`) where no roles were given. This
            replaces the base class' `exclude_from_weight_decay()` method, which configures the
            decoupled decay LARS does not use.
        exclude_from_layer_adaptation: sequence of str or `None`. Variables matching one of these
            substrings get no trust ratio (plain momentum SGD), on top of the roles. `None` uses
            `exclude_from_weight_decay`. Defaults to `None`.
        exclude_from: `keras.layers.Layer` (usually a `keras.Model`) or `None`. The model whose
            variables this optimizer trains: its normalisation layers' variables and its layers'
            biases get neither decay nor adaptation, whatever their names. Read when the optimizer
            is built, so the model may still be unbuilt here. Not part of `get_config`: pass it
            again to a restored optimizer. Unneeded for a `SimCLRModel`, which hands its roles
            over itself. Defaults to `None`.
        **kwargs: further arguments of `keras.optimizers.Optimizer` (`name`, `clipnorm`,
            `global_clipnorm`, `use_ema`, `loss_scale_factor`, ...), except `weight_decay`, which
            is LARS' own.

    Raises:
        ValueError: if `momentum`, `weight_decay` or `eta` is out of range, or `exclude_from` is
            not a Keras layer or model.

    Example:
        ```python
        schedule = WarmupCosineDecay(peak_learning_rate=4.8, warmup_steps=3128, total_steps=31279)
        optimizer = LARS(schedule, momentum=0.9, weight_decay=1e-6)
        model.compile(optimizer=optimizer)  # a SimCLRModel hands over its variable roles

        backbone = keras.applications.ResNet50(weights=None, include_top=False, pooling="avg")
        backbone.compile(optimizer=LARS(0.1, weight_decay=1e-6, exclude_from=backbone), loss="mse")
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
        exclude_from_weight_decay=None,
        exclude_from_layer_adaptation=None,
        exclude_from=None,
        name=None,
        **kwargs,
    ):
        # The base class must not see weight_decay: it would add a decoupled decay on top of ours.
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        check_number("momentum", momentum, low=0.0, high=1.0, high_inclusive=False,
                      hint="Use e.g. 0.9, the SimCLR value.")
        check_number("weight_decay", weight_decay, low=0.0,
                      hint="Use 0.0 for no decay, or e.g. 1e-6 as in SimCLR.")
        check_number("eta", eta, low=0.0, low_inclusive=False,
                      hint="Use e.g. 0.001, the SimCLR value.")
        self.momentum = float(momentum)
        self.weight_decay = float(weight_decay)
        self.eta = float(eta)
        self.nesterov = bool(nesterov)
        self._roles = None
        if exclude_from is not None and not isinstance(exclude_from, keras.layers.Layer):
            raise ValueError(
                "`exclude_from` must be the Keras model (or layer) whose variables LARS trains, "
                "e.g. LARS(0.1, exclude_from=model), or None. "
                f"Received: exclude_from={exclude_from!r} of type {type(exclude_from).__name__}."
            )
        # A closure, not an attribute: the optimizer must not track (and checkpoint) the model.
        self._roles_of_model = (None if exclude_from is None
                                else lambda: VariableRoles.of(exclude_from))
        self.exclude_from_weight_decay = (
            None
            if exclude_from_weight_decay is None
            else _as_patterns("exclude_from_weight_decay", exclude_from_weight_decay)
        )
        self.exclude_from_layer_adaptation = (
            None
            if exclude_from_layer_adaptation is None
            else _as_patterns("exclude_from_layer_adaptation", exclude_from_layer_adaptation)
        )

    def _adaptation_patterns(self):
        if self.exclude_from_layer_adaptation is None:
            return self.exclude_from_weight_decay
        return self.exclude_from_layer_adaptation

    def _active_roles(self) -> VariableRoles | None:
        """The roles handed over, else those of `exclude_from`'s layers now, else None (names)."""
        if self._roles is not None:
            return self._roles
        return None if self._roles_of_model is None else self._roles_of_model()

    @staticmethod
    def _excluded(variable, patterns, roles) -> bool:
        if roles is not None:
            return roles.lars_excluded(variable) or (
                patterns is not None and matches_any(variable, patterns))
        return matches_any(variable, NAME_RULE if patterns is None else patterns)

    def set_variable_roles(self, roles: VariableRoles | None) -> None:
        """Excludes by role from now on (see `VariableRoles`).

        `None` goes back to the roles of `exclude_from` if one was given, to names otherwise.

        Called by `SimCLRModel` in `compile` and `build`; if the optimizer is already built, the
        per-variable decisions are made again.
        """
        self._roles = roles
        if self.built:
            self._decide(self._trainable_variables)

    def uses_weight_decay(self, variable) -> bool:
        """Whether LARS adds `weight_decay * w` to this variable's gradient."""
        return self._uses_weight_decay(variable, self._active_roles())

    def uses_layer_adaptation(self, variable) -> bool:
        """Whether LARS scales this variable's learning rate by the trust ratio."""
        return self._uses_layer_adaptation(variable, self._active_roles())

    def _uses_weight_decay(self, variable, roles) -> bool:
        return self.weight_decay > 0 and not self._excluded(variable, self.exclude_from_weight_decay, roles)

    def _uses_layer_adaptation(self, variable, roles) -> bool:
        return not self._excluded(variable, self._adaptation_patterns(), roles)

    def build(self, variables):
        """Creates one momentum slot per variable and fixes the per-variable exclusions.

        Args:
            variables: list of model variables (Keras variables).
        """
        if self.built:
            return
        super().build(variables)
        self._momentums = self.add_optimizer_variables(variables, "momentum")
        self._decide(self._trainable_variables)  # the base class' copy of `variables`

    def _decide(self, variables):
        # Decided here, on the Keras variables: update_step may receive the backend variable (or a
        # per-replica component) instead.
        roles = self._active_roles()  # exclude_from's layers are built by now: they own `variables`
        if roles is None and None in (self.exclude_from_weight_decay, self._adaptation_patterns()):
            warnings.warn(
                "LARS knows no model, so it leaves variables out of weight decay and the trust "
                f"ratio by their names only (the name rule {NAME_RULE}), which misses normalisation "
                "layers and biases named otherwise. Pass the model: LARS(..., exclude_from=model) "
                "(a SimCLRModel hands its roles over itself when compiled).",
                stacklevel=3,
            )
        self._decay_flags = [self._uses_weight_decay(v, roles) for v in variables]
        self._adaptation_flags = [self._uses_layer_adaptation(v, roles) for v in variables]

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
                "exclude_from_weight_decay": (
                    None
                    if self.exclude_from_weight_decay is None
                    else list(self.exclude_from_weight_decay)
                ),
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
        schedule = simclr_tf.schedules.WarmupCosineDecay(4.8, 3128, 31279)
        optimizer = build_optimizer("lars", schedule, weight_decay=1e-6)
        ```
    """
    if name == "lars":
        return LARS(learning_rate, momentum=momentum, weight_decay=weight_decay, eta=lars_eta)
    if name == "momentum":
        return keras.optimizers.SGD(learning_rate, momentum=float(momentum), nesterov=True)
    if name == "adam":
        return keras.optimizers.Adam(learning_rate)
    check_one_of("optimizer", name, OPTIMIZERS)
    raise AssertionError(f"no optimizer built for {name!r}")  # unreachable: every name is handled
