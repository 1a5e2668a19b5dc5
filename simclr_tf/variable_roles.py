"""Which variables are normalisation parameters, biases or the supervised head's (`VariableRoles`), and
the explicit weight-decay loss term that depends on it (`weight_decay_loss`).

Roles are decided through the layers that own the variables (`VariableRoles.of(model)`): every
variable of a normalisation layer (any `keras.layers.BatchNormalization`, our fused subclass included,
`LayerNormalization`, `GroupNormalization`), every layer's `bias`, and the supervised head's
variables. Where a name is all there is, the original code's name rule applies, widened to Keras'
own naming: `NAME_RULE`, substrings of variable paths. LARS, which uses these roles, is in
`simclr_tf.optimizers` (which re-exports the names here).
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from simclr_tf.config import OPTIMIZERS
from simclr_tf.validation import check_one_of

# The original code's exclusion by name (batch norm, biases, the supervised head), plus Keras' own
# naming of batch norms: `keras.applications` names them "<block>_bn" ("conv1_bn/gamma"), and an
# unnamed one is "batch_normalization[_N]", which "batch_norm" already matches. Used where a
# variable's name is all there is; models hand over their `VariableRoles` instead.
_NAMES_BY_ROLE = {
    "normalization": ("batch_norm", "_bn/"),
    "bias": ("bias",),
    "supervised_head": ("head_supervised",),
}
NAME_RULE = tuple(pattern for patterns in _NAMES_BY_ROLE.values() for pattern in patterns)
_NORMALIZATION_LAYERS = (
    keras.layers.BatchNormalization,  # also our fused subclass and synchronised batch norm
    keras.layers.LayerNormalization,
    keras.layers.GroupNormalization,
)


def _variable_names(variable) -> tuple[str, ...]:
    """The strings exclusion patterns are matched against: the Keras 3 path and the name."""
    return tuple(name for name in (getattr(variable, "path", None), variable.name) if name)


def matches_any(variable, patterns) -> bool:
    """Whether a substring of `patterns` is in the variable's path or name (the name rule's test)."""
    return any(pattern in name for pattern in patterns for name in _variable_names(variable))


@dataclasses.dataclass(frozen=True)
class VariableRoles:
    """Which variables are normalisation parameters, biases, or the supervised head's.

    Holds variable identities (`id`), so it answers for the very variables it was made from.

    Attributes:
        normalization: ids of the variables of normalisation layers (gamma, beta, moving
            statistics).
        bias: ids of the layers' `bias` variables.
        supervised_head: ids of the supervised head's variables.
    """

    normalization: frozenset = frozenset()
    bias: frozenset = frozenset()
    supervised_head: frozenset = frozenset()

    @classmethod
    def of(cls, layer, *, supervised_head=None) -> VariableRoles:
        """The roles of every variable of `layer` (a model or layer), found through its layers.

        Args:
            layer: a built `keras.layers.Layer` or `keras.Model`.
            supervised_head: layer or None. Its variables are the supervised head's.

        Example:
            ```python
            roles = VariableRoles.of(keras.applications.ResNet50(weights=None))
            len(roles.normalization)  # 212: gamma, beta and two moving statistics of 53 layers
            ```
        """
        normalization, bias = set(), set()
        for sub in layer._flatten_layers(include_self=True, recursive=True):
            if isinstance(sub, _NORMALIZATION_LAYERS):
                normalization.update(id(v) for v in sub.weights)
            sub_bias = getattr(sub, "bias", None)
            if isinstance(sub_bias, keras.Variable):
                bias.add(id(sub_bias))
        head = frozenset(id(v) for v in (supervised_head.weights if supervised_head is not None else ()))
        return cls(frozenset(normalization), frozenset(bias), head)

    @classmethod
    def from_names(cls, variables) -> VariableRoles:
        """The name rule `NAME_RULE`: `batch_norm` or `_bn/`, `bias`, `head_supervised` in the path."""
        variables = list(variables)
        pick = lambda patterns: frozenset(id(v) for v in variables if matches_any(v, patterns))
        return cls(**{role: pick(patterns) for role, patterns in _NAMES_BY_ROLE.items()})

    def is_normalization(self, variable) -> bool:
        return id(variable) in self.normalization

    def is_bias(self, variable) -> bool:
        return id(variable) in self.bias

    def in_supervised_head(self, variable) -> bool:
        return id(variable) in self.supervised_head

    def lars_excluded(self, variable) -> bool:
        """No LARS decay and no trust ratio: normalisation parameters, biases, supervised head."""
        return self.is_normalization(variable) or self.is_bias(variable) or self.in_supervised_head(variable)


def weight_decay_loss(variables, *, optimizer_name, weight_decay, roles: VariableRoles | None = None):
    """The explicit L2 weight-decay term the model adds to its loss.

    As the original SimCLR code: with LARS, which decays the other weights itself, only the
    supervised head's weights (biases excepted) are decayed here; with `momentum` and `adam`
    every variable except normalisation parameters is. The term is
    `weight_decay * sum(tf.nn.l2_loss(v))`, with `l2_loss(v) = sum(v ** 2) / 2`.

    Args:
        variables: iterable of variables, usually `model.trainable_variables`.
        optimizer_name: str. `"lars"`, `"momentum"` or `"adam"`.
        weight_decay: float. The decay coefficient lambda.
        roles: `VariableRoles` or None. Which variables are which (`VariableRoles.of(model,
            supervised_head=...)`); None uses the original's name rule (`NAME_RULE`).

    Returns:
        A float32 scalar tensor; 0.0 when `weight_decay` is 0 or no variable matches.

    Raises:
        ValueError: on an unknown `optimizer_name`.

    Example:
        ```python
        loss = contrastive_loss + weight_decay_loss(
            model.trainable_variables, optimizer_name="lars", weight_decay=1e-6,
            roles=VariableRoles.of(model, supervised_head=model.supervised_head))
        ```
    """
    check_one_of("optimizer_name", optimizer_name, OPTIMIZERS)
    variables = list(variables)
    roles = roles if roles is not None else VariableRoles.from_names(variables)
    if optimizer_name == "lars":
        decayed = [v for v in variables if roles.in_supervised_head(v) and not roles.is_bias(v)]
    else:
        decayed = [v for v in variables if not roles.is_normalization(v)]
    if not weight_decay or not decayed:
        return tf.constant(0.0, tf.float32)
    l2 = tf.add_n([tf.nn.l2_loss(tf.cast(v, tf.float32)) for v in decayed])
    return tf.cast(weight_decay, tf.float32) * l2
