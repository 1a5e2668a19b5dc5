"""The heads of SimCLR: the projection head g(.) of the contrastive loss and the supervised head.

The projection head follows the original SimCLR(v2) TensorFlow code (google-research/simclr,
`model.py`): every layer is a dense layer without bias followed by batch norm (`epsilon=1e-5`,
`BATCH_NORM_EPSILON` as in the encoder), dense kernels start from `RandomNormal(stddev=0.01)`, and

- `none`: the identity (the contrastive loss sees the encoder output itself);
- `linear`: one dense layer to `proj_out_dim` and batch norm without `beta` (`center=False`),
  no ReLU;
- `nonlinear`: `num_proj_layers` layers. The first `num_proj_layers - 1` keep the input width
  and end in batch norm (with `beta`) and ReLU; the last maps to `proj_out_dim` and ends in batch
  norm without `beta` and without ReLU. SimCLRv1 uses 2 layers, SimCLRv2 3.

The head also returns every intermediate output, because SimCLRv2 fine-tunes the supervised head
from the middle of the projection head (`ft_proj_selector`; 0 is the encoder output).

Batch-norm layer names contain `batch_norm` and the supervised head is named `head_supervised` by
default. The names stay, because checkpoints store the variables under them and the original
code's name rule still serves bare variables outside any layer, but weight decay no longer relies
on them: the LARS optimizer keeps batch-norm variables out of it by their layer's type, and the
supervised head by its role as the model's supervised head, whatever its name.

References:
    - [Chen et al., 2020. A Simple Framework for Contrastive Learning of Visual Representations](
      https://arxiv.org/abs/2002.05709)
    - [Chen et al., 2020. Big Self-Supervised Models are Strong Semi-Supervised Learners](
      https://arxiv.org/abs/2006.10029)
"""

from __future__ import annotations

import keras
from keras import layers, ops

from simclr_tf.config import PROJ_HEAD_MODES, ModelConfig
from simclr_tf.models.batch_norm import check_batch_norm_decay, make_batch_norm
from simclr_tf.validation import check_one_of, check_positive_int


def _dense_initializer():
    # The original's tf.keras.initializers.RandomNormal(stddev=0.01) for every head kernel.
    return keras.initializers.RandomNormal(mean=0.0, stddev=0.01)


def _check_2d(layer_name, input_shape):
    if len(input_shape) != 2 or input_shape[-1] is None:
        raise ValueError(
            f"`{layer_name}` expects pooled features of shape (batch_size, dim) with a known `dim`, "
            f"e.g. the encoder's `final_avg_pool`. Received input shape: {tuple(input_shape)}."
        )


@keras.saving.register_keras_serializable(package="simclr_tf")
class ProjectionHead(keras.layers.Layer):
    """SimCLR's projection head g(.): maps encoder features to the space of the contrastive loss.

    Args:
        proj_head_mode: str. `"none"` (identity), `"linear"` (one dense layer and batch norm) or
            `"nonlinear"` (an MLP of `num_proj_layers` layers). Defaults to `"nonlinear"`.
        proj_out_dim: int. Width of the projection (the last layer). Defaults to `128`.
        num_proj_layers: int. Number of layers in `"nonlinear"` mode (2 in SimCLRv1, 3 in
            SimCLRv2); ignored by the other modes. Defaults to `2`.
        batch_norm_decay: float. Batch-norm moving-average momentum. Defaults to `0.9`.
        global_bn: bool. Synchronise batch-norm statistics across replicas
            (`BatchNormalization(synchronized=True)`; the same as without on one replica).
            Defaults to `True`.
        **kwargs: base layer arguments (`name`, `dtype`, `trainable`, ...).

    Call arguments:
        inputs: tensor of shape `(batch_size, dim)`.
        training: bool. Batch statistics (True) or moving averages (False) in batch norm.

    Returns:
        A tuple `(projection, hiddens)`. `projection` has shape `(batch_size, proj_out_dim)`
        (`(batch_size, dim)` in `"none"` mode). `hiddens` is the list `[inputs, out_1, ...,
        out_L]` of the input and every layer's output (after its ReLU, if any), so `hiddens[i]`
        is the input of layer `i + 1` and `hiddens[-1]` is `projection`. `L` is 0, 1 and
        `num_proj_layers` in the three modes.

    Raises:
        ValueError: if an argument is outside its allowed values, or (at build time) the input
            is not of shape `(batch_size, dim)`.

    Example:

    >>> head = ProjectionHead("nonlinear", proj_out_dim=128, num_proj_layers=3)
    >>> projection, hiddens = head(keras.ops.ones((4, 2048)), training=False)
    >>> tuple(projection.shape), len(hiddens), tuple(hiddens[1].shape)
    ((4, 128), 4, (4, 2048))

    References:
        - [Chen et al., 2020 (SimCLR), section 2.1 and appendix B.4](https://arxiv.org/abs/2002.05709)
        - [Chen et al., 2020 (SimCLRv2), section 2](https://arxiv.org/abs/2006.10029)
    """

    def __init__(
        self,
        proj_head_mode=ModelConfig.proj_head_mode,  # the defaults are the config's
        proj_out_dim=ModelConfig.proj_out_dim,
        num_proj_layers=ModelConfig.num_proj_layers,
        batch_norm_decay=ModelConfig.batch_norm_decay,
        global_bn=ModelConfig.global_bn,
        **kwargs,
    ):
        check_one_of("proj_head_mode", proj_head_mode, PROJ_HEAD_MODES)
        check_positive_int("proj_out_dim", proj_out_dim, hint="SimCLR uses 128.")
        check_positive_int("num_proj_layers", num_proj_layers, hint="SimCLRv1 uses 2, SimCLRv2 3.")
        check_batch_norm_decay(batch_norm_decay)
        super().__init__(**kwargs)
        self.proj_head_mode = proj_head_mode
        self.proj_out_dim = proj_out_dim
        self.num_proj_layers = num_proj_layers
        self.batch_norm_decay = batch_norm_decay
        self.global_bn = global_bn
        # Created in build(): the hidden layers' width is the input's, known only then.
        self.dense_layers = []
        self.batch_norm_layers = []

    @property
    def num_layers(self):
        """Number of dense + batch-norm layers: 0, 1 or `num_proj_layers` by mode."""
        return {"none": 0, "linear": 1, "nonlinear": self.num_proj_layers}[self.proj_head_mode]

    def _layer_specs(self, input_dim):
        """`(prefix, units, center, relu)` of every layer, as in the original."""
        if self.proj_head_mode == "linear":
            return [("l_0", self.proj_out_dim, False, False)]
        specs = []
        for j in range(self.num_layers):
            last = j == self.num_layers - 1
            # Middle layers keep the width and have beta + ReLU; the last has neither.
            specs.append((f"nl_{j}", self.proj_out_dim if last else input_dim, not last, not last))
        return specs

    def build(self, input_shape):
        _check_2d("ProjectionHead", input_shape)
        dense_layers, batch_norm_layers = [], []
        shape = tuple(input_shape)
        for prefix, units, center, _ in self._layer_specs(int(input_shape[-1])):
            dense = layers.Dense(
                units,
                use_bias=False,
                kernel_initializer=_dense_initializer(),
                name=f"{prefix}_dense",
                dtype=self.dtype_policy,
            )
            # Keras' own layer: the fused kernel only serves 4-D inputs.
            batch_norm = make_batch_norm(f"{prefix}_batch_norm", self.batch_norm_decay,
                                         self.global_bn, center=center, fused=False,
                                         dtype=self.dtype_policy)
            dense.build(shape)
            shape = dense.compute_output_shape(shape)
            batch_norm.build(shape)
            dense_layers.append(dense)
            batch_norm_layers.append(batch_norm)
            # One attribute per layer as well: TensorFlow checkpoints do not follow layers that
            # are only held in a Python list, and the head's weights and batch-norm statistics
            # must be saved and restored.
            setattr(self, f"{prefix}_dense", dense)
            setattr(self, f"{prefix}_batch_norm", batch_norm)
        self.dense_layers = dense_layers
        self.batch_norm_layers = batch_norm_layers
        self.built = True

    def call(self, inputs, training=None):
        hiddens = [inputs]  # hiddens[i] is the input of layer i + 1
        x = inputs
        for j, (dense, batch_norm) in enumerate(zip(self.dense_layers, self.batch_norm_layers,
                                                    strict=True)):
            x = batch_norm(dense(x), training=training)  # (B, units)
            if self.proj_head_mode == "nonlinear" and j < self.num_layers - 1:
                x = ops.relu(x)
            hiddens.append(x)
        return x, hiddens

    def select(self, hiddens, ft_proj_selector):
        """Returns `hiddens[ft_proj_selector]`, the input of SimCLRv2's fine-tuning head.

        Args:
            hiddens: list. The second output of `call`.
            ft_proj_selector: int. 0 is the encoder output (SimCLRv1 fine-tuning), `i` the output
                of the head's `i`-th layer (SimCLRv2 fine-tunes from 1, the middle of a 3-layer
                head).

        Returns:
            The selected tensor, shape `(batch_size, dim_i)`.

        Raises:
            ValueError: if `ft_proj_selector` is not an index of `hiddens`.
        """
        valid = isinstance(ft_proj_selector, int) and not isinstance(ft_proj_selector, bool)
        if not valid or not 0 <= ft_proj_selector < len(hiddens):
            raise ValueError(
                f"`ft_proj_selector` must be an integer in [0, {len(hiddens) - 1}] for this "
                f"{self.proj_head_mode!r} projection head with {self.num_layers} layer(s) (0 is the "
                f"encoder output). Received: ft_proj_selector={ft_proj_selector!r}."
            )
        return hiddens[ft_proj_selector]

    def compute_output_shape(self, input_shape):
        _check_2d("ProjectionHead", input_shape)
        shapes = [tuple(input_shape)]
        for _, units, _, _ in self._layer_specs(int(input_shape[-1])):
            shapes.append((input_shape[0], units))
        return shapes[-1], shapes

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "proj_head_mode": self.proj_head_mode,
                "proj_out_dim": self.proj_out_dim,
                "num_proj_layers": self.num_proj_layers,
                "batch_norm_decay": self.batch_norm_decay,
                "global_bn": self.global_bn,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="simclr_tf")
class SupervisedHead(keras.layers.Layer):
    """The supervised (linear classification) head: one dense layer with bias, returning logits.

    During pretraining it sits on stop-gradient encoder features (linear evaluation while
    pretraining); in fine-tuning on `ProjectionHead.select(hiddens, ft_proj_selector)`. Its
    variable paths contain the layer's name, `head_supervised` by default (the original's name,
    kept for checkpoints); the optimizer keeps it out of weight decay as the model's supervised
    head, not by its name.

    Args:
        num_classes: int. Number of classes (logits).
        zero_init: bool. Start from a zero kernel (logits are 0 at initialisation) instead of
            `RandomNormal(stddev=0.01)`, as the original's `zero_init_logits_layer`. The bias
            always starts at zero. Defaults to `False`.
        **kwargs: base layer arguments (`name` defaults to `"head_supervised"`, `dtype`, ...).

    Call arguments:
        inputs: tensor of shape `(batch_size, dim)`.
        training: bool. Unused; accepted for a uniform call signature.

    Returns:
        Logits of shape `(batch_size, num_classes)`.

    Raises:
        ValueError: if `num_classes` is not a positive integer.

    Example:

    >>> head = SupervisedHead(10, zero_init=True)
    >>> float(keras.ops.max(keras.ops.abs(head(keras.ops.ones((2, 512))))))
    0.0
    """

    def __init__(self, num_classes, zero_init=False, **kwargs):
        check_positive_int("num_classes", num_classes, hint="Use the number of labels of the data set.")
        kwargs.setdefault("name", "head_supervised")
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.zero_init = zero_init
        self.dense = layers.Dense(
            num_classes,
            use_bias=True,
            kernel_initializer="zeros" if zero_init else _dense_initializer(),
            bias_initializer="zeros",
            name="logits",
            dtype=self.dtype_policy,
        )

    def build(self, input_shape):
        _check_2d("SupervisedHead", input_shape)
        self.dense.build(input_shape)
        self.built = True

    def call(self, inputs, training=None):
        return self.dense(inputs)  # (B, num_classes)

    def compute_output_shape(self, input_shape):
        return (*tuple(input_shape)[:-1], self.num_classes)

    def get_config(self):
        config = super().get_config()
        config.update({"num_classes": self.num_classes, "zero_init": self.zero_init})
        return config
