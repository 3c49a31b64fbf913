"""ResNets (He et al. 2016) for ImageNet and CIFAR, and their plain twins.

One `ResNet` module covers every depth through its stage table. Parameter
names follow torchvision: conv1, bn1, layer1/block0/{conv1,bn1,...},
layer1/block0/{proj_conv,proj_bn} (torchvision's `downsample`), head/fc.
(The names 'stem' and 'stage1'... key the sown intermediate features, so
submodules cannot use them.)
"""

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from cnn_jax.models import layers
from cnn_jax.models.layers import Array, Dtype

BLOCKS = ('basic', 'bottleneck')
VERSIONS = ('v1', 'v1.5')
SHORTCUTS = ('A', 'B')


class _BlockBase(nn.Module):
  """Fields shared by both block types; see `ResNet` for their meaning."""

  features: int
  strides: int = 1
  residual: bool = True
  shortcut: str = 'B'
  zero_init_residual: bool = False
  version: str = 'v1.5'
  dtype: Dtype = jnp.float32
  bn_virtual_batch_size: int | None = None

  def _conv(self, features: int, kernel: int, strides: int, name: str):
    return layers.conv(features, kernel, strides, name=name, dtype=self.dtype)

  def _bn(self, name: str, zero_init: bool = False):
    return layers.batch_norm(
      name, self.dtype, self.bn_virtual_batch_size, zero_init=zero_init
    )

  def _merge(self, x: Array, y: Array, train: bool) -> Array:
    """Adds the shortcut of block input `x` to branch output `y`, then ReLU."""
    if not self.residual:
      return nn.relu(y)
    if x.shape == y.shape:
      return nn.relu(x + y)
    if self.shortcut == 'A':
      # Option A: subsample, then zero channels appended (no parameters).
      x = x[:, :: self.strides, :: self.strides]
      pad = y.shape[-1] - x.shape[-1]
      return nn.relu(y + jnp.pad(x, ((0, 0),) * 3 + ((0, pad),)))
    x = self._conv(y.shape[-1], 1, self.strides, 'proj_conv')(x)
    return nn.relu(y + self._bn('proj_bn')(x, train))


class BasicBlock(_BlockBase):
  """Two 3x3 convolutions; output has `features` channels."""

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    y = self._conv(self.features, 3, self.strides, 'conv1')(x)
    y = nn.relu(self._bn('bn1')(y, train))
    y = self._conv(self.features, 3, 1, 'conv2')(y)
    y = self._bn('bn2', self.zero_init_residual)(y, train)
    return self._merge(x, y, train)


class BottleneckBlock(_BlockBase):
  """1x1 reduce, 3x3, 1x1 expand to 4 * `features` channels.

  v1 (the paper, Caffe) strides the first 1x1 convolution; v1.5
  (torchvision) strides the 3x3, which costs more compute (the 3x3 runs at
  the higher resolution) and gains some accuracy.
  """

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    s1, s3 = (self.strides, 1) if self.version == 'v1' else (1, self.strides)
    y = self._conv(self.features, 1, s1, 'conv1')(x)
    y = nn.relu(self._bn('bn1')(y, train))
    y = self._conv(self.features, 3, s3, 'conv2')(y)
    y = nn.relu(self._bn('bn2')(y, train))
    y = self._conv(4 * self.features, 1, 1, 'conv3')(y)
    y = self._bn('bn3', self.zero_init_residual)(y, train)
    return self._merge(x, y, train)


class ResNet(nn.Module):
  """A ResNet or, with `residual=False`, its plain twin.

  Stage i (from 0; submodule layer{i+1}) has `width * 2**i` channels (times
  4 after a bottleneck) and halves the resolution except in stage 0. Sows
  intermediates stem, stage1, stage2, ... (each stage's output) and
  pre_logits.

  Attributes:
    stage_sizes: blocks per stage, e.g. (3, 4, 6, 3) for ResNet-50.
    num_classes: classifier outputs.
    block: 'basic' (two 3x3) or 'bottleneck' (1x1, 3x3, 1x1).
    width: channels of the first stage (64 ImageNet, 16 CIFAR).
    stem: 'imagenet' (7x7/2 conv and max pool) or 'cifar' (one 3x3 conv).
    version: 'v1' strides a downsampling bottleneck's first 1x1, 'v1.5' its
      3x3. Same parameters, different compute (REFERENCE: 3.86 vs 4.09 GMACs
      for ResNet-50). Basic blocks are unaffected.
    residual: False removes every shortcut (the paper's plain nets).
    shortcut: where shapes change, 'A' subsamples and zero-pads channels (the
      paper's CIFAR nets) and 'B' projects with a strided 1x1 conv and BN.
    zero_init_residual: start each block's last BN scale at 0, so every
      block starts as relu(shortcut(x)) (Goyal et al. 2017).
    head: 'gap_fc' (the paper), 'fc' or 'gap_conv'; see `layers.Head`.
    dtype: computation dtype; parameters and BN statistics stay float32.
    bn_virtual_batch_size: see `layers.BatchNorm.virtual_batch_size`.
  """

  stage_sizes: Sequence[int]
  num_classes: int = 1000
  block: str = 'basic'
  width: int = 64
  stem: str = 'imagenet'
  version: str = 'v1.5'
  residual: bool = True
  shortcut: str = 'B'
  zero_init_residual: bool = False
  head: str = 'gap_fc'
  dtype: Dtype = jnp.float32
  bn_virtual_batch_size: int | None = None

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    """Maps NHWC images (B, H, W, C) to float32 logits (B, num_classes)."""
    self._check_fields()
    layers.check_nhwc(x)
    x = x.astype(self.dtype)
    x = self._stem(x, train)
    self.sow('intermediates', 'stem', x)

    block_cls = BasicBlock if self.block == 'basic' else BottleneckBlock
    block_cls = functools.partial(
      block_cls,
      residual=self.residual,
      shortcut=self.shortcut,
      zero_init_residual=self.zero_init_residual,
      version=self.version,
      dtype=self.dtype,
      bn_virtual_batch_size=self.bn_virtual_batch_size,
    )
    for i, num_blocks in enumerate(self.stage_sizes):
      strides = 1 if i == 0 else 2
      stage = Stage(
        block_cls, num_blocks, self.width * 2**i, strides, name=f'layer{i + 1}'
      )
      x = stage(x, train)
      self.sow('intermediates', f'stage{i + 1}', x)

    head = layers.Head(
      self.num_classes, self.head, dtype=self.dtype, name='head'
    )
    logits, pre_logits = head(x, train)
    self.sow('intermediates', 'pre_logits', pre_logits)
    return logits

  def _stem(self, x: Array, train: bool) -> Array:
    """'imagenet': 7x7/2 conv, BN, ReLU, 3x3/2 max pool; 'cifar': 3x3 conv."""
    imagenet = self.stem == 'imagenet'
    kernel, strides = (7, 2) if imagenet else (3, 1)
    x = layers.conv(
      self.width, kernel, strides, name='conv1', dtype=self.dtype
    )(x)
    bn = layers.batch_norm('bn1', self.dtype, self.bn_virtual_batch_size)
    x = nn.relu(bn(x, train))
    return layers.max_pool(x, 3, 2, 1, name='pool1') if imagenet else x

  def _check_fields(self) -> None:
    for field, value, allowed in (
      ('block', self.block, BLOCKS),
      ('version', self.version, VERSIONS),
      ('shortcut', self.shortcut, SHORTCUTS),
      ('stem', self.stem, ('imagenet', 'cifar')),
    ):
      if value not in allowed:
        raise ValueError(
          f'ResNet {field}={value!r}; expected one of {allowed}.'
        )
    if self.zero_init_residual and not self.residual:
      raise ValueError(
        'zero_init_residual=True needs shortcuts: a plain net (residual=False)'
        ' would start with every block output at zero.'
      )


class Stage(nn.Module):
  """`num_blocks` blocks named block0, block1, ...; the first strides."""

  block_cls: type[nn.Module] | functools.partial
  num_blocks: int
  features: int
  strides: int

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    for j in range(self.num_blocks):
      strides = self.strides if j == 0 else 1
      x = self.block_cls(self.features, strides, name=f'block{j}')(x, train)
    return x
