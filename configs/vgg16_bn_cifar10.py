r"""VGG-16 with BatchNorm on CIFAR-10, adapted to 32x32 inputs.

The last conv stage leaves 1x1x512, so the FC head (512, 512, 10) takes the
real final map; no 7x7 adaptive pooling.

Run:
  python -m cnn_jax.main --config=configs/vgg16_bn_cifar10.py --workdir=DIR
Smoke test: add :smoke after the file name.
Hardware: one GPU; 160 epochs of batch 128, about an hour on an H100.
Expected: about 93-94% top-1 on the 10,000 test images.
"""

from cnn_jax import config_lib


def get_config(mode: str | None = None):
  return config_lib.cifar_vgg_config(
    'vgg16_bn', smoke=config_lib.is_smoke(mode)
  )
