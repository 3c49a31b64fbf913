"""tfds builders that write local data as ArrayRecord, without TensorFlow.

Used by `python -m cnn_jax.data.prepare`. They live in a package module
because tfds cannot build from a class defined in `__main__`.

What tfds 4.9.10 does without TensorFlow (read in its sources, then run):
`GeneratorBasedBuilder` with `file_format='array_record'` writes and reads
fine, but `Image` can only encode numpy arrays through TensorFlow, so the
builders hand it encoded bytes (PNG made with Pillow, or an image file's
own bytes). `disable_shuffling=True` keeps the original order, so record i
of a split is example i of the raw files.

The CIFAR, MNIST and Fashion-MNIST builders use tfds's dataset names,
versions and features (`image`, `label`, plus `id` / `coarse_label` where
tfds has them), so a prepared folder reads like tfds's own.
"""

from __future__ import annotations

import io
import types
from collections.abc import Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from cnn_jax.data import catalog

# split -> (images uint8 (N, H, W, C), labels int32 (N,), extra features)
SplitArrays = dict[str, tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]]


def encode_png(image: np.ndarray) -> bytes:
  """Lossless PNG bytes of a uint8 (H, W, C) image, C in {1, 3}."""
  array = image[..., 0] if image.shape[-1] == 1 else image
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format='PNG')
  return buffer.getvalue()


class ArrayBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Writes splits that are already in memory as uint8 arrays."""

  VERSION = tfds.core.Version('1.0.0')
  IMAGE_SHAPE: tuple[int, int, int] = (32, 32, 3)
  NUM_CLASSES = 10
  CLASS_NAMES: Sequence[str] = ()
  WITH_ID = False  # tfds's CIFAR builders store 'train_00042'-style ids
  EXTRA_LABELS: dict[str, int] = {}  # feature -> number of classes

  def __init__(self, *, arrays: SplitArrays, **kwargs):
    self._arrays = arrays
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    names = list(self.CLASS_NAMES) or None
    features = {
      'image': tfds.features.Image(shape=self.IMAGE_SHAPE),
      'label': tfds.features.ClassLabel(
        names=names, num_classes=None if names else self.NUM_CLASSES
      ),
    }
    if self.WITH_ID:
      features['id'] = tfds.features.Text()
    for key, num_classes in self.EXTRA_LABELS.items():
      features[key] = tfds.features.ClassLabel(num_classes=num_classes)
    return self.dataset_info_from_configs(
      features=tfds.features.FeaturesDict(features),
      supervised_keys=('image', 'label'),
      disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # everything is local and already read
    return {split: self._generate_examples(split) for split in self._arrays}

  def _generate_examples(self, split: str) -> Iterator[tuple[int, dict]]:
    images, labels, extras = self._arrays[split]
    for i in range(len(images)):
      example = {'image': encode_png(images[i]), 'label': int(labels[i])}
      if self.WITH_ID:
        example['id'] = f'{split}_{i:05d}'
      for key in self.EXTRA_LABELS:
        example[key] = int(extras[key][i])
      yield i, example


class Cifar10(ArrayBuilder, skip_registration=True):
  name = 'cifar10'
  VERSION = tfds.core.Version('3.0.2')
  CLASS_NAMES = catalog.CIFAR10_CLASSES
  WITH_ID = True


class Cifar100(ArrayBuilder, skip_registration=True):
  name = 'cifar100'
  VERSION = tfds.core.Version('3.0.2')
  NUM_CLASSES = 100
  WITH_ID = True
  EXTRA_LABELS = {'coarse_label': 20}


class Mnist(ArrayBuilder, skip_registration=True):
  name = 'mnist'
  VERSION = tfds.core.Version('3.0.1')
  IMAGE_SHAPE = (28, 28, 1)
  CLASS_NAMES = catalog.DIGITS


class FashionMnist(ArrayBuilder, skip_registration=True):
  name = 'fashion_mnist'
  VERSION = tfds.core.Version('3.0.1')
  IMAGE_SHAPE = (28, 28, 1)
  CLASS_NAMES = catalog.FASHION_MNIST_CLASSES


ARRAY_BUILDERS = {
  cls.name: cls for cls in (Cifar10, Cifar100, Mnist, FashionMnist)
}


class ImageFolderBuilder(
  tfds.core.GeneratorBasedBuilder, skip_registration=True
):
  """Stores image files as they are (no re-encoding), with their labels.

  Features: `image` (the file's bytes; JPEG and PNG both decode), `label`
  (index of the class folder in sorted order) and `file_name`, as tfds's
  imagenet2012 has.
  """

  VERSION = tfds.core.Version('1.0.0')

  def __init__(
    self,
    *,
    files: dict[str, list[tuple[str, int]]],
    class_names: Sequence[str],
    **kwargs,
  ):
    self._files = files
    self._class_names = list(class_names)
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
      features=tfds.features.FeaturesDict(
        {
          'image': tfds.features.Image(shape=(None, None, 3)),
          'label': tfds.features.ClassLabel(names=self._class_names),
          'file_name': tfds.features.Text(),
        }
      ),
      supervised_keys=('image', 'label'),
      disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split) for split in self._files}

  def _generate_examples(self, split: str) -> Iterator[tuple[int, dict]]:
    for i, (path, label) in enumerate(self._files[split]):
      with open(path, 'rb') as f:
        data = f.read()
      name = path.rsplit('/', 2)
      yield i, {'image': data, 'label': label, 'file_name': '/'.join(name[-2:])}


def image_folder_builder(name: str) -> type[ImageFolderBuilder]:
  """An ImageFolderBuilder subclass whose tfds dataset name is `name`."""
  return types.new_class(
    f'ImageFolder_{name}',
    (ImageFolderBuilder,),
    {'skip_registration': True},
    lambda ns: ns.update(name=name, __module__=__name__),
  )
