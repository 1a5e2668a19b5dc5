"""`python -m simclr_tf.export`: export a run's checkpoint (the CLI of `simclr_tf.export`).

    python -m simclr_tf.export --model_dir runs/digits_quickstart [--checkpoint PATH] [--no_heads]
"""

from __future__ import annotations

import argparse
import os
import sys

from simclr_tf.console import show_library_logs
from simclr_tf.interrupts import Terminated, exit_code, signal_first, signal_name, signals_as_exceptions


def main(argv=None) -> int:
    """`python -m simclr_tf.export`: export a run's checkpoint."""
    parser = argparse.ArgumentParser(
        prog="python -m simclr_tf.export",
        description="Export the encoder of a simclr_tf run as a TF-Hub-style SavedModel and a .keras file.",
    )
    parser.add_argument("--model_dir", required=True, help="The run's directory (holds config.json).")
    parser.add_argument("--checkpoint", default=None,
                        help="Checkpoint prefix or directory (default: the run's latest checkpoint).")
    parser.add_argument("--export_dir", default=None, help="Default: <model_dir>/saved_model.")
    parser.add_argument("--keep", type=int, default=5, help="Exports kept (default 5; 0 keeps all).")
    parser.add_argument("--no_heads", action="store_true", help="Export the encoder features only.")
    args = parser.parse_args(argv)
    show_library_logs()  # e.g. a truncated newest checkpoint skipped for the one before
    # SIGTERM and Ctrl-C unwind as exceptions: the partial export is removed on the way out.
    with signals_as_exceptions():
        try:
            return _export(args)
        except (KeyboardInterrupt, Terminated) as stopped:
            print(f"Stopped by {signal_name(stopped)}: nothing was exported (a partial export is "
                  "removed). Run the same command again to export.", file=sys.stderr)
            return exit_code(stopped)


def _export(args) -> int:
    # TensorFlow is imported only now, after the arguments were checked.
    import tensorflow as tf

    from simclr_tf import checkpoints
    from simclr_tf.config import ConfigError, load_config
    from simclr_tf.export import export_model
    from simclr_tf.models.build import build_model

    try:
        with signal_first():  # a SIGTERM that TensorFlow turned into an error of its own stays one
            config = load_config(args.model_dir).resolved()
            prefix = checkpoints.resolve_checkpoint(args.checkpoint or args.model_dir)
            num_classes = checkpoints.checkpoint_num_classes(prefix)
            model = build_model(config, num_classes)
            restored = tf.train.Checkpoint(model=model).restore(prefix)
            restored.expect_partial().assert_existing_objects_matched()
    except (FileNotFoundError, ConfigError, ValueError, AssertionError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    step = checkpoints.step_of(prefix)
    try:
        with signal_first():
            written = export_model(
                model,
                args.export_dir or os.path.join(args.model_dir, "saved_model"),
                step=step,
                keep=args.keep,
                image_size=config.image_size,
                include_heads=not args.no_heads,
            )
    except OSError as error:  # a folder of the user's in the way, a full disk
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"Exported step {step}: SavedModel {written['saved_model']}, Keras file {written['keras_file']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
