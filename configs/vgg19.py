r"""VGG-19 on ImageNet (Simonyan & Zisserman 2015).

Run:
  python -m cnn_jax.main --config=configs/vgg19.py --workdir=DIR
Smoke test: add :smoke after the file name (still needs ImageNet on disk).
Hardware: 8 GPUs or a TPU v4-8 or larger; 74 epochs.
Expected: about 72.4% top-1 single-crop (torchvision's reference weights).
Data: imagenet2012 as a tfds ArrayRecord dataset (see README).
"""

from cnn_jax import config_lib


def get_config(mode: str | None = None):
  return config_lib.imagenet_vgg_config(
    'vgg19', smoke=config_lib.is_smoke(mode)
  )
