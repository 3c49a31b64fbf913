"""Errors of the data layer, each meant to be read by a person.

Every message says what was expected, what was found, and which flag,
file or command fixes it.
"""


class DataError(Exception):
  """Base class of every error raised by cnn_jax.data."""


class DatasetNotFoundError(DataError, FileNotFoundError):
  """No copy of the dataset was found where the config points."""


class CorruptDataError(DataError, ValueError):
  """A file is there but wrong: bad size, checksum mismatch, undecodable."""


class SplitMismatchError(DataError, ValueError):
  """The splits of an image folder disagree on their class folders."""
