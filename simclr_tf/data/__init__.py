"""Data: where images come from, how they are augmented, and the tf.data pipelines.

- `base`: the `Source` type and the errors the sources share.
- `sources`: `load_source` (by name), digits, synthetic, label subsets; `synthetic`: the shapes;
  `folder`: image folders; `tfds`: TensorFlow Datasets.
- `kernel`: the fused per-view XLA kernel; `ops`: crop, flip, blur; `color`: colour jitter and
  drop; `transforms`: cutout, Sobel, Gaussian noise, rotation (the paper's study); `policy`: a
  view as an ordered list of named transformations (`--view_a`, `--view_b`); `views`: whole views
  (`two_views`, `finetune_preprocess`, `eval_preprocess`).
- `pipeline`: the training, fine-tuning and evaluation `tf.data` pipelines.

Imports nothing of simclr_tf outside `simclr_tf.data`, `simclr_tf.config` and `simclr_tf.validation`.
"""
