r"""GoogLeNet with BatchNorm on CIFAR-10, adapted to 32x32 inputs.

A 3x3 conv stem at full resolution replaces the ImageNet stem; no aux heads.

Run:
  python -m cnn_jax.main --config=configs/googlenet_cifar10.py --workdir=DIR
Smoke test: add :smoke after the file name.
Hardware: one GPU; 200 epochs of batch 128, a few hours on an H100.
Expected: about 94-95% top-1 on the 10,000 test images.
"""

from cnn_jax import config_lib


def get_config(mode: str | None = None):
  return config_lib.cifar_googlenet_config(smoke=config_lib.is_smoke(mode))
