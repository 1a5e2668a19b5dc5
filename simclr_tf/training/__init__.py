"""Training wiring: `train(config, strategy)` runs a whole run from a typed `Config`.

- `loop.py`: the order of the phases (train, evaluate, linear evaluation, export, results).
- `phases.py`: pretraining / fine-tuning, and evaluation on held-out images.
- `linear_eval.py`: linear evaluation (logistic regression on frozen features, or SGD).
- `inputs.py`: the data a config describes, as distributed datasets.
- `callbacks.py`: checkpointing, the NaN guard, progress lines, the kNN monitor, image summaries.
- `run_dir.py`: one model_dir: writable check, JSON results written atomically.
"""

from simclr_tf.training.linear_eval import linear_eval_config
from simclr_tf.training.loop import train
from simclr_tf.training.phases import TrainingDiverged

__all__ = ["TrainingDiverged", "linear_eval_config", "train"]
