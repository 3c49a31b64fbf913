r"""Plain-20 on CIFAR-10: ResNet-20 without its shortcuts (He et al. 2016).

The degradation baseline: deeper plain nets train worse (paper Fig. 6).

Run:
  python -m cnn_jax.main --config=configs/plain20_cifar10.py --workdir=DIR
Smoke test: add :smoke after the file name.
Hardware: one GPU or TPU chip; 164 epochs (64k steps of batch 128).
Expected: worse than ResNet-20; the paper's Fig. 6 shows plain-56 with higher
  training and test error than plain-20 (roughly 10-13% test error).
"""

from cnn_jax import config_lib


def get_config(mode: str | None = None):
  return config_lib.cifar_resnet_config(
    20, plain=True, smoke=config_lib.is_smoke(mode)
  )
