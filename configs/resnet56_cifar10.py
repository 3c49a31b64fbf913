r"""ResNet-56 on CIFAR-10 with the paper's recipe (He et al. 2016, sec. 4.2).

Run:
  python -m cnn_jax.main --config=configs/resnet56_cifar10.py --workdir=DIR
Smoke test (seconds, any machine):
  python -m cnn_jax.main --config=configs/resnet56_cifar10.py:smoke \
      --workdir=DIR
Hardware: one GPU or TPU chip; 164 epochs (64k steps of batch 128).
Expected: about 93.03% top-1 on the 10,000 test images (paper: 6.97% error).
Data: the official CIFAR-10 binary batches in ../shared/datasets/cifar10;
  --config.data.data_dir=PATH points elsewhere.
"""

from cnn_jax import config_lib


def get_config(mode: str | None = None):
  return config_lib.cifar_resnet_config(56, smoke=config_lib.is_smoke(mode))
