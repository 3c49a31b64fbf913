"""VGG (Simonyan and Zisserman 2015), configurations A, B, D and E.

Parameter names: block{i}/conv{j} and block{i}/bn{j} (from 1), then the
head: head/fc1, head/fc2, head/fc3; block i's output is the intermediate
feature 'stage{i}'. Convolutions keep their bias even with BatchNorm, as
torchvision's vgg*_bn do, so parameter counts match theirs.

The 'fc' head flattens the real final map in channel-major order (see
`layers.flatten_chw`), so torchvision's classifier.0 weight maps onto
head/fc1 by a transpose. torchvision's 7x7 adaptive average pool is the
identity at 224x224; it is omitted, so a 32x32 input gives 1x1x512 = 512
features to fc1 instead of a 7x7 copy of one pixel.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from cnn_jax.models import layers
from cnn_jax.models.layers import Array, Dtype

# Convolutions per stage; stage widths are 64, 128, 256, 512, 512.
STAGE_SIZES = {
  11: (1, 1, 2, 2, 2),  # A
  13: (2, 2, 2, 2, 2),  # B
  16: (2, 2, 3, 3, 3),  # D
  19: (2, 2, 4, 4, 4),  # E
}


class VGGBlock(nn.Module):
  """Convolutions with ReLU, then a 2x2/2 max pool.

  With `stacked_3x3=False`, the n stacked 3x3 convolutions become one
  (2n+1)x(2n+1) convolution with the same receptive field: the ablation of
  the paper's section 2.3 (two 3x3 vs one 5x5, three 3x3 vs one 7x7).
  """

  num_convs: int
  features: int
  batch_norm: bool = False
  stacked_3x3: bool = True
  dtype: Dtype = jnp.float32
  bn_virtual_batch_size: int | None = None

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    if self.stacked_3x3:
      kernels = [3] * self.num_convs
    else:
      kernels = [2 * self.num_convs + 1]
    for j, kernel in enumerate(kernels, start=1):
      x = layers.conv(
        self.features, kernel, use_bias=True, dtype=self.dtype, name=f'conv{j}'
      )(x)
      if self.batch_norm:
        bn = layers.batch_norm(f'bn{j}', self.dtype, self.bn_virtual_batch_size)
        x = bn(x, train)
      x = nn.relu(x)
    return layers.max_pool(x, 2, 2)


class VGG(nn.Module):
  """VGG network.

  Attributes:
    stage_sizes: convolutions per stage, e.g. STAGE_SIZES[16].
    num_classes: classifier outputs.
    widths: channels per stage.
    batch_norm: BatchNorm after every convolution (the *_bn variants).
    stacked_3x3: False replaces each stage's stack of n 3x3 convolutions by
      one (2n+1)x(2n+1) convolution; see `VGGBlock`.
    head: 'fc' (the paper's 4096-4096-classes), 'gap_fc' or 'gap_conv'.
    hidden_features: widths of the hidden FC layers of the 'fc' head.
    dropout_rate: dropout between FC layers (and before the classifier of
      the GAP heads).
    dtype: computation dtype; parameters and BN statistics stay float32.
    bn_virtual_batch_size: see `layers.BatchNorm.virtual_batch_size`.
  """

  stage_sizes: Sequence[int]
  num_classes: int = 1000
  widths: Sequence[int] = (64, 128, 256, 512, 512)
  batch_norm: bool = False
  stacked_3x3: bool = True
  head: str = 'fc'
  hidden_features: Sequence[int] = (4096, 4096)
  dropout_rate: float = 0.5
  dtype: Dtype = jnp.float32
  bn_virtual_batch_size: int | None = None

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    """Maps NHWC images (B, H, W, C) to float32 logits (B, num_classes).

    Sows intermediates stage1..stage5 (after each pool) and pre_logits;
    VGG has no stem.
    """
    layers.check_nhwc(x)
    x = x.astype(self.dtype)
    for i, (n, width) in enumerate(
      zip(self.stage_sizes, self.widths, strict=True)
    ):
      x = VGGBlock(
        n,
        width,
        self.batch_norm,
        self.stacked_3x3,
        self.dtype,
        self.bn_virtual_batch_size,
        name=f'block{i + 1}',
      )(x, train)
      self.sow('intermediates', f'stage{i + 1}', x)
    head = layers.Head(
      self.num_classes,
      self.head,
      self.hidden_features,
      self.dropout_rate,
      self.dtype,
      name='head',
    )
    logits, pre_logits = head(x, train)
    self.sow('intermediates', 'pre_logits', pre_logits)
    return logits
