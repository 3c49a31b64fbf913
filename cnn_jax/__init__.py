"""cnn_jax: classic image-recognition CNNs in JAX and Flax."""

from cnn_jax import cpu_defaults as _cpu_defaults

# Before anything imports jax's backends; see cnn_jax/cpu_defaults.py.
_cpu_defaults.apply()

__version__ = '0.1.0'
