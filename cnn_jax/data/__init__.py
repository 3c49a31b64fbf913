"""cnn_jax's data layer: real datasets, offline, one grain input pipeline.

Public API (see each docstring):
- `default_config()`: the data section of every config.
- `dataset_info(data_cfg) -> DatasetInfo`.
- `train_iterator(data_cfg, global_batch_size, seed, process_index=None,
  process_count=None)`: infinite, resumable (get_state / set_state).
- `eval_iterator(data_cfg, global_batch_size, process_index=None,
  process_count=None)`: one padded, masked pass over the eval split.
- `normalize(images, mean, std)`: the one place images are normalised, on
  device in the train and eval steps.
- Errors: DataError and its subclasses DatasetNotFoundError,
  CorruptDataError, SplitMismatchError.
- `python -m cnn_jax.data.prepare NAME --source=... --data_dir=...` writes
  a tfds ArrayRecord dataset from local files, without TensorFlow.

Importing this package does not import tensorflow_datasets (grain imports
jax, though).
"""

from cnn_jax.data.augment import normalize
from cnn_jax.data.config import default_config
from cnn_jax.data.errors import (
  CorruptDataError,
  DataError,
  DatasetNotFoundError,
  SplitMismatchError,
)
from cnn_jax.data.pipeline import (
  DatasetInfo,
  EvalIterator,
  TrainIterator,
  dataset_info,
  eval_iterator,
  train_iterator,
)

__all__ = [
  'CorruptDataError',
  'DataError',
  'DatasetInfo',
  'DatasetNotFoundError',
  'EvalIterator',
  'SplitMismatchError',
  'TrainIterator',
  'dataset_info',
  'default_config',
  'eval_iterator',
  'normalize',
  'train_iterator',
]
