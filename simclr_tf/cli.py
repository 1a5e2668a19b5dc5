"""The console command `simclr-tf`: one entry point for the package's tools.

    simclr-tf run [--flags]          train / evaluate (the same as python -m simclr_tf.run)
    simclr-tf export --model_dir D   export a run's encoder (python -m simclr_tf.export)
    simclr-tf preview --image F      see the augmentations (python -m simclr_tf.preview)
    simclr-tf convert SRC --model_dir D   an original SimCLR model as a run (python -m simclr_tf.convert)
    simclr-tf study RECIPE.flags     a grid of short runs and its picture (python -m simclr_tf.study)

Installed by `pip install .` (see pyproject.toml), so it works from any directory.
"""

from __future__ import annotations

import importlib
import sys

# First, before anything that imports TensorFlow: it sets TensorFlow's log level.
from simclr_tf.console import show_library_logs

# command -> (module with `main`, what it does)
COMMANDS = {
    "run": ("simclr_tf.run", "pretrain, fine-tune or evaluate (absl flags; --helpfull lists them)"),
    "export": ("simclr_tf.export.__main__", "export a run's encoder as a SavedModel and .keras file"),
    "preview": ("simclr_tf.preview", "draw a grid of augmented views of an image"),
    "convert": ("simclr_tf.convert.__main__", "convert an original SimCLR SavedModel or checkpoint"),
    "study": ("simclr_tf.study", "run a grid of short runs (a recipe: experiments/studies/) and its picture"),
}


def _usage() -> str:
    lines = ["usage: simclr-tf COMMAND [ARGS]", "", "commands:"]
    lines += [f"  {name:<9} {what}" for name, (_, what) in COMMANDS.items()]
    lines += ["", "simclr-tf COMMAND --help shows a command's arguments."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"simclr-tf: unknown command {command!r}; choose one of {', '.join(COMMANDS)}.\n\n{_usage()}",
              file=sys.stderr)
        return 2
    show_library_logs()  # each tool imports TensorFlow itself, once its arguments are checked
    module = importlib.import_module(COMMANDS[command][0])
    if command == "run":  # absl parses sys.argv itself
        sys.argv = [f"simclr-tf {command}", *rest]
        module.run()
        return 0
    return module.main(rest)


if __name__ == "__main__":
    sys.exit(main())
