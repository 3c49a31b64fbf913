"""Reading tfds datasets prepared as ArrayRecord, without TensorFlow.

tensorflow-datasets 4.9.10 without TensorFlow (checked in its sources and
by running it): `builder_from_directory(dir).as_data_source(split)` reads
ArrayRecord files with random access and decodes images with PIL; with
`decoders={'image': SkipDecoding()}` it returns the encoded bytes, which
the streamed pipeline decodes in grain workers. `tfds.load`/`as_dataset`,
TFRecord files and `DESERIALIZE_NO_DECODE` need TensorFlow and are not
used.
"""

from __future__ import annotations

import io
import json
import pathlib
import re

import numpy as np
from PIL import Image

from cnn_jax.data.errors import CorruptDataError

INFO_FILE = 'dataset_info.json'
_VERSION = re.compile(r'^\d+\.\d+\.\d+$')


def find(root: pathlib.Path, name: str) -> pathlib.Path | None:
  """Finds the newest prepared version of `name` under a tfds data_dir.

  Accepts `root` being the data_dir (`root/name/[config/]version`), the
  dataset folder (`root/version`) or the version folder itself.

  Returns:
    The folder holding dataset_info.json, or None.
  """
  candidates = []
  for base in (root / name, root):
    if not base.is_dir():
      continue
    if (base / INFO_FILE).is_file():
      candidates.append(base)
    for child in base.iterdir():
      if _VERSION.match(child.name) and (child / INFO_FILE).is_file():
        candidates.append(child)
      elif child.is_dir() and not _VERSION.match(child.name):
        for grandchild in child.iterdir():  # a builder config's versions
          if (
            _VERSION.match(grandchild.name)
            and (grandchild / INFO_FILE).is_file()
          ):
            candidates.append(grandchild)
  candidates = [c for c in candidates if _info_name(c) == name]
  if not candidates:
    return None
  return max(candidates, key=_version_key)


def _info_name(folder: pathlib.Path) -> str | None:
  try:
    return json.loads((folder / INFO_FILE).read_text()).get('name')
  except (OSError, ValueError):
    return None


def _version_key(folder: pathlib.Path) -> tuple[int, ...]:
  name = folder.name
  return tuple(int(p) for p in name.split('.')) if _VERSION.match(name) else ()


def builder(folder: pathlib.Path):
  """A read-only tfds builder over a prepared dataset folder."""
  import tensorflow_datasets as tfds

  try:
    built = tfds.builder_from_directory(str(folder))
  except Exception as e:
    raise CorruptDataError(
      f'{folder}: not a readable tfds dataset ({type(e).__name__}: {e}).'
    ) from e
  file_format = str(built.info.file_format or '')
  if 'array_record' not in file_format.lower():
    raise CorruptDataError(
      f'{folder}: stored as {file_format or "TFRecord"}, which only '
      'TensorFlow can read. Prepare it as ArrayRecord: python -m '
      'cnn_jax.data.prepare NAME --source=... --data_dir=DIR, or with '
      'TensorFlow: tfds build NAME --file_format=array_record.'
    )
  return built


def splits(folder: pathlib.Path) -> dict[str, int]:
  """Split name -> number of examples, from dataset_info.json."""
  return {
    name: info.num_examples
    for name, info in builder(folder).info.splits.items()
  }


def source(folder: pathlib.Path, split: str, decode_images: bool):
  """A random-access source of {'image', 'label', ...} dicts.

  Args:
    folder: a prepared dataset version folder (see `find`).
    split: e.g. 'train', 'test', 'validation'.
    decode_images: False leaves 'image' as the stored encoded bytes.
  """
  import tensorflow_datasets as tfds

  built = builder(folder)
  if split not in built.info.splits:
    raise KeyError(
      f'{folder} has no split {split!r}; it has {sorted(built.info.splits)}.'
    )
  decoders = None if decode_images else {'image': tfds.decode.SkipDecoding()}
  return built.as_data_source(split=split, decoders=decoders)


def read(
  folder: pathlib.Path, split: str, chunk: int = 1000
) -> tuple[np.ndarray, np.ndarray]:
  """Reads a whole split into uint8 images (N, H, W, C) and int32 labels.

  Examples are returned in their original order when the dataset has an
  'id' feature like tfds's CIFAR builders ('train_00042'), else in stored
  order (cnn_jax's own builders store the original order).
  """
  # Decoding the PNG bytes here with PIL is faster than tfds's decoder.
  data = source(folder, split, decode_images=False)
  images, labels, ids = [], [], []
  for start in range(0, len(data), chunk):
    keys = range(start, min(start + chunk, len(data)))
    where = f'{folder}: records {keys.start}..{keys.stop - 1} of {split!r}'
    try:
      examples = data.__getitems__(keys)
    except Exception as e:
      raise CorruptDataError(
        f'{where} cannot be read ({type(e).__name__}: {e}).'
      ) from e
    for i, example in zip(keys, examples, strict=True):
      images.append(_decode(example['image'], f'{folder}: record {i}'))
      labels.append(example['label'])
      ids.append(_id_index(example.get('id')))
  image = np.stack(images)
  label = np.asarray(labels, np.int32)
  if ids and None not in ids:
    order = np.argsort(np.asarray(ids), kind='stable')
    image, label = image[order], label[order]
  return np.ascontiguousarray(image), label


def _decode(data: bytes, where: str) -> np.ndarray:
  try:
    with Image.open(io.BytesIO(data)) as image:
      array = np.asarray(image)
  except Exception as e:
    raise CorruptDataError(f'{where}: not a decodable image ({e}).') from e
  return array[..., None] if array.ndim == 2 else array


def _id_index(value) -> int | None:
  if value is None:
    return None
  text = value.decode() if isinstance(value, bytes) else str(value)
  match = re.search(r'(\d+)$', text)
  return int(match.group(1)) if match else None
