r"""Writes local data as a tfds ArrayRecord dataset, without TensorFlow.

Usage:
  python -m cnn_jax.data.prepare cifar10 --source=DIR_OR_ARCHIVE \
      --data_dir=DIR
  python -m cnn_jax.data.prepare imagenet2012 --source=ROOT --data_dir=DIR

NAME is cifar10, cifar100, mnist or fashion_mnist, read from their official
raw files (a folder, or the official archive itself) and checked against
the published checksums; or any other name, read from an image folder ROOT
holding one folder per split (train/, validation/ or val/, test/) of class
folders of .jpg/.png files; every image is decoded once before anything is
written.

The result, DIR/NAME/VERSION/, has tfds's feature names ('image', 'label')
and split names, keeps the original example order, and is read with
--config.data.name=NAME --config.data.data_dir=DIR. Where TensorFlow and
the internet are available, `tfds build NAME --file_format=array_record`
makes an equivalent folder with tfds's own builders.
"""

from __future__ import annotations

import concurrent.futures
import pathlib
import shutil
import sys
import tempfile

from absl import app, flags, logging

from cnn_jax.data import augment, builders, catalog, folder, raw, tfds_io
from cnn_jax.data.errors import DataError, DatasetNotFoundError

SPLITS = ('train', 'test')


def prepare(
  name: str,
  source: str | pathlib.Path,
  data_dir: str | pathlib.Path,
  verify_checksums: bool = True,
  max_examples_per_split: int = 0,
  overwrite: bool = False,
) -> pathlib.Path:
  """Builds dataset `name` from `source` into the tfds data_dir `data_dir`.

  Args:
    name: cifar10, cifar100, mnist, fashion_mnist, or any name for an image
      folder.
    source: a folder with the official raw files, the official archive, or
      an image folder root (root/split/class/*.jpg|png).
    data_dir: the tfds data_dir to write into.
    verify_checksums: compare raw files with the published checksums.
    max_examples_per_split: >0 keeps only the first N examples of each
      split (for quick tests).
    overwrite: replace an existing prepared copy of the same version.

  Returns:
    The folder written, data_dir/name/version.

  Raises:
    DatasetNotFoundError: nothing usable at `source`.
    CorruptDataError: a raw file is wrong or an image does not decode.
    SplitMismatchError: the image folder's splits differ in classes.
  """
  source = pathlib.Path(source).expanduser()
  data_dir = pathlib.Path(data_dir).expanduser()
  if not source.exists():
    raise DatasetNotFoundError(f'--source={source} does not exist.')
  limit = slice(None, max_examples_per_split or None)
  if name in builders.ARRAY_BUILDERS:
    arrays = _read_raw(name, source, verify_checksums, limit)
    builder = builders.ARRAY_BUILDERS[name](
      arrays=arrays, data_dir=str(data_dir), file_format='array_record'
    )
  else:
    files, class_names = _read_folder(name, source, limit)
    builder = builders.image_folder_builder(name)(
      files=files,
      class_names=class_names,
      data_dir=str(data_dir),
      file_format='array_record',
    )
  target = pathlib.Path(builder.data_dir)
  if target.exists():
    if not overwrite:
      logging.info('%s already exists; --overwrite replaces it.', target)
      return target
    shutil.rmtree(target)
  with tempfile.TemporaryDirectory() as downloads:
    builder.download_and_prepare(download_dir=downloads)
  return target


def _read_raw(name, source, verify, limit) -> dict:
  found = raw.find(name, source)
  if found is None and source.is_dir():
    found = raw.find(name, source / name)
  if found is None:
    raise DatasetNotFoundError(
      f'No {name} raw files at --source={source}: expected '
      f'{catalog.SMALL[name].files}, in that folder or the official archive.'
    )
  logging.info('Reading %s', found.describe())
  out = {}
  for split in SPLITS:
    images, labels, extras = raw.read(found, split, verify)
    out[split] = (
      images[limit],
      labels[limit],
      {k: v[limit] for k, v in extras.items()},
    )
  return out


def _read_folder(name, source, limit):
  if not folder.looks_like(source):
    raise DatasetNotFoundError(
      f'--source={source} is not an image folder root (expected '
      f'{source}/train/<class>/*.jpg|png and a test/, validation/ or val/ '
      f'split), and {name} has no raw-file reader (those are cifar10, '
      'cifar100, mnist and fashion_mnist).'
    )
  scanned = folder.scan(source)
  splits = {s: f[limit] for s, f in scanned.splits.items()}
  _check_images([path for files in splits.values() for path, _ in files])
  return splits, scanned.class_names


def _check_images(paths: list[str]) -> None:
  """Decodes every image once, so a bad file stops us before writing."""

  def check(path):
    with open(path, 'rb') as f:
      augment.decode(f.read(), path)

  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    for _ in pool.map(check, paths):
      pass


_SOURCE = flags.DEFINE_string(
  'source', None, 'Folder of raw files, official archive, or image folder.'
)
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'tfds data_dir to write.')
_VERIFY = flags.DEFINE_boolean(
  'verify_checksums', True, 'Check raw files against published checksums.'
)
_MAX = flags.DEFINE_integer(
  'max_examples_per_split', 0, '>0: keep only the first N of each split.'
)
_OVERWRITE = flags.DEFINE_boolean(
  'overwrite', False, 'Replace an existing prepared copy.'
)


def main(argv: list[str]) -> None:
  if len(argv) != 2 or not _SOURCE.value or not _DATA_DIR.value:
    raise app.UsageError(
      'usage: python -m cnn_jax.data.prepare NAME --source=DIR|ARCHIVE '
      '--data_dir=DIR'
    )
  name = argv[1]
  try:
    path = prepare(
      name,
      _SOURCE.value,
      _DATA_DIR.value,
      verify_checksums=_VERIFY.value,
      max_examples_per_split=_MAX.value,
      overwrite=_OVERWRITE.value,
    )
  except DataError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  counts = ', '.join(f'{s} {n:,}' for s, n in tfds_io.splits(path).items())
  print(
    f'{name}: {counts} examples in {path}\n'
    f'Use it with --config.data.name={name} '
    f'--config.data.data_dir={_DATA_DIR.value}'
  )


if __name__ == '__main__':
  app.run(main)
