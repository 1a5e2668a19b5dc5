"""simclr_tf: SimCLR (v1 and v2) in Keras 3 / TensorFlow."""

__version__ = "0.1.0"
