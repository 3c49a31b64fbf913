r"""ResNet-50 on ImageNet (He et al. 2016) with Goyal et al.'s recipe.

Run:
  python -m cnn_jax.main --config=configs/resnet50.py --workdir=DIR
Smoke test: add :smoke after the file name (still needs ImageNet on disk).
Hardware: 8 GPUs or a TPU v4-8 or larger; 90 epochs.
Expected: about 76.1% top-1 on the 50,000 validation images (torchvision's
  reference weights for this architecture).
Bottleneck stride: on the 3x3 conv (version v1.5, as torchvision); set
  --config.model.fields.version=v1 for the paper's stride on the 1x1.
Data: imagenet2012 prepared as a tfds ArrayRecord dataset (see README);
  --config.data.data_dir=PATH says where.
"""

from cnn_jax import config_lib


def get_config(mode: str | None = None):
  return config_lib.imagenet_resnet_config(
    50, version='v1.5', smoke=config_lib.is_smoke(mode)
  )
