r"""ResNet-20 on CIFAR-10 with the paper's recipe (He et al. 2016, sec. 4.2).

Run:
  python -m cnn_jax.main --config=configs/resnet20_cifar10.py --workdir=DIR
Smoke test (seconds, any machine):
  python -m cnn_jax.main --config=configs/resnet20_cifar10.py:smoke \
      --workdir=DIR
Hardware: one GPU or TPU chip; 164 epochs (64k steps of batch 128).
Expected: about 91.25% top-1 on the 10,000 test images (paper: 8.75% error).
Two epochs on a 2-core CPU (5 min 30 s idle, 75.2% top-1), with a schedule
made for the short budget (README, "Results"):
  python -m cnn_jax.main --config=configs/resnet20_cifar10.py --workdir=DIR \
      --config.train.num_epochs=2 --config.train.batch_size=32 \
      --config.optim.learning_rate=0.05 --config.optim.schedule=cosine \
      --config.optim.warmup_epochs=0.05 --config.optim.nesterov=True \
      --config.optim.label_smoothing=0.1 --config.optim.weight_decay=5e-4 \
      --config.data.augment.pad=2
Data: the official CIFAR-10 binary batches in ../shared/datasets/cifar10;
  --config.data.data_dir=PATH points elsewhere.
"""

from cnn_jax import config_lib


def get_config(mode: str | None = None):
  return config_lib.cifar_resnet_config(20, smoke=config_lib.is_smoke(mode))
