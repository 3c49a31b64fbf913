r"""GoogLeNet (Inception v1) on ImageNet with the paper's recipe.

Paper-faithful: 5x5 kernels, LRN, conv biases, aux heads weighted 0.3.
For torchvision's variant (BatchNorm, 3x3 "5x5" branch) use
--config.model.name=googlenet_tv.

Run:
  python -m cnn_jax.main --config=configs/googlenet.py --workdir=DIR
Smoke test: add :smoke after the file name (still needs ImageNet on disk).
Hardware: 8 GPUs or a TPU v4-8 or larger; 250 epochs.
Expected: about 69-70% top-1 single-crop (the paper reports 10.07% top-5
  error with 7 models and 144 crops; torchvision's weights give 69.8%).
Data: imagenet2012 as a tfds ArrayRecord dataset (see README).
"""

from cnn_jax import config_lib


def get_config(mode: str | None = None):
  return config_lib.imagenet_googlenet_config(smoke=config_lib.is_smoke(mode))
