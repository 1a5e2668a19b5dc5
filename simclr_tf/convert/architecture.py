"""The architecture of an original SimCLR model, read from the structure of its checkpoint.

Nothing is taken from flags or names: the depth comes from the number of blocks in each block
group, the width from the first block's channels, selective kernels, squeeze-excitation and the
stem from the layers that are there (and their ratios from the shapes), the projection head from
its layers, the number of classes from the supervised head. Alongside, `read_architecture` lists
every layer of the original as a `Piece`: which layer of simclr_tf it becomes, found by its place
in the original's structure (block group `g`, block `b`, position in the block's layer list).

The original's layer lists (`tf2/resnet.py`, `tf2/model.py`), which this module walks:

- `resnet_model/initial_conv_relu_max_pool`: one 7x7 (ImageNet) or 3x3 (CIFAR) convolution, or
  the ResNet-D stem of three 3x3 convolutions when selective kernels are on; batch norms between.
- `resnet_model/block_groups/<g>/layers/<b>`: a bottleneck block (`conv_relu_dropblock_layers`:
  1x1, 3x3 or selective kernel, 1x1, each with batch norm; `projection_layers` for the
  shortcut) or a basic block (`conv2d_bn_layers`, `shortcut_layers`); squeeze-excitation as the
  last layer of the list (bottleneck) or as `se_layer` (basic).
- `_projection_head/linear_layers/<j>`: a dense layer without bias and a batch norm (`bn_relu/bn`);
  `supervised_head/linear_layer/dense`: the logits (kernel and bias).
"""

from __future__ import annotations

import dataclasses

from simclr_tf.convert.reader import ConversionError, Node, OriginalCheckpoint
from simclr_tf.models.resnet import RESNET_BLOCKS

_SK_MIN_DIM = 32  # the original's `SK_Conv2D(min_dim=32)`
_SK_RATIOS = (0.0625,)  # SimCLRv2's value, tried first: any ratio giving the same shapes is equal


@dataclasses.dataclass(frozen=True)
class Piece:
    """One layer of the original and the simclr_tf layer it becomes.

    Attributes:
        target: tuple of str. Path in a `SimCLRModel`: `("encoder", layer name, [sub-layer])`,
            `("projection_head", attribute)` or `("supervised_head", "dense")`.
        kind: str. `conv` (kernel, optional bias), `dense` (the same) or `batch_norm`.
        node: Node. The original Keras layer (the object holding `kernel` or `gamma`).
    """

    target: tuple
    kind: str
    node: Node


@dataclasses.dataclass(frozen=True)
class OriginalArchitecture:
    """What an original checkpoint holds, in simclr_tf's terms (`ModelConfig` field names)."""

    resnet_depth: int
    width_multiplier: int
    cifar_stem: bool
    sk_ratio: float
    se_ratio: float
    proj_head_mode: str
    num_proj_layers: int
    proj_out_dim: int
    ft_proj_selector: int
    num_classes: int
    missing: tuple = ()  # parts the original model did not have (e.g. a v1 release's head)
    notes: tuple = ()

    def model_fields(self) -> dict:
        """The `ModelConfig` fields that decide the weights' shapes and the outputs."""
        fields = {name: getattr(self, name) for name in (
            "resnet_depth", "width_multiplier", "cifar_stem", "sk_ratio", "se_ratio",
            "proj_head_mode", "num_proj_layers", "proj_out_dim")}
        if self.proj_head_mode == "none":  # no head: its size is no part of the model
            for name in ("num_proj_layers", "proj_out_dim"):
                fields.pop(name)
        return fields

    def describe(self) -> str:
        stem = "CIFAR (3x3, stride 1)" if self.cifar_stem else (
            "ResNet-D deep stem (three 3x3)" if self.sk_ratio > 0 else "ImageNet (7x7, stride 2)")
        head = ("none" if self.proj_head_mode == "none" else
                f"{self.proj_head_mode}, {self.num_proj_layers} layers to {self.proj_out_dim}")
        lines = [
            f"  encoder:          ResNet-{self.resnet_depth} {self.width_multiplier}x, stem {stem}",
            f"  selective kernel: {'sk_ratio ' + repr(self.sk_ratio) if self.sk_ratio else 'no'}",
            f"  squeeze-excite:   {'se_ratio ' + repr(self.se_ratio) if self.se_ratio else 'no'}",
            f"  projection head:  {head}",
            f"  supervised head:  {self.num_classes or 'none'}"
            + (f" classes, on projection layer {self.ft_proj_selector}" if self.ft_proj_selector
               else (" classes" if self.num_classes else "")),
        ]
        lines += [f"  missing:          {m}" for m in self.missing]
        lines += [f"  note:             {n}" for n in self.notes]
        return "\n".join(lines)


def _kind(item: Node) -> str | None:
    """What a layer of one of the original's lists is: conv, batch_norm, sk, se or None."""
    if item.has("conv2d_fixed_padding", "conv2d_0", "conv2d_1"):
        return "sk"
    if item.has("se_reduce", "se_expand"):
        return "se"
    if item.has("conv2d") and item.child("conv2d").shape("kernel") is not None:
        return "conv"
    if item.has("bn") and item.child("bn").shape("gamma") is not None:
        return "batch_norm"
    return None  # padding, pooling, identity, dropblock: no variables


def _split(items: list[Node]) -> dict[str, list[Node]]:
    kinds = {"conv": [], "batch_norm": [], "sk": [], "se": []}
    for item in items:
        kind = _kind(item)
        if kind is not None:
            kinds[kind].append(item)
    return kinds


def _unexpected(ckpt: OriginalCheckpoint, where: str, what: str) -> ConversionError:
    return ConversionError(
        f"{ckpt.source}: {where} does not have the structure of the original code ({what}). Is "
        "this a model of google-research/simclr `tf2/` (or a modified version of it)?"
    )


def _list(ckpt: OriginalCheckpoint, node: Node, name: str) -> list[Node]:
    child = node.child(name)
    return [] if child is None else child.items()


def _encoder_pieces(ckpt: OriginalCheckpoint, resnet: Node):
    """Pieces of the encoder, and what its structure says about the architecture."""
    pieces, found = [], {"sk": [], "se": [], "resnet_d": False}
    stem = _split(_list(ckpt, resnet, "initial_conv_relu_max_pool"))
    convs, norms = stem["conv"], stem["batch_norm"]
    if len(convs) == 3 and len(norms) == 3:
        conv_names = ["stem_conv1", "stem_conv2", "stem_conv3"]
        norm_names = ["stem_conv1_batch_norm", "stem_conv2_batch_norm", "stem_batch_norm"]
        cifar_stem, found["resnet_d"] = False, True
    elif len(convs) == 1 and len(norms) == 1:
        conv_names, norm_names = ["stem_conv"], ["stem_batch_norm"]
        size = convs[0].child("conv2d").shape("kernel")[0]
        if size not in (3, 7):
            raise _unexpected(ckpt, "the stem", f"a {size}x{size} convolution")
        cifar_stem = size == 3
    else:
        raise _unexpected(ckpt, "the stem", f"{len(convs)} convolutions and {len(norms)} batch norms")
    for item, name in zip(convs, conv_names, strict=True):
        pieces.append(Piece(("encoder", name), "conv", item.child("conv2d")))
    for item, name in zip(norms, norm_names, strict=True):
        pieces.append(Piece(("encoder", name), "batch_norm", item.child("bn")))

    groups = _list(ckpt, resnet, "block_groups")
    if len(groups) != 4:
        raise _unexpected(ckpt, "the ResNet", f"{len(groups)} block groups instead of 4")
    blocks = [_list(ckpt, group, "layers") for group in groups]
    if not all(blocks):
        raise _unexpected(ckpt, "the ResNet", "a block group without blocks")
    bottleneck = blocks[0][0].has("conv_relu_dropblock_layers")
    counts = tuple(len(b) for b in blocks)
    block_type = "bottleneck" if bottleneck else "basic"
    depth = next((d for d, spec in RESNET_BLOCKS.items() if spec == (block_type, counts)), None)
    if depth is None:
        raise ConversionError(
            f"{ckpt.source}: a ResNet of {block_type} blocks with {counts} blocks per group is no "
            f"depth of the original code (nor of simclr_tf: {sorted(RESNET_BLOCKS)})."
        )
    main_list, shortcut_list = (("conv_relu_dropblock_layers", "projection_layers") if bottleneck
                                else ("conv2d_bn_layers", "shortcut_layers"))
    for g, group in enumerate(blocks, start=1):
        for b, block in enumerate(group, start=1):
            prefix = f"block_group{g}_block{b}"
            where = f"block {b} of block group {g}"
            main = _split(_list(ckpt, block, main_list))
            if block.child("se_layer") is not None:  # basic blocks keep SE outside the list
                main["se"].append(block.child("se_layer"))
            convs, norms = main["conv"], main["batch_norm"]
            expected = (2 if main["sk"] else 3) if bottleneck else 2
            if len(convs) != expected or len(norms) != expected or len(main["sk"]) > 1:
                raise _unexpected(ckpt, where, f"{len(convs)} convolutions, {len(norms)} batch "
                                  f"norms, {len(main['sk'])} selective kernels")
            if bottleneck:
                names = [f"{prefix}_conv1", f"{prefix}_conv3"] if main["sk"] else [
                    f"{prefix}_conv1", f"{prefix}_conv2", f"{prefix}_conv3"]
            else:
                names = [f"{prefix}_conv1", f"{prefix}_conv2"]
            # Each batch norm follows its convolution in the list, so they pair up in order.
            for conv, norm, name in zip(convs, norms, names, strict=True):
                pieces += [Piece(("encoder", name), "conv", conv.child("conv2d")),
                           Piece(("encoder", f"{name}_batch_norm"), "batch_norm", norm.child("bn"))]
            for sk in main["sk"]:
                layer = f"{prefix}_sk_conv"
                pieces += [
                    Piece(("encoder", layer, "conv"), "conv",
                          sk.child("conv2d_fixed_padding").child("conv2d")),
                    Piece(("encoder", layer, "batch_norm"), "batch_norm",
                          sk.child("batch_norm_relu").child("bn")),
                    Piece(("encoder", layer, "reduce_conv"), "conv", sk.child("conv2d_0")),
                    Piece(("encoder", layer, "reduce_batch_norm"), "batch_norm",
                          sk.child("batch_norm_relu_1").child("bn")),
                    Piece(("encoder", layer, "expand_conv"), "conv", sk.child("conv2d_1")),
                ]
                filters = sk.child("conv2d_1").shape("kernel")[-1] // 2
                found["sk"].append((filters, sk.child("conv2d_0").shape("kernel")[-1]))
            for se in main["se"]:
                layer = f"{prefix}_se"
                pieces += [Piece(("encoder", layer, "reduce_conv"), "conv", se.child("se_reduce")),
                           Piece(("encoder", layer, "expand_conv"), "conv", se.child("se_expand"))]
                filters = convs[0].child("conv2d").shape("kernel")[-1]  # the block's base width
                found["se"].append((filters, se.child("se_reduce").shape("kernel")[-1]))
            shortcut_items = _list(ckpt, block, shortcut_list)
            shortcut = _split(shortcut_items)
            if b == 1:
                if len(shortcut["conv"]) != 1 or len(shortcut["batch_norm"]) != 1:
                    raise _unexpected(ckpt, where, "a first block without its projection shortcut")
                pieces += [
                    Piece(("encoder", f"{prefix}_shortcut_conv"), "conv",
                          shortcut["conv"][0].child("conv2d")),
                    Piece(("encoder", f"{prefix}_shortcut_batch_norm"), "batch_norm",
                          shortcut["batch_norm"][0].child("bn")),
                ]
                # ResNet-D's shortcut average-pools first: more layers in the list, no variables.
                found["resnet_d"] |= len(shortcut_items) > 2
            elif shortcut_items:
                raise _unexpected(ckpt, where, "a projection shortcut after the first block")

    first_conv = blocks[0][0].child(main_list).items()[0].child("conv2d")
    width, remainder = divmod(first_conv.shape("kernel")[-1], 64)  # block group 1: 64 * width
    if remainder or width < 1:
        raise _unexpected(ckpt, "block group 1", "a width that is no multiple of 64")
    return pieces, depth, width, cifar_stem, found


def _ratio(ckpt: OriginalCheckpoint, what: str, pairs: list, floor: int, preferred: tuple) -> float:
    """The ratio r with `max(int(filters * r), floor) == reduced` for every (filters, reduced)."""
    if not pairs:
        return 0.0
    candidates = list(preferred) + sorted({reduced / filters for filters, reduced in pairs})
    for r in candidates:
        if all(max(int(filters * r), floor) == reduced for filters, reduced in pairs):
            return float(r)
    raise ConversionError(f"{ckpt.source}: the {what} layers' widths {sorted(set(pairs))} fit no "
                          "single ratio, as the original code builds them.")


def _head_pieces(ckpt: OriginalCheckpoint, model: Node, encoder_dim: int):
    head = model.child("_projection_head")
    layers = [] if head is None else _list(ckpt, head, "linear_layers")
    pieces, missing, dims = [], [], [encoder_dim]
    if head is None or not layers:
        missing.append("projection head (not in the file, as in the SimCLRv1 releases): "
                       "the run has proj_head_mode='none'; its proj_head_output is the encoder output")
        return pieces, missing, "none", 0, 0, dims
    for j, layer in enumerate(layers):
        last = j == len(layers) - 1
        dense, bn = layer.child("dense"), layer.child("bn_relu")
        bn = None if bn is None else bn.child("bn")
        kernel = None if dense is None else dense.shape("kernel")
        if kernel is None or bn is None or bn.shape("gamma") is None:
            raise _impossible(ckpt, j, "a dense layer without its batch norm")
        if dense.shape("bias") is not None:
            raise _impossible(ckpt, j, "a dense layer with a bias (the original's head has batch "
                              "norm instead)")
        if kernel[0] != dims[-1]:
            raise _impossible(ckpt, j, f"an input of {kernel[0]} features where the layer below "
                              f"gives {dims[-1]}")
        if not last and kernel[1] != kernel[0]:
            raise _impossible(ckpt, j, f"a middle layer mapping {kernel[0]} -> {kernel[1]} (the "
                              "original's middle layers keep the width)")
        has_beta = bn.shape("beta") is not None
        if has_beta == last:
            raise _impossible(ckpt, j, "a last layer with a batch-norm beta" if last else
                              "a middle layer whose batch norm has no beta")
        dims.append(kernel[1])
        pieces += [Piece(("projection_head", f"nl_{j}_dense"), "dense", dense),
                   Piece(("projection_head", f"nl_{j}_batch_norm"), "batch_norm", bn)]
    return pieces, missing, "nonlinear", len(layers), dims[-1], dims


def _impossible(ckpt: OriginalCheckpoint, j: int, what: str) -> ConversionError:
    return ConversionError(
        f"{ckpt.source}: projection-head layer {j} has {what}; the original code cannot have "
        "produced this head (its `nonlinear` mode: dense layers without bias, each followed by batch "
        "norm, the middle ones square with beta, the last without beta). Refusing to guess."
    )


def read_architecture(ckpt: OriginalCheckpoint, *, ft_proj_selector: int | None = None):
    """The architecture of an original checkpoint and the pieces that map it onto simclr_tf.

    Args:
        ckpt: OriginalCheckpoint. The opened file.
        ft_proj_selector: int or None. Which projection layer the supervised head reads, where the
            shapes cannot tell (a head on a layer as wide as the encoder output). None: 0 (the
            encoder output), or the one layer whose width fits.

    Returns:
        `(OriginalArchitecture, list of Piece)`.

    Raises:
        ConversionError: if the structure is not the original code's.
    """
    pieces, depth, width, cifar_stem, found = _encoder_pieces(ckpt, ckpt.model.child("resnet_model"))
    sk_ratio = _ratio(ckpt, "selective-kernel", found["sk"], _SK_MIN_DIM, _SK_RATIOS)
    if found["resnet_d"] and not sk_ratio:
        sk_ratio = _SK_RATIOS[0]  # basic blocks: sk_ratio only switches ResNet-D on
    se_ratio = _ratio(ckpt, "squeeze-excitation", found["se"], 1, ())
    encoder_dim = 512 * width * (4 if depth >= 50 else 1)
    head, missing, mode, num_layers, out_dim, dims = _head_pieces(ckpt, ckpt.model, encoder_dim)
    pieces += head

    num_classes, selector, notes = 0, 0, []
    supervised = ckpt.model.child("supervised_head")
    if supervised is not None:
        dense = supervised.child("linear_layer")
        dense = None if dense is None else dense.child("dense")
        kernel = None if dense is None else dense.shape("kernel")
        if kernel is None:
            raise _unexpected(ckpt, "the supervised head", "no dense layer")
        num_classes = kernel[1]
        fits = [i for i, d in enumerate(dims) if d == kernel[0]]
        if not fits:
            raise _unexpected(ckpt, "the supervised head", f"an input of {kernel[0]} features, which "
                              f"no layer gives (widths {dims})")
        if ft_proj_selector is not None:
            if ft_proj_selector not in fits:
                raise ConversionError(
                    f"`ft_proj_selector` ({ft_proj_selector}) does not fit: the supervised head reads "
                    f"{kernel[0]} features, which layers {fits} give (0 is the encoder output)."
                )
            selector = ft_proj_selector
        else:
            selector = fits[0]
            if len(fits) > 1:
                notes.append("supervised head taken on the encoder output (ft_proj_selector 0); "
                             "for a SimCLRv2 model fine-tuned from the head's middle pass "
                             "--ft_proj_selector=1")
        pieces.append(Piece(("supervised_head", "dense"), "dense", dense))
    else:
        missing.append("supervised head (none in the file): fine-tuning starts a new one")
    arch = OriginalArchitecture(
        resnet_depth=depth, width_multiplier=width, cifar_stem=cifar_stem, sk_ratio=sk_ratio,
        se_ratio=se_ratio, proj_head_mode=mode, num_proj_layers=num_layers or 2,
        proj_out_dim=out_dim or 128, ft_proj_selector=selector, num_classes=num_classes,
        missing=tuple(missing), notes=tuple(notes),
    )
    return arch, pieces
