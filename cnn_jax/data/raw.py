"""Readers for the official raw files of CIFAR-10/100, MNIST, Fashion-MNIST.

Supported layouts, in a folder or in the official archive:
- CIFAR binary version (`data_batch_1.bin`, ...) and python version
  (`data_batch_1`, ... pickles), or `cifar-10-binary.tar.gz` etc.;
- IDX files, gzipped or not (`train-images-idx3-ubyte[.gz]`, ...).

Each file is checked for its size and format, and, where a checksum of the
official file is published, against that checksum (`catalog.CHECKSUMS`).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import pathlib
import pickle
import struct
import tarfile
from collections.abc import Callable

import numpy as np

from cnn_jax.data import catalog
from cnn_jax.data.errors import CorruptDataError

# uint8 images (N, H, W, C), int32 labels (N,), and any further per-example
# labels by name (CIFAR-100's 'coarse_label').
Arrays = tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]

SKIP_HINT = (
  'skip the checksum with --config.data.verify_checksums=False '
  '(prepare: --noverify_checksums)'
)


@dataclasses.dataclass(frozen=True)
class _Format:
  """One official layout of a dataset's raw files."""

  kind: str
  subdirs: tuple[str, ...]  # where under the root the files may sit
  splits: dict[str, tuple[str, ...]]
  archive: str  # the official archive that holds these files
  parse: Callable[[str, list[tuple[str, bytes]]], Arrays]
  optional_gz: bool = False  # each file may also be `name.gz`


def _cifar_binary(label_bytes: int, count: int):
  """Parses CIFAR binary records: label byte(s), then R, G, B planes."""
  record = label_bytes + 3072

  def parse(name: str, files: list[tuple[str, bytes]]) -> Arrays:
    images, labels, coarse = [], [], []
    for where, data in files:
      expected = count * record if count else None
      if len(data) % record or (expected and len(data) != expected):
        want = f'{expected:,} bytes' if expected else f'a multiple of {record}'
        raise CorruptDataError(
          f'{where}: {len(data):,} bytes; a {name} binary file has {want} '
          f'({record:,}-byte records). The file is truncated or not a '
          f'{name} file.'
        )
      rows = np.frombuffer(data, np.uint8).reshape(-1, record)
      # CIFAR-100 records hold the coarse label first, then the fine one.
      labels.append(rows[:, label_bytes - 1].astype(np.int32))
      coarse.append(rows[:, 0].astype(np.int32))
      images.append(rows[:, label_bytes:].reshape(-1, 3, 32, 32))
    image = np.concatenate(images).transpose(0, 2, 3, 1)
    extras = {'coarse_label': np.concatenate(coarse)} if label_bytes > 1 else {}
    return np.ascontiguousarray(image), np.concatenate(labels), extras

  return parse


class _ArrayUnpickler(pickle.Unpickler):
  """Unpickles only dicts, lists, strings and numpy arrays.

  The CIFAR python version is a pickle; a plain pickle.load would run any
  code a tampered file carries.
  """

  _ALLOWED = {
    ('numpy.core.multiarray', '_reconstruct'): 'numpy._core.multiarray',
    ('numpy._core.multiarray', '_reconstruct'): 'numpy._core.multiarray',
    ('numpy', 'ndarray'): 'numpy',
    ('numpy', 'dtype'): 'numpy',
    # Python 3 writes bytes into protocol-2 pickles through this.
    ('_codecs', 'encode'): '_codecs',
  }

  def find_class(self, module, name):
    target = self._ALLOWED.get((module, name))
    if target is None:
      raise pickle.UnpicklingError(f'{module}.{name} is not allowed')
    return super().find_class(target, name)


def _cifar_pickle(label_key: bytes, count: int):
  """Parses CIFAR python-version pickles: {b'data': (N, 3072), labels}."""

  def parse(name: str, files: list[tuple[str, bytes]]) -> Arrays:
    images, labels, coarse = [], [], []
    for where, data in files:
      try:
        batch = _ArrayUnpickler(io.BytesIO(data), encoding='bytes').load()
        image = np.asarray(batch[b'data'], np.uint8).reshape(-1, 3, 32, 32)
        label = np.asarray(batch[label_key], np.int32)
        if b'coarse_labels' in batch:
          coarse.append(np.asarray(batch[b'coarse_labels'], np.int32))
      except Exception as e:
        raise CorruptDataError(
          f'{where}: not a {name} python-version batch ({e}).'
        ) from e
      if len(image) != len(label) or (count and len(image) != count):
        raise CorruptDataError(
          f'{where}: {len(image)} images and {len(label)} labels; expected '
          f'{count:,} of each.'
        )
      images.append(image)
      labels.append(label)
    image = np.concatenate(images).transpose(0, 2, 3, 1)
    extras = {'coarse_label': np.concatenate(coarse)} if coarse else {}
    return np.ascontiguousarray(image), np.concatenate(labels), extras

  return parse


def _idx(name: str, files: list[tuple[str, bytes]]) -> Arrays:
  """Parses an IDX image file and its IDX label file (MNIST's format)."""
  (image_where, image_data), (label_where, label_data) = files
  images = _idx_array(image_where, image_data, 0x803, 3)
  labels = _idx_array(label_where, label_data, 0x801, 1)
  if len(images) != len(labels):
    raise CorruptDataError(
      f'{image_where} holds {len(images):,} images but {label_where} '
      f'{len(labels):,} labels.'
    )
  return images[..., None], labels.astype(np.int32), {}


def _idx_array(where: str, data: bytes, magic: int, ndim: int) -> np.ndarray:
  header = 4 + 4 * ndim
  if len(data) < header or struct.unpack('>i', data[:4])[0] != magic:
    raise CorruptDataError(
      f'{where}: not an IDX file of {ndim}-d uint8 data (magic number '
      f'{magic:#010x} expected).'
    )
  shape = struct.unpack(f'>{ndim}i', data[4:header])
  if len(data) != header + int(np.prod(shape)):
    raise CorruptDataError(
      f'{where}: {len(data):,} bytes, but its header {shape} says '
      f'{header + int(np.prod(shape)):,}. The file is truncated.'
    )
  return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


def _cifar10_files(ext: str) -> dict[str, tuple[str, ...]]:
  train = tuple(f'data_batch_{i}{ext}' for i in range(1, 6))
  return {'train': train, 'test': (f'test_batch{ext}',)}


def _idx_files() -> dict[str, tuple[str, ...]]:
  return {
    split: (f'{prefix}-images-idx3-ubyte', f'{prefix}-labels-idx1-ubyte')
    for split, prefix in (('train', 'train'), ('test', 't10k'))
  }


FORMATS: dict[str, tuple[_Format, ...]] = {
  'cifar10': (
    _Format(
      'binary',
      ('', 'cifar-10-batches-bin'),
      _cifar10_files('.bin'),
      'cifar-10-binary.tar.gz',
      _cifar_binary(1, 10_000),
    ),
    _Format(
      'python',
      ('', 'cifar-10-batches-py'),
      _cifar10_files(''),
      'cifar-10-python.tar.gz',
      _cifar_pickle(b'labels', 10_000),
    ),
  ),
  'cifar100': (
    _Format(
      'binary',
      ('', 'cifar-100-binary'),
      {'train': ('train.bin',), 'test': ('test.bin',)},
      'cifar-100-binary.tar.gz',
      _cifar_binary(2, 0),
    ),
    _Format(
      'python',
      ('', 'cifar-100-python'),
      {'train': ('train',), 'test': ('test',)},
      'cifar-100-python.tar.gz',
      _cifar_pickle(b'fine_labels', 0),
    ),
  ),
  'mnist': (
    _Format('idx', ('', 'raw', 'MNIST/raw'), _idx_files(), '', _idx, True),
  ),
  'fashion_mnist': (
    _Format(
      'idx', ('', 'raw', 'FashionMNIST/raw'), _idx_files(), '', _idx, True
    ),
  ),
}


@dataclasses.dataclass(frozen=True)
class Found:
  """Where a dataset's raw files are: a folder of files, or an archive."""

  name: str
  format: _Format
  location: pathlib.Path  # the folder holding the files, or the archive
  paths: dict[str, pathlib.Path]  # file name -> path (folders only)

  def describe(self) -> str:
    return f'{self.name} ({self.format.kind} files) in {self.location}'


def find(name: str, root: pathlib.Path) -> Found | None:
  """Looks for the raw files of dataset `name` in or just under `root`.

  Returns None if no file of the dataset is there. Raises CorruptDataError
  when some files of a layout are there and others are missing.
  """
  for fmt in FORMATS.get(name, ()):
    if fmt.archive:
      archive = root if root.name == fmt.archive else root / fmt.archive
      if archive.is_file():
        return Found(name, fmt, archive, {})
    for sub in fmt.subdirs:
      folder = root / sub if sub else root
      if not folder.is_dir():
        continue
      paths, missing = {}, []
      for file in (f for files in fmt.splits.values() for f in files):
        candidates = [folder / file]
        if fmt.optional_gz:
          candidates.append(folder / f'{file}.gz')
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
          missing.append(file)
        else:
          paths[file] = path
      if paths and missing:
        raise CorruptDataError(
          f'{folder} holds part of {name} ({fmt.kind} version): '
          f'{", ".join(missing)} missing. Add the missing files.'
        )
      if paths:
        return Found(name, fmt, folder, paths)
  return None


def read(found: Found, split: str, verify: bool = True) -> Arrays:
  """Reads one split: uint8 images (N, H, W, C), int32 labels, extras.

  Sizes and formats are checked first (a truncated file is reported as
  such), then, with `verify`, the published checksums.

  Raises:
    CorruptDataError: a file has the wrong size or format, or (with
      `verify`) does not match the published checksum of the official file.
    KeyError: the split is not 'train' or 'test'.
  """
  names = found.format.splits[split]
  if not found.paths:
    return _read_archive(found, names, verify)
  files, checks = [], []
  for file in names:
    path = found.paths[file]
    packed = path.read_bytes()
    gz = packed if path.suffix == '.gz' else b''
    content = _gunzip(path, packed) if gz else packed
    files.append((str(path), content))
    checks.append((path, content, file, gz))
  arrays = found.format.parse(found.name, files)
  if verify:
    for path, content, file, gz in checks:
      check(path, content, found.name, file, gz=gz)
  return arrays


def _gunzip(path: pathlib.Path, data: bytes) -> bytes:
  try:
    return gzip.decompress(data)
  except (OSError, EOFError) as e:
    raise CorruptDataError(f'{path}: not a valid gzip file ({e}).') from e


def _read_archive(found: Found, names: tuple[str, ...], verify: bool) -> Arrays:
  archive = found.location
  wanted, out = set(names), {}
  try:
    with tarfile.open(archive, 'r:*') as tar:
      for member in tar:
        base = member.name.rsplit('/', 1)[-1]
        if member.isfile() and base in wanted and base not in out:
          out[base] = tar.extractfile(member).read()
  except (tarfile.TarError, OSError, EOFError) as e:
    raise CorruptDataError(f'{archive}: unreadable archive ({e}).') from e
  missing = wanted - out.keys()
  if missing:
    raise CorruptDataError(
      f'{archive}: lacks {", ".join(sorted(missing))}; it is not the '
      f'official {found.format.archive}.'
    )
  files = [(f'{archive}:{n}', out[n]) for n in names]
  arrays = found.format.parse(found.name, files)
  if verify:
    check(archive, archive.read_bytes(), found.name, found.format.archive)
  return arrays


def check(
  path: pathlib.Path, content: bytes, name: str, file: str, gz: bytes = b''
) -> None:
  """Compares a file with the published checksums of the official one.

  Args:
    path: the file, for the message.
    content: its uncompressed bytes.
    name: the dataset.
    file: the official file name, without .gz.
    gz: the .gz file's own bytes when `path` is gzipped.

  Raises:
    CorruptDataError: checksums are published for this file and none
      matches.
  """
  expected = catalog.CHECKSUMS.get(f'{name}/{file}')
  if not expected:
    return
  seen = []
  for scope, algo, digest in expected:
    data = content if scope == 'content' else gz
    if not data:
      continue
    got = hashlib.new(algo, data).hexdigest()
    if got == digest:
      return
    what = 'uncompressed content' if gz and scope == 'content' else 'file'
    seen.append(f'{algo} of the {what} is {got}, expected {digest}')
  if seen:
    raise CorruptDataError(
      f'{path}: does not match the published checksum of the official '
      f'{file} ({"; ".join(seen)}). The file is damaged or not the official '
      f'one: replace it, or {SKIP_HINT}.'
    )
