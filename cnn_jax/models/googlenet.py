"""GoogLeNet / Inception v1 (Szegedy et al. 2015, Table 1).

Two registered forms share this module:
- 'googlenet', paper-faithful: conv biases and no BatchNorm, 5x5 kernels in
  the 5x5 branch, LRN after the first pool and after conv3, 3x3/2 max pools,
  aux heads with a 5x5/3 average pool, dropout 0.4.
- 'googlenet_tv', torchvision-compatible: BatchNorm (epsilon 1e-3) instead
  of biases, a 3x3 kernel in the "5x5" branch (a deviation inherited from a
  TensorFlow port), no LRN, a 2x2/2 pool before inception 5a, aux heads with
  an adaptive 4x4 average pool, dropout 0.2.

All max pools round their output size up (Caffe's and torchvision's
ceil_mode), which gives the paper's map sizes: 112 -> 56 -> 28 -> 14 -> 7.

torchvision's pretrained weights were trained on pixels scaled to [-1, 1];
`transform_input=True` maps the ImageNet-normalised input back to that range
first, as torchvision's GoogLeNet(transform_input=True) does.

Parameter names follow torchvision: conv1/{conv,bn}, conv2, conv3,
inception3a/branch1, inception3a/branch2_reduce,
inception3a/branch2, inception3a/branch3_reduce, inception3a/branch3,
inception3a/branch4_proj, ..., aux_head1/{conv,fc1,fc2} (torchvision's aux1),
aux_head2, head/fc. ('aux1' and 'aux2' name the sown aux logits.)
"""

import functools

import flax.linen as nn
import jax.numpy as jnp

from cnn_jax.models import layers
from cnn_jax.models.layers import Array, Dtype

# The per-channel ImageNet statistics that torchvision's data pipeline
# normalises with, and that `transform_input` undoes.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Table 1: #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj.
INCEPTION = {
  '3a': (64, 96, 128, 16, 32, 32),
  '3b': (128, 128, 192, 32, 96, 64),
  '4a': (192, 96, 208, 16, 48, 64),
  '4b': (160, 112, 224, 24, 64, 64),
  '4c': (128, 128, 256, 24, 64, 64),
  '4d': (112, 144, 288, 32, 64, 64),
  '4e': (256, 160, 320, 32, 128, 128),
  '5a': (256, 160, 320, 32, 128, 128),
  '5b': (384, 192, 384, 48, 128, 128),
}


class Inception(nn.Module):
  """One inception module: four branches concatenated on channels.

  With `reductions=False`, the 3x3 and 5x5 branches convolve the module
  input directly (no 1x1 reduction before them); the pool branch keeps its
  1x1 projection so that every module's output width stays as in Table 1.
  """

  widths: tuple[int, int, int, int, int, int]
  large_kernel: int = 5
  reductions: bool = True
  conv_block: functools.partial = layers.ConvBlock

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    w1, r3, w3, r5, w5, wp = self.widths
    block = self.conv_block
    reduce = lambda y, width, name: (
      block(width, 1, name=name)(y, train) if self.reductions else y
    )
    b1 = block(w1, 1, name='branch1')(x, train)
    b2 = reduce(x, r3, 'branch2_reduce')
    b2 = block(w3, 3, name='branch2')(b2, train)
    b3 = reduce(x, r5, 'branch3_reduce')
    b3 = block(w5, self.large_kernel, name='branch3')(b3, train)
    b4 = layers.max_pool(x, 3, 1, 1, ceil_mode=True, name='branch4_pool')
    b4 = block(wp, 1, name='branch4_proj')(b4, train)
    return jnp.concatenate([b1, b2, b3, b4], axis=-1)


class AuxHead(nn.Module):
  """Auxiliary classifier: pool, 1x1 conv to 128, FC 1024, dropout, FC.

  `pool='paper'` is a 5x5/3 average pool (4x4 from a 14x14 map); 'adaptive'
  is torchvision's adaptive average pool to 4x4, usable at any input size.
  """

  num_classes: int
  pool: str = 'paper'
  dropout_rate: float = 0.7
  conv_block: functools.partial = layers.ConvBlock
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    if self.pool == 'adaptive':
      x = layers.adaptive_avg_pool(x, 4, name='pool')
    elif min(x.shape[1:3]) >= 5:
      x = layers.avg_pool(x, 5, 3, name='pool')
    else:
      raise ValueError(
        f"The aux heads' 5x5 average pool needs a map of at least 5x5, got "
        f'{x.shape[1]}x{x.shape[2]}: use larger images, stem="cifar", '
        'aux_pool="adaptive" or aux_heads=False.'
      )
    x = self.conv_block(128, 1, name='conv')(x, train)
    x = layers.flatten_chw(x)
    x = nn.relu(layers.dense(1024, name='fc1', dtype=self.dtype)(x))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = layers.dense(self.num_classes, name='fc2', dtype=self.dtype)(x)
    return x.astype(jnp.float32)


class GoogLeNet(nn.Module):
  """GoogLeNet; the defaults are the paper's, `googlenet_tv` torchvision's.

  Attributes:
    num_classes: classifier outputs.
    batch_norm: BatchNorm after every convolution instead of conv biases.
    bn_epsilon: BatchNorm epsilon (torchvision's GoogLeNet uses 1e-3).
    large_kernel: kernel of the "5x5" branch (torchvision: 3).
    lrn: local response normalisation in the stem, as in the paper.
    reductions: False drops the 1x1 reductions before the 3x3 and 5x5
      convolutions; see `Inception`.
    aux_heads: build the auxiliary classifiers on 4a and 4d. They are
      created at init and run only with train=True, where their logits are
      sown to the 'aux_logits' collection as 'aux1' and 'aux2'; the paper
      weights their losses by 0.3.
    aux_pool: 'paper' (5x5/3 average pool) or 'adaptive' (torchvision).
    aux_dropout_rate: dropout in the aux heads.
    pool4_window: window of the max pool before inception 5a (paper 3,
      torchvision 2; both give 7x7 from 14x14).
    stem: 'imagenet' or 'cifar'; see `_stem`.
    head: 'gap_fc' (the paper), 'fc' or 'gap_conv'; see `layers.Head`.
    dropout_rate: dropout before the classifier.
    dtype: computation dtype; parameters and BN statistics stay float32.
    bn_virtual_batch_size: see `layers.BatchNorm.virtual_batch_size`.
    transform_input: rescale each channel from ImageNet normalisation to
      [-1, 1] before the stem, for torchvision's pretrained weights.
  """

  num_classes: int = 1000
  batch_norm: bool = False
  bn_epsilon: float = 1e-5
  large_kernel: int = 5
  lrn: bool = True
  reductions: bool = True
  aux_heads: bool = True
  aux_pool: str = 'paper'
  aux_dropout_rate: float = 0.7
  pool4_window: int = 3
  stem: str = 'imagenet'
  head: str = 'gap_fc'
  dropout_rate: float = 0.4
  dtype: Dtype = jnp.float32
  bn_virtual_batch_size: int | None = None
  transform_input: bool = False

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    """Maps NHWC images (B, H, W, C) to float32 logits (B, num_classes).

    Sows intermediates stem, stage1 (after 3b), stage2 (after 4e), stage3
    (after 5b) and pre_logits.
    """
    layers.check_nhwc(x)
    if self.transform_input:
      # (x * std + mean - 0.5) / 0.5: normalised input back to pixels in
      # [-1, 1], computed in float32 before any cast to the compute dtype.
      std, mean = jnp.asarray(IMAGENET_STD), jnp.asarray(IMAGENET_MEAN)
      x = x * (std / 0.5) + (mean - 0.5) / 0.5
    x = x.astype(self.dtype)
    block = functools.partial(
      layers.ConvBlock,
      batch_norm=self.batch_norm,
      bn_epsilon=self.bn_epsilon,
      dtype=self.dtype,
      bn_virtual_batch_size=self.bn_virtual_batch_size,
    )

    def inception(key: str, y: Array) -> Array:
      return Inception(
        INCEPTION[key],
        self.large_kernel,
        self.reductions,
        block,
        name=f'inception{key}',
      )(y, train)

    x = self._stem(x, block, train)
    self.sow('intermediates', 'stem', x)

    x = inception('3b', inception('3a', x))
    self.sow('intermediates', 'stage1', x)
    x = layers.max_pool(x, 3, 2, ceil_mode=True, name='pool3')
    x = inception('4a', x)
    self._aux(1, x, block, train)
    x = inception('4d', inception('4c', inception('4b', x)))
    self._aux(2, x, block, train)
    x = inception('4e', x)
    self.sow('intermediates', 'stage2', x)
    x = layers.max_pool(x, self.pool4_window, 2, ceil_mode=True, name='pool4')
    x = inception('5b', inception('5a', x))
    self.sow('intermediates', 'stage3', x)

    head = layers.Head(
      self.num_classes,
      self.head,
      dropout_rate=self.dropout_rate,
      dtype=self.dtype,
      name='head',
    )
    logits, pre_logits = head(x, train)
    self.sow('intermediates', 'pre_logits', pre_logits)
    return logits

  def _stem(self, x: Array, block, train: bool) -> Array:
    """Layers before inception 3a.

    'imagenet' (Table 1): 7x7/2 conv 64, 3x3/2 max pool, [LRN], 1x1 conv
    64, 3x3 conv 192, [LRN], 3x3/2 max pool; 224 -> 28x28x192.
    'cifar': one 3x3 conv to 192 at full resolution, for 32x32 images.
    """
    if self.stem == 'cifar':
      return block(192, 3, name='conv1')(x, train)
    if self.stem != 'imagenet':
      raise ValueError(f'stem={self.stem!r}; expected "imagenet" or "cifar".')
    x = block(64, 7, 2, name='conv1')(x, train)
    x = layers.max_pool(x, 3, 2, ceil_mode=True, name='pool1')
    if self.lrn:
      x = layers.local_response_norm(x, name='lrn1')
    x = block(64, 1, name='conv2')(x, train)
    x = block(192, 3, name='conv3')(x, train)
    if self.lrn:
      x = layers.local_response_norm(x, name='lrn2')
    return layers.max_pool(x, 3, 2, ceil_mode=True, name='pool2')

  def _aux(self, index: int, x: Array, block, train: bool) -> None:
    # Run at init even in eval mode, so that their parameters exist.
    if not self.aux_heads or not (train or self.is_initializing()):
      return
    logits = AuxHead(
      self.num_classes,
      self.aux_pool,
      self.aux_dropout_rate,
      block,
      self.dtype,
      name=f'aux_head{index}',
    )(x, train)
    if train and not self.is_initializing():
      self.sow('aux_logits', f'aux{index}', logits)
