"""Train and eval iterators: seeded, sharded by process, exactly resumable.

Sampling. Epoch e visits the train split in the order of a permutation
drawn from (shuffle seed, e). Global batch k of the epoch holds positions
[k*G, (k+1)*G) of that permutation, and process p of P takes the slice
[p*b, (p+1)*b) of it, with b = G / P. Across processes every example is
seen at most once per epoch, and the global batch (and its augmentation,
drawn from (seed, epoch, position in the epoch)) does not depend on P.
A process decodes and augments only its own examples; streamed data is
also read only where needed, while a small dataset (at most ~180 MB) is
loaded whole by each process.

End of an epoch: the last N mod G examples of each epoch's permutation are
dropped, so every train step is a full global batch (one compiled shape).
The permutation changes every epoch, and with it the examples dropped, so
over a run all are seen; steps_per_epoch = N // G.

Eval: one pass over the whole split in its stored order, padded at the end
to full global batches; `mask` is False on padding (id -1, zero image).
Every process yields ceil(N / G) batches.

Resume: the iterator's state is (epoch, step in epoch) plus what it was
built from (dataset, size, global batch, seed), as JSON-safe values; the
random streams are derived from the seed, so no RNG state or grain
iterator state is stored. A restored iterator rebuilds its grain pipeline
from that step, so it yields exactly the batches an uninterrupted run
would, with any number of grain workers, and with any process count as
long as the global batch is the same.

Images leave the pipeline as uint8; `cnn_jax.data.normalize` is the one
place they are normalised, on device, inside the train and eval steps.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import os
import pathlib
from collections.abc import Callable, Iterator
from typing import Any

import grain
import ml_collections
import numpy as np

from cnn_jax.data import augment, catalog, embedded, folder, raw, tfds_io
from cnn_jax.data.errors import CorruptDataError, DatasetNotFoundError

Batch = dict[str, np.ndarray]

# Distinct streams of the seed: the shuffle and the augmentation.
_SHUFFLE, _AUGMENT = 0, 1
# Stop index of the (lazily evaluated) infinite train index range.
_FAR = 1 << 60
_STATE_FORMAT = 'cnn_jax.data.train_iterator/1'
_POLICIES = ('auto', 'none', 'crop', 'crop_flip', 'inception')


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the model and the train loop need to know about a dataset.

  Attributes:
    name: the dataset's name, as in the config.
    num_classes: number of labels; labels are 0..num_classes-1.
    image_shape: (H, W, C) of the images in the batches.
    num_train: examples in the train split (after data.train_limit).
    num_eval: examples in the eval split (after data.eval_limit).
    mean: per-channel mean on the 0..255 scale, for `normalize`.
    std: per-channel standard deviation on the 0..255 scale.
    class_names: label names where known, else ().
    train_split: the split used for training.
    eval_split: the split used for evaluation.
    location: where the data was found.
    streamed: True if decoded on the fly, False if held in memory.
  """

  name: str
  num_classes: int
  image_shape: tuple[int, int, int]
  num_train: int
  num_eval: int
  mean: tuple[float, ...]
  std: tuple[float, ...]
  class_names: tuple[str, ...] = ()
  train_split: str = 'train'
  eval_split: str = 'test'
  location: str = ''
  streamed: bool = False


# Finding a dataset.


@dataclasses.dataclass(frozen=True)
class _Location:
  kind: str  # 'embedded' | 'raw' | 'tfds' | 'folder'
  path: pathlib.Path
  raw: raw.Found | None = dataclasses.field(default=None, compare=False)


def _roots(cfg: ml_collections.ConfigDict) -> list[pathlib.Path]:
  if cfg.data_dir:
    return [pathlib.Path(cfg.data_dir).expanduser()]
  default = os.environ.get('TFDS_DATA_DIR') or '~/tensorflow_datasets'
  return [pathlib.Path(default).expanduser()]


def _locate(cfg: ml_collections.ConfigDict) -> _Location:
  """Finds the dataset named in the config, or says where it looked."""
  name, source = cfg.name, cfg.source
  if source not in ('auto', 'raw', 'tfds', 'folder'):
    raise ValueError(
      f"data.source={source!r}; expected 'auto', 'raw', 'tfds' or 'folder'."
    )
  if name == 'mnist_5k':
    return _Location('embedded', embedded.path())
  small = name in catalog.SMALL
  searched = []
  for root in _roots(cfg):
    if not root.is_dir():
      searched.append(f'{root} (does not exist)')
      continue
    looked = []
    if small and source in ('auto', 'raw'):
      for base in (root, root / name):
        found = raw.find(name, base)
        if found:
          return _Location('raw', found.location, found)
      looked.append(f'official {name} files')
    if source in ('auto', 'tfds'):
      path = tfds_io.find(root, name)
      if path:
        return _Location('tfds', path)
      looked.append(f'a tfds dataset {name}/<version>/')
    if not small and source in ('auto', 'folder'):
      for base in (root / name, root):
        if folder.looks_like(base):
          return _Location('folder', base)
      looked.append('an image folder train/<class>/')
    searched.append(f'{root} (and {root / name}): no {", no ".join(looked)}')
  raise _not_found(cfg, searched)


def _not_found(
  cfg: ml_collections.ConfigDict, searched: list[str]
) -> DatasetNotFoundError:
  name = cfg.name
  lines = [f'Dataset {name!r} not found. Searched:']
  lines += [f'  {s}' for s in searched]
  if name in catalog.SMALL:
    lines += [
      'Point --config.data.data_dir at a folder holding '
      f'{catalog.SMALL[name].files}, or at a tfds data_dir made with:',
      f'  python -m cnn_jax.data.prepare {name} --source=<dir|archive> '
      '--data_dir=DIR',
    ]
  else:
    lines += [
      'Point --config.data.data_dir at a tfds data_dir holding it as '
      'ArrayRecord, made with:',
      f'  python -m cnn_jax.data.prepare {name} '
      '--source=<folder with train/<class>/*.jpg> --data_dir=DIR',
      f'  (or, with TensorFlow: tfds build {name} '
      '--file_format=array_record --data_dir=DIR),',
      'or at an image folder root with train/<class>/*.jpg|png and a '
      'test/, validation/ or val/ split.',
    ]
  if not cfg.data_dir:
    lines.append(
      '(--config.data.data_dir is empty, so the tfds default was searched.)'
    )
  return DatasetNotFoundError('\n'.join(lines))


def _splits(location: _Location) -> dict[str, int]:
  if location.kind == 'tfds':
    return tfds_io.splits(location.path)
  if location.kind == 'folder':
    return {s: len(f) for s, f in _scan(location.path).splits.items()}
  return {}


_SCANS: dict[pathlib.Path, folder.Folder] = {}


def _scan(root: pathlib.Path) -> folder.Folder:
  if root not in _SCANS:
    _SCANS[root] = folder.scan(root)
  return _SCANS[root]


def _eval_split(cfg: ml_collections.ConfigDict, available) -> str:
  if cfg.eval_split:
    return cfg.eval_split
  for split in ('test', 'validation', 'val'):
    if split in available:
      return split
  raise ValueError(
    f'No eval split: the dataset has {sorted(available)}; set '
    '--config.data.eval_split.'
  )


def _limit(n: int, limit: int) -> int:
  return min(n, limit) if limit > 0 else n


def dataset_info(data_cfg: ml_collections.ConfigDict) -> DatasetInfo:
  """Describes the configured dataset without loading its images.

  Args:
    data_cfg: the data section of a config (see `default_config`).

  Returns:
    A DatasetInfo.

  Raises:
    DatasetNotFoundError: the dataset is not where the config says.
    SplitMismatchError: an image folder's splits have different classes.
  """
  location = _locate(data_cfg)
  name = data_cfg.name
  spec = catalog.SMALL.get(name)
  sizes = _splits(location) or dict(spec.sizes)
  train_split = data_cfg.train_split
  eval_split = _eval_split(data_cfg, sizes)
  for split in (train_split, eval_split):
    if split not in sizes:
      raise ValueError(
        f'{name} at {location.path} has no split {split!r}; it has '
        f'{sorted(sizes)}. Set --config.data.train_split / eval_split.'
      )
  common = dict(
    name=name,
    num_train=_limit(sizes[train_split], data_cfg.train_limit),
    num_eval=_limit(sizes[eval_split], data_cfg.eval_limit),
    train_split=train_split,
    eval_split=eval_split,
    location=str(location.path),
  )
  if spec is not None:
    return DatasetInfo(
      num_classes=spec.num_classes,
      image_shape=spec.image_shape,
      mean=spec.mean,
      std=spec.std,
      class_names=spec.class_names,
      streamed=False,
      **common,
    )
  if location.kind == 'folder':
    class_names = _scan(location.path).class_names
  else:
    label = tfds_io.builder(location.path).info.features['label']
    class_names = tuple(label.names)
  size = data_cfg.augment.image_size
  return DatasetInfo(
    num_classes=len(class_names),
    image_shape=(size, size, 3),
    mean=catalog.IMAGENET_MEAN,
    std=catalog.IMAGENET_STD,
    class_names=class_names,
    streamed=True,
    **common,
  )


# In-memory data.

_ARRAYS: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}


def _arrays(
  location: _Location, name: str, split: str, verify: bool
) -> tuple[np.ndarray, np.ndarray]:
  """Loads (once per process) a small dataset's split as uint8 arrays."""
  key = (location.kind, str(location.path), name, split, verify)
  if key not in _ARRAYS:
    if location.kind == 'embedded':
      arrays = embedded.load(split, verify)
    elif location.kind == 'raw':
      arrays = raw.read(location.raw, split, verify)[:2]
    else:
      arrays = tfds_io.read(location.path, split)
    _check_arrays(name, location, split, *arrays)
    if len(_ARRAYS) >= 4:
      _ARRAYS.clear()
    _ARRAYS[key] = arrays
  return _ARRAYS[key]


def _check_arrays(name, location, split, images, labels) -> None:
  spec = catalog.SMALL[name]
  if images.shape[1:] != spec.image_shape or (
    len(labels) and not 0 <= labels.min() <= labels.max() < spec.num_classes
  ):
    raise CorruptDataError(
      f'{location.path}: split {split!r} of {name} has images of shape '
      f'{images.shape[1:]} and labels {labels.min()}..{labels.max()}; '
      f'expected {spec.image_shape} and 0..{spec.num_classes - 1}.'
    )


class _Order:
  """The train order of epoch e: a permutation from (seed, e)."""

  def __init__(self, num_examples: int, seed: int):
    self.num_examples = num_examples
    self.seed = seed
    self._cache: dict[int, np.ndarray] = {}

  def __call__(self, epoch: int) -> np.ndarray:
    perm = self._cache.get(epoch)
    if perm is None:
      rng = np.random.default_rng([_SHUFFLE, self.seed, epoch])
      perm = rng.permutation(self.num_examples)
      if len(self._cache) > 2:
        self._cache.clear()
      self._cache[epoch] = perm
    return perm

  def __getstate__(self):
    return {**self.__dict__, '_cache': {}}


@dataclasses.dataclass
class _Sharding:
  """Global batch G split over processes: this one takes [p*b, (p+1)*b)."""

  global_batch_size: int
  process_index: int
  process_count: int

  @property
  def per_process(self) -> int:
    return self.global_batch_size // self.process_count

  @property
  def start(self) -> int:
    return self.process_index * self.per_process


class _MemoryTrainBatch:
  """Global step -> this process's augmented batch."""

  def __init__(self, images, labels, order, sharding, steps, policy, cfg):
    self.images, self.labels, self.order = images, labels, order
    self.sharding, self.steps_per_epoch = sharding, steps
    self.policy, self.pad, self.pad_mode = policy, cfg.pad, cfg.pad_mode

  def __call__(self, step: int) -> Batch:
    epoch, index = divmod(step, self.steps_per_epoch)
    shard = self.sharding
    first = index * shard.global_batch_size + shard.start
    ids = self.order(epoch)[first : first + shard.per_process]
    images = self.images[ids]
    if self.policy in ('crop', 'crop_flip'):
      # Drawn for the whole global batch, so that it does not depend on the
      # process count; this process keeps its slice.
      rng = np.random.default_rng([_AUGMENT, self.order.seed, epoch, index])
      crop = augment.sample_crop_flip(
        rng, shard.global_batch_size, self.pad, self.policy == 'crop_flip'
      )
      mine = slice(shard.start, shard.start + shard.per_process)
      oy, ox, flips = (a[mine] for a in crop)
      images = augment.crop_flip(images, oy, ox, flips, self.pad, self.pad_mode)
    return {
      'image': images,
      'label': self.labels[ids],
      'id': ids.astype(np.int64),
    }


def _memory_eval_batches(images, labels, sharding, limit) -> Iterator[Batch]:
  n, b = limit, sharding.per_process
  num_batches = -(-n // sharding.global_batch_size)
  for k in range(num_batches):
    start = k * sharding.global_batch_size + sharding.start
    valid = int(np.clip(n - start, 0, b))
    image = np.zeros((b, *images.shape[1:]), np.uint8)
    label = np.zeros((b,), np.int32)
    image[:valid] = images[start : start + valid]
    label[:valid] = labels[start : start + valid]
    ids = np.arange(start, start + b, dtype=np.int64)
    mask = ids < n
    ids = np.where(mask, ids, -1)
    yield {'image': image, 'label': label, 'id': ids, 'mask': mask}


# Streamed data.


class _TfdsSource:
  """Encoded images and labels from a tfds ArrayRecord split."""

  def __init__(self, path: pathlib.Path, split: str):
    self.path, self.split = path, split
    self._data = None

  def __len__(self) -> int:
    return len(self._open())

  def _open(self):
    if self._data is None:
      self._data = tfds_io.source(self.path, self.split, decode_images=False)
    return self._data

  def get(self, index: int) -> tuple[bytes, int, str]:
    where = f'{self.path} split {self.split!r} record {index}'
    try:
      example = self._open()[index]
    except Exception as e:
      raise CorruptDataError(f'{where}: unreadable ({e}).') from e
    name = example.get('file_name')
    if name:
      where += f' ({name.decode() if isinstance(name, bytes) else name})'
    return example['image'], int(example['label']), where

  def __getstate__(self):
    return {**self.__dict__, '_data': None}


class _FolderSource:
  """Image files and the labels of their class folders."""

  def __init__(self, files: list[tuple[str, int]]):
    self.paths = np.array([f for f, _ in files])
    self.labels = np.array([label for _, label in files], np.int32)

  def __len__(self) -> int:
    return len(self.paths)

  def get(self, index: int) -> tuple[bytes, int, str]:
    path = str(self.paths[index])
    try:
      with open(path, 'rb') as f:
        return f.read(), int(self.labels[index]), path
    except OSError as e:
      raise CorruptDataError(f'{path}: unreadable ({e}).') from e


class _StreamExample:
  """Slot k of this process's stream -> one decoded, augmented example.

  Slot k is example k mod b of this process's batch k // b. Train slots
  map through the epoch's permutation; eval slots past the end of the
  split are padding.
  """

  def __init__(self, source, sharding, cfg, train, order=None, steps=0, n=0):
    self.source, self.sharding, self.train = source, sharding, train
    self.order, self.steps_per_epoch, self.num_examples = order, steps, n
    self.size, self.resize_size = cfg.image_size, cfg.resize_size
    self.area = tuple(cfg.area_range)
    self.aspect = tuple(cfg.aspect_ratio_range)
    self.policy = cfg.policy

  def __call__(self, slot: int) -> dict[str, Any]:
    shard = self.sharding
    step, j = divmod(slot, shard.per_process)
    if self.train:
      epoch, index = divmod(step, self.steps_per_epoch)
      position = index * shard.global_batch_size + shard.start + j
      record = int(self.order(epoch)[position])
    else:
      record = step * shard.global_batch_size + shard.start + j
      if record >= self.num_examples:
        return {
          'image': np.zeros((self.size, self.size, 3), np.uint8),
          'label': np.int32(0),
          'id': np.int64(-1),
          'mask': np.bool_(False),
        }
    data, label, where = self.source.get(record)
    image = augment.decode(data, where)
    if self.train and self.policy == 'inception':
      rng = np.random.default_rng([_AUGMENT, self.order.seed, epoch, position])
      pixels = augment.inception_crop_flip(
        image, rng, self.size, self.area, self.aspect
      )
    else:
      pixels = augment.center_crop(image, self.size, self.resize_size)
    out = {'image': pixels, 'label': np.int32(label), 'id': np.int64(record)}
    if not self.train:
      out['mask'] = np.bool_(True)
    return out


def _stream_source(location: _Location, split: str):
  if location.kind == 'folder':
    return _FolderSource(_scan(location.path).splits[split])
  return _TfdsSource(location.path, split)


def _verify_images(source: _FolderSource, threads: int) -> None:
  def check(index):
    data, _, where = source.get(index)
    augment.decode(data, where)

  with concurrent.futures.ThreadPoolExecutor(max(threads, 1)) as pool:
    for _ in pool.map(check, range(len(source))):
      pass


def _ensure_absl_flags() -> None:
  # grain's worker processes read absl flags; outside an absl app (tests,
  # notebooks, the benchmark) nobody parsed them, so take the defaults.
  from absl import flags

  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def _grain_iter(ds: grain.MapDataset, cfg: ml_collections.ConfigDict):
  """Runs a MapDataset with prefetching threads and optional workers."""
  if cfg.num_threads <= 0 and cfg.worker_count <= 0:
    return (ds[i] for i in range(len(ds)))
  options = grain.ReadOptions(
    num_threads=max(cfg.num_threads, 1),
    prefetch_buffer_size=max(cfg.prefetch_batches, 1),
  )
  it_ds = ds.to_iter_dataset(options)
  if cfg.worker_count <= 0:
    return iter(it_ds)
  _ensure_absl_flags()
  it_ds = it_ds.mp_prefetch(
    grain.MultiprocessingOptions(
      num_workers=cfg.worker_count,
      per_worker_buffer_size=max(cfg.prefetch_batches, 1),
    )
  )
  return _OwnedArrays(iter(it_ds))


class _OwnedArrays:
  """Copies worker batches out of grain's shared memory.

  A batch from a worker lives in a shared-memory block that grain frees
  when the array is garbage collected; one still referenced when Python
  exits (the train loop's last batch) makes grain print errors. A copy
  costs about a millisecond per batch, far less than decoding it.
  """

  def __init__(self, iterator):
    self._iterator = iterator

  def __iter__(self):
    return self

  def __next__(self) -> Batch:
    batch = next(self._iterator)
    return {key: np.array(value) for key, value in batch.items()}

  def close(self) -> None:
    self._iterator.close()


# Iterators.


def _process(process_index, process_count) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax  # only here: the host pipeline itself never needs jax

    if process_index is None:
      process_index = jax.process_index()
    if process_count is None:
      process_count = jax.process_count()
  if not 0 <= process_index < process_count:
    raise ValueError(
      f'process_index={process_index} is not in 0..{process_count - 1}.'
    )
  return process_index, process_count


def _sharding(global_batch_size, process_index, process_count) -> _Sharding:
  index, count = _process(process_index, process_count)
  if global_batch_size <= 0 or global_batch_size % count:
    raise ValueError(
      f'The global batch size {global_batch_size} must be a positive '
      f'multiple of the number of processes ({count}).'
    )
  return _Sharding(global_batch_size, index, count)


def _policy(cfg: ml_collections.ConfigDict, info: DatasetInfo) -> str:
  policy = cfg.augment.policy
  if policy not in _POLICIES:
    raise ValueError(
      f'data.augment.policy={policy!r}; expected one of {_POLICIES}.'
    )
  if policy == 'auto':
    return (
      'inception' if info.streamed else catalog.SMALL[info.name].train_augment
    )
  if info.streamed and policy not in ('inception', 'none'):
    raise ValueError(
      f'data.augment.policy={policy!r} is for in-memory datasets; {info.name} '
      "is streamed: use 'inception' or 'none'."
    )
  if not info.streamed and policy == 'inception':
    raise ValueError(
      f"data.augment.policy='inception' is for streamed datasets; use "
      f"'crop_flip', 'crop' or 'none' for {info.name}."
    )
  return policy


class TrainIterator:
  """Infinite iterator over this process's train batches, across epochs.

  Each batch is a dict of numpy arrays: 'image' uint8 (b, H, W, C),
  'label' int32 (b,), 'id' int64 (b,) (the example's index in the split),
  with b = global_batch_size // process_count.

  Attributes:
    steps_per_epoch: full global batches per epoch (N // global batch).
    batch_size: b, the per-process batch.
    global_batch_size: the batch over all processes.
    info: the DatasetInfo.
  """

  def __init__(
    self,
    start: Callable[[int], Iterator[Batch]],
    info: DatasetInfo,
    sharding: _Sharding,
    seed: int,
    steps_per_epoch: int,
  ):
    self._start = start
    self.info = info
    self._sharding = sharding
    self._seed = seed
    self.steps_per_epoch = steps_per_epoch
    self.batch_size = sharding.per_process
    self.global_batch_size = sharding.global_batch_size
    self._step = 0  # global steps yielded so far
    self._it = None

  def __iter__(self) -> TrainIterator:
    return self

  def __next__(self) -> Batch:
    if self._it is None:
      self._it = self._start(self._step)
    batch = next(self._it)
    self._step += 1
    return batch

  def get_state(self) -> dict[str, Any]:
    """The position after the last batch returned, as JSON-safe values."""
    epoch, step = divmod(self._step, self.steps_per_epoch)
    return {
      'format': _STATE_FORMAT,
      'dataset': self.info.name,
      'num_examples': self.info.num_train,
      'global_batch_size': self.global_batch_size,
      'seed': self._seed,
      'epoch': epoch,
      'step_in_epoch': step,
    }

  def set_state(self, state: dict[str, Any]) -> None:
    """Continues from a `get_state()` result: the next batch is the one
    that followed it.

    Raises:
      ValueError: the state comes from a different dataset, seed or global
        batch size, so the continuation would not be the same run.
    """
    mine = self.get_state()
    for key in ('format', 'dataset', 'num_examples', 'global_batch_size'):
      if state.get(key) != mine[key]:
        raise ValueError(
          f'The saved data iterator state has {key}={state.get(key)!r}, '
          f'this run has {mine[key]!r}; a checkpoint only continues the '
          'same data stream. Restore with the same data config and batch.'
        )
    if int(state['seed']) != self._seed:
      raise ValueError(
        f'The saved data iterator state has seed {state["seed"]}, this run '
        f'{self._seed}; use the same seed (or data.shuffle_seed) to resume.'
      )
    self.close()
    self._step = int(state['epoch']) * self.steps_per_epoch + int(
      state['step_in_epoch']
    )

  def close(self) -> None:
    """Stops prefetch threads and worker processes, if any."""
    if self._it is not None and hasattr(self._it, 'close'):
      self._it.close()
    self._it = None

  def __enter__(self) -> TrainIterator:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


class EvalIterator:
  """One pass over the eval split; see `eval_iterator`."""

  def __init__(self, batches: Iterator[Batch], num_batches: int, closer=None):
    self._batches = batches
    self.num_batches = num_batches
    self._closer = closer

  def __len__(self) -> int:
    return self.num_batches

  def __iter__(self) -> EvalIterator:
    return self

  def __next__(self) -> Batch:
    return next(self._batches)

  def close(self) -> None:
    if self._closer is not None:
      self._closer()

  def __enter__(self) -> EvalIterator:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def train_iterator(
  data_cfg: ml_collections.ConfigDict,
  global_batch_size: int,
  seed: int,
  process_index: int | None = None,
  process_count: int | None = None,
) -> TrainIterator:
  """Infinite, shuffled, augmented train batches for this process.

  In-memory datasets are loaded and checked here, before training starts.
  See the module docstring for the sampling, sharding and epoch-end rules.

  Args:
    data_cfg: the data section of a config (see `default_config`).
    global_batch_size: examples per step over all processes.
    seed: seed of shuffling and augmentation (data_cfg.shuffle_seed, if
      set, takes precedence).
    process_index: this process; None = jax.process_index().
    process_count: number of processes; None = jax.process_count().

  Returns:
    A TrainIterator (get_state / set_state / steps_per_epoch / close).

  Raises:
    DatasetNotFoundError: the dataset is not where the config says.
    CorruptDataError: a file has the wrong size or checksum, or (with
      data.verify_images) an image does not decode.
    ValueError: bad batch size, process index or augmentation policy.
  """
  sharding = _sharding(global_batch_size, process_index, process_count)
  info = dataset_info(data_cfg)
  policy = _policy(data_cfg, info)
  if data_cfg.shuffle_seed is not None:
    seed = data_cfg.shuffle_seed
  seed = int(seed) % (1 << 63)
  n = info.num_train
  if n < global_batch_size:
    raise ValueError(
      f'The train split of {info.name} has {n} examples, fewer than one '
      f'global batch of {global_batch_size}.'
    )
  steps = n // global_batch_size
  order = _Order(n, seed)
  location = _locate(data_cfg)

  if not info.streamed:
    images, labels = _arrays(
      location, info.name, info.train_split, data_cfg.verify_checksums
    )
    make = _MemoryTrainBatch(
      images[:n], labels[:n], order, sharding, steps, policy, data_cfg.augment
    )

    def start(step: int) -> Iterator[Batch]:
      return _grain_iter(grain.MapDataset.range(step, _FAR).map(make), data_cfg)

  else:
    source = _stream_source(location, info.train_split)
    if data_cfg.verify_images and isinstance(source, _FolderSource):
      _verify_images(source, data_cfg.num_threads)
    example = _StreamExample(
      source, sharding, data_cfg.augment, True, order, steps, n
    )
    b = sharding.per_process

    def start(step: int) -> Iterator[Batch]:
      ds = grain.MapDataset.range(step * b, _FAR).map(example).batch(b)
      return _grain_iter(ds, data_cfg)

  logging.info(
    'Train data: %s from %s, %d examples, %d steps per epoch of %d '
    '(%d on this process), augment=%s.',
    info.name,
    info.location,
    n,
    steps,
    global_batch_size,
    sharding.per_process,
    policy,
  )
  return TrainIterator(start, info, sharding, seed, steps)


def eval_iterator(
  data_cfg: ml_collections.ConfigDict,
  global_batch_size: int,
  process_index: int | None = None,
  process_count: int | None = None,
) -> EvalIterator:
  """One pass over the whole eval split, padded to full batches.

  Each batch is a dict: 'image' uint8 (b, H, W, C), 'label' int32 (b,),
  'id' int64 (b,) (-1 on padding), 'mask' bool (b,) (False on padding).
  Every process yields the same number of batches, ceil(N / global batch);
  together the unmasked examples are the split, each exactly once.

  Args:
    data_cfg: the data section of a config.
    global_batch_size: examples per batch over all processes.
    process_index: this process; None = jax.process_index().
    process_count: number of processes; None = jax.process_count().

  Returns:
    An EvalIterator (finite; len() is the number of batches).
  """
  sharding = _sharding(global_batch_size, process_index, process_count)
  info = dataset_info(data_cfg)
  location = _locate(data_cfg)
  n = info.num_eval
  num_batches = -(-n // global_batch_size)
  if not info.streamed:
    images, labels = _arrays(
      location, info.name, info.eval_split, data_cfg.verify_checksums
    )
    batches = _memory_eval_batches(images, labels, sharding, n)
    return EvalIterator(batches, num_batches)
  source = _stream_source(location, info.eval_split)
  example = _StreamExample(source, sharding, data_cfg.augment, False, n=n)
  b = sharding.per_process
  ds = grain.MapDataset.range(num_batches * b).map(example).batch(b)
  it = _grain_iter(ds, data_cfg)
  return EvalIterator(it, num_batches, getattr(it, 'close', None))
