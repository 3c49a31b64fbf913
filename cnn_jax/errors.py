"""Errors whose message already names the setting that fixes them."""


class ConfigError(ValueError):
  """A config value that cannot work, named with the flag that sets it.

  `cnn_jax.main` prints these as one line, without a traceback.
  """
