"""The study runner, kept at its first address: it is `simclr_tf.study` (`python -m simclr_tf.study`).

    python experiments/study.py --out runs/study_rotate --quick --grid "view_b=crop;crop,rotate"
    python -m simclr_tf.study experiments/studies/digits_augmentation.flags

See `simclr_tf/study.py` for the grid, the recipes and the pictures.
"""

import sys

from simclr_tf.study import main

if __name__ == "__main__":
    sys.exit(main())
