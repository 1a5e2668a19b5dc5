"""`python -m simclr_tf.convert`: an original SimCLR SavedModel or checkpoint as a simclr_tf run.

    python -m simclr_tf.convert r50_1x_sk1/saved_model --model_dir runs/r50_1x_sk1
    python -m simclr_tf.convert original_model_dir/ckpt-1 --model_dir runs/converted
"""

from __future__ import annotations

import argparse
import sys

from simclr_tf.console import show_library_logs


def main(argv=None) -> int:
    """`python -m simclr_tf.convert SOURCE --model_dir OUT`."""
    parser = argparse.ArgumentParser(
        prog="python -m simclr_tf.convert",
        description="Convert a SavedModel or checkpoint of the original SimCLR TF2 code (e.g. a "
                    "released SimCLRv1/v2 model) into a simclr_tf run directory: config.json, "
                    "ckpt-<step> and the export. The architecture is read from the file.",
    )
    parser.add_argument("source", help="An original SavedModel directory, a checkpoint prefix "
                                       "(.../ckpt-1) or an original model_dir.")
    parser.add_argument("--model_dir", required=True, help="The new run directory (must not exist "
                                                           "or be empty).")
    parser.add_argument("--dataset", default=None, help="Data set recorded in config.json (default: "
                                                        "imagenet2012, or cifar10/100 for a CIFAR stem).")
    parser.add_argument("--image_size", type=int, default=None,
                        help="Image size recorded in config.json (default 224, 32 for a CIFAR stem).")
    parser.add_argument("--ft_proj_selector", type=int, default=None,
                        help="Projection layer the supervised head reads, where the shapes cannot "
                             "tell (SimCLRv2 models fine-tuned from the head's middle: 1).")
    parser.add_argument("--no_export", action="store_true", help="Skip the SavedModel/.keras export.")
    args = parser.parse_args(argv)
    show_library_logs()  # what the library says while it converts (a skipped checkpoint, say)

    # TensorFlow is imported only now, after the arguments were checked.
    from simclr_tf.config import ConfigError
    from simclr_tf.convert import ConversionError, convert

    try:
        convert(args.source, args.model_dir, dataset=args.dataset, image_size=args.image_size,
                ft_proj_selector=args.ft_proj_selector, export=not args.no_export)
    except (ConversionError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
