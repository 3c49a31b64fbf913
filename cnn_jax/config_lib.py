"""Building blocks for the experiment configs in configs/.

Every config file calls `base_config()` and changes only what differs, so
every field exists (and can be overridden with --config.a.b=value) in every
experiment. Durations carry their unit in the name; the train loop converts
epochs to steps in one place (cnn_jax.optim / cnn_jax.train.run_lengths).
"""

from __future__ import annotations

import os

import ml_collections

from cnn_jax import data as data_lib
from cnn_jax import errors

MODES = ('smoke',)


def is_smoke(mode: str | None) -> bool:
  """The mode after ':' in --config=FILE:MODE; only 'smoke' exists."""
  if mode in (None, ''):
    return False
  if mode not in MODES:
    raise errors.ConfigError(
      f'--config=...:{mode}: unknown config mode; add :smoke after the '
      'file name for the smoke run, or nothing for the full run.'
    )
  return True


# The project's shared data sits beside the repository checkout
# (../shared/datasets); resolved from this file so any working directory works.
SHARED_DATASETS = os.path.normpath(
  os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'datasets')
)
CIFAR10_RAW = os.path.join(SHARED_DATASETS, 'cifar10')


def base_config() -> ml_collections.ConfigDict:
  """Every field the train loop reads, with neutral defaults."""
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.model = ml_collections.ConfigDict()
  c.model.name = 'resnet20'
  # Computation dtype; params, BatchNorm statistics and the loss stay
  # float32. 'bfloat16' for mixed precision.
  c.model.dtype = 'float32'
  # Keyword fields of the model constructor (see cnn_jax.models). Only the
  # fields listed here can be overridden from the command line.
  c.model.fields = ml_collections.ConfigDict()

  c.data = data_lib.default_config()

  c.optim = ml_collections.ConfigDict()
  c.optim.name = 'sgd'  # sgd | adamw
  c.optim.learning_rate = 0.1  # peak rate, before batch scaling
  c.optim.lr_batch_size = 0  # >0: lr scales by batch / lr_batch_size
  c.optim.momentum = 0.9
  c.optim.nesterov = False
  c.optim.b1 = 0.9  # adamw only
  c.optim.b2 = 0.999
  c.optim.eps = 1e-8
  c.optim.weight_decay = 1e-4
  # Regex over '/'-joined param paths; the default decays conv and dense
  # kernels only (no biases, no BatchNorm scales or offsets).
  c.optim.weight_decay_pattern = 'kernel$'
  c.optim.schedule = 'piecewise'  # constant | piecewise | cosine | staircase
  c.optim.warmup_epochs = 0.0
  c.optim.warmup_start_factor = 0.0  # warm-up starts at peak x this
  # Piecewise only: where the rate is multiplied by decay_factor, as
  # fractions of the whole run (the CIFAR ResNets' 32k and 48k of 64k
  # iterations are 0.5 and 0.75).
  c.optim.decay_at_fractions = (0.5, 0.75)
  c.optim.decay_factor = 0.1
  c.optim.decay_every_epochs = 8.0  # staircase only
  c.optim.label_smoothing = 0.0
  c.optim.grad_clip_norm = 0.0  # 0 = off
  c.optim.ema_decay = 0.0  # 0 = no EMA of the weights

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 128  # global, over all devices and hosts
  c.train.eval_batch_size = 256
  c.train.num_epochs = 1.0
  c.train.num_train_steps = -1  # >0 overrides num_epochs
  c.train.log_every_steps = 50
  c.train.eval_every_steps = -1  # -1: only at the end
  c.train.aux_loss_weight = 0.3  # GoogLeNet's auxiliary heads
  c.train.eval_only = False  # evaluate the latest checkpoint and stop
  # >0: save and stop once this step is reached, as if preempted, without
  # changing the schedule (for runs split over time-limited jobs).
  c.train.stop_at_step = -1

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 1000  # and always at the end
  c.checkpoint.keep = 3  # the last N, plus the best by eval top-1
  c.checkpoint.async_save = True
  # A directory written by cnn_jax.convert (or save_variables) to start
  # from, e.g. pretrained torchvision weights for train.eval_only.
  c.checkpoint.init_from = ''

  c.parallel = ml_collections.ConfigDict()
  c.parallel.num_devices = 0  # 0: every device
  # 0: BatchNorm statistics over the global batch. k > 0: over groups of k
  # consecutive examples, as with per-GPU BatchNorm on k examples per GPU.
  c.parallel.bn_virtual_batch_size = 0
  c.parallel.distributed = False  # force jax.distributed.initialize()
  c.parallel.coordinator_address = ''  # e.g. 127.0.0.1:1234
  c.parallel.num_processes = 1
  c.parallel.process_id = 0
  return c


def cifar_resnet_config(
  depth: int, plain: bool = False, smoke: bool = False
) -> ml_collections.ConfigDict:
  """He et al. 2016, section 4.2: the CIFAR-10 ResNet/plain-net recipe.

  Batch 128, SGD momentum 0.9, weight decay 1e-4, lr 0.1 divided by 10 at
  32k and 48k iterations, stop at 64k (82, 123 and 164 epochs of 391 steps);
  4-pixel zero padding, random crops and flips.
  """
  c = base_config()
  c.model.name = f'{"plain" if plain else "resnet"}{depth}'
  c.model.fields.shortcut = 'A'
  c.data.name = 'cifar10'
  c.data.data_dir = CIFAR10_RAW
  c.train.num_epochs = 164.0
  c.train.eval_every_steps = 2000
  c.optim.learning_rate = 0.1
  c.optim.decay_at_fractions = (0.5, 0.75)
  if depth >= 110:
    # The paper warms ResNet-110 up at lr 0.01 for about 400 iterations
    # (about one epoch) until the training error drops below 80%.
    c.optim.warmup_epochs = 1.0
    c.optim.warmup_start_factor = 0.1
  if smoke:
    apply_smoke(c)
  return c


def cifar_vgg_config(
  name: str = 'vgg16_bn', smoke: bool = False
) -> ml_collections.ConfigDict:
  """A VGG adapted to 32x32 CIFAR-10 images.

  The five conv stages leave a 1x1x512 map, so the FC head takes 512
  features (not a 7x7 adaptive pool); its hidden layers are 512 wide, as in
  the common CIFAR adaptations, instead of ImageNet's 4096.
  """
  c = cifar_resnet_config(20, smoke=False)
  c.model.name = name
  c.model.fields = ml_collections.ConfigDict()
  c.model.fields.head = 'fc'
  c.model.fields.hidden_features = (512, 512)
  c.model.fields.dropout_rate = 0.5
  c.model.fields.stacked_3x3 = True
  c.optim.learning_rate = 0.05
  c.optim.weight_decay = 5e-4
  c.optim.schedule = 'cosine'
  c.train.num_epochs = 160.0
  if smoke:
    apply_smoke(c)
  return c


def cifar_googlenet_config(smoke: bool = False) -> ml_collections.ConfigDict:
  """GoogLeNet with BatchNorm adapted to 32x32 CIFAR-10 images.

  The ImageNet stem (7x7/2 conv and two stride-2 pools) would shrink 32x32
  to 8x8 before inception 3a; a single 3x3 conv to 192 channels at full
  resolution replaces it. The auxiliary heads are off: their 5x5/3 pooling
  was designed for 14x14 maps.
  """
  c = cifar_resnet_config(20, smoke=False)
  c.model.name = 'googlenet'
  c.model.fields = ml_collections.ConfigDict()
  c.model.fields.stem = 'cifar'
  c.model.fields.batch_norm = True
  c.model.fields.lrn = False
  c.model.fields.aux_heads = False
  c.model.fields.reductions = True
  c.model.fields.large_kernel = 5
  c.model.fields.head = 'gap_fc'
  c.model.fields.dropout_rate = 0.4
  c.optim.learning_rate = 0.1
  c.optim.weight_decay = 5e-4
  c.optim.schedule = 'cosine'
  c.train.num_epochs = 200.0
  if smoke:
    apply_smoke(c)
  return c


def imagenet_config(smoke: bool = False) -> ml_collections.ConfigDict:
  """ImageNet-1k at 224x224 read from a tfds data_dir (imagenet2012)."""
  c = base_config()
  c.data.name = 'imagenet2012'
  c.train.batch_size = 256
  c.train.eval_batch_size = 256
  c.train.num_epochs = 90.0
  c.train.log_every_steps = 100
  c.train.eval_every_steps = 5000
  c.checkpoint.every_steps = 5000
  if smoke:
    apply_smoke(c)
  return c


def imagenet_resnet_config(
  depth: int, version: str = 'v1.5', smoke: bool = False
) -> ml_collections.ConfigDict:
  """Goyal et al. 2017's recipe for He et al. 2016's ImageNet ResNets.

  SGD momentum 0.9, lr 0.1 x batch / 256 after 5 warm-up epochs, 90 epochs
  divided by 10 at 30 and 60, weight decay 1e-4 on kernels only.
  `version` 'v1.5' (torchvision's) puts a downsampling bottleneck's stride
  on its 3x3 conv, 'v1' (the paper's) on its first 1x1; parameter counts are
  equal, FLOPs and accuracy are not.
  """
  c = imagenet_config(smoke)
  c.model.name = f'resnet{depth}'
  c.model.fields.version = version
  c.model.fields.zero_init_residual = False
  c.optim.lr_batch_size = 256
  c.optim.learning_rate = 0.1
  c.optim.warmup_epochs = 5.0
  c.optim.schedule = 'piecewise'
  c.optim.decay_at_fractions = (1 / 3, 2 / 3)
  c.optim.weight_decay = 1e-4
  c.optim.label_smoothing = 0.0
  return c


def imagenet_vgg_config(
  name: str, smoke: bool = False
) -> ml_collections.ConfigDict:
  """Simonyan & Zisserman 2015: SGD lr 0.01, weight decay 5e-4, dropout 0.5.

  The paper divides the rate by 10 when validation accuracy stalls (three
  times in 74 epochs); fixed decays at 1/3 and 2/3 of the run stand in.
  """
  c = imagenet_config(smoke)
  c.model.name = name
  c.model.fields.head = 'fc'
  c.model.fields.dropout_rate = 0.5
  c.optim.learning_rate = 0.01
  c.optim.lr_batch_size = 256
  c.optim.weight_decay = 5e-4
  c.optim.decay_at_fractions = (1 / 3, 2 / 3)
  c.train.num_epochs = 74.0
  return c


def imagenet_googlenet_config(smoke: bool = False) -> ml_collections.ConfigDict:
  """GoogLeNet (Szegedy et al. 2014) with the paper's own recipe.

  SGD momentum 0.9, the rate cut by 4% every 8 epochs, auxiliary losses
  weighted 0.3, dropout 0.4 before the classifier and 0.7 in the aux heads,
  LRN in the stem. The paper trained asynchronously on CPUs with Polyak
  averaging; an EMA of the weights stands in for the latter.
  """
  c = imagenet_config(smoke)
  c.model.name = 'googlenet'
  c.model.fields.aux_heads = True
  c.model.fields.lrn = True
  c.model.fields.large_kernel = 5
  c.model.fields.dropout_rate = 0.4
  c.model.fields.head = 'gap_fc'
  # True for torchvision's pretrained googlenet_tv weights (see convert.py).
  c.model.fields.transform_input = False
  c.optim.learning_rate = 0.04
  c.optim.lr_batch_size = 256
  c.optim.schedule = 'staircase'
  c.optim.decay_factor = 0.96
  c.optim.decay_every_epochs = 8.0
  c.optim.weight_decay = 2e-4
  c.optim.ema_decay = 0.9999
  c.train.num_epochs = 250.0
  c.train.aux_loss_weight = 0.3
  return c


def default_config(smoke: bool = False) -> ml_collections.ConfigDict:
  """The quick start: ResNet-20 on the embedded 5,000-digit MNIST subset."""
  c = cifar_resnet_config(20, smoke=False)
  c.data = data_lib.default_config()
  c.data.name = 'mnist_5k'
  c.train.batch_size = 128
  c.train.num_epochs = 3.0
  c.train.log_every_steps = 10
  c.train.eval_every_steps = -1
  c.checkpoint.every_steps = 1000
  c.optim.schedule = 'cosine'
  c.optim.learning_rate = 0.1
  c.optim.warmup_epochs = 0.5
  if smoke:
    apply_smoke(c)
  return c


def apply_smoke(c: ml_collections.ConfigDict) -> None:
  """Shrinks a config to seconds: tiny batches, a few steps, a small eval."""
  c.train.batch_size = 16
  c.train.eval_batch_size = 32
  c.train.num_train_steps = 4
  c.train.log_every_steps = 2
  c.train.eval_every_steps = -1
  c.checkpoint.every_steps = 2
  c.data.eval_limit = 64
  c.data.train_limit = 256
