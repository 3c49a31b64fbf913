"""cnn_jax: classic image-recognition CNNs in JAX and Flax."""

__version__ = '0.1.0'
