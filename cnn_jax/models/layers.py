"""Building blocks shared by the model families.

Padding is always explicit and symmetric, as in PyTorch, so that weights
imported from torchvision give the same outputs: Flax's 'SAME' pads
stride-2 convolutions on the bottom/right only.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from cnn_jax import cpu_defaults
from cnn_jax.models import fast_bn, fast_conv

Array = jax.Array
Dtype = Any

HEADS = ('fc', 'gap_fc', 'gap_conv')

# He et al. 2015 initialisation, as torchvision uses for its CNNs.
conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def conv(
  features: int,
  kernel_size: int,
  strides: int = 1,
  *,
  name: str,
  dtype: Dtype = jnp.float32,
  use_bias: bool = False,
  padding: int | None = None,
) -> nn.Conv:
  """A square convolution with PyTorch-style symmetric zero padding.

  Args:
    features: output channels.
    kernel_size: side of the square kernel.
    strides: stride in both spatial dimensions.
    name: submodule name.
    dtype: computation dtype; the kernel is always float32.
    use_bias: whether the convolution has a bias.
    padding: pixels added on every side; defaults to kernel_size // 2.

  Returns:
    An unbound `nn.Conv`.
  """
  pad = kernel_size // 2 if padding is None else padding
  return nn.Conv(
    features,
    (kernel_size, kernel_size),
    (strides, strides),
    padding=((pad, pad), (pad, pad)),
    use_bias=use_bias,
    dtype=dtype,
    param_dtype=jnp.float32,
    kernel_init=conv_init,
    # CPU only: same forward, faster weight gradient (cnn_jax.cpu_defaults).
    conv_general_dilated=(
      fast_conv.conv_general_dilated if cpu_defaults.use_fast_conv() else None
    ),
    name=name,
  )


def dense(features: int, *, name: str, dtype: Dtype) -> nn.Dense:
  """A fully connected layer with float32 parameters."""
  return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32, name=name)


class BatchNorm(nn.Module):
  """Batch normalisation over all axes but the last, with virtual batches.

  Statistics are computed in float32 whatever the input dtype. In training,
  `virtual_batch_size=k` normalises each consecutive group of k examples with
  that group's own statistics (as per-device BN does on k examples per
  device); the running averages are then updated with the mean over groups
  of the group means and of the (biased) group variances.

  Attributes:
    momentum: weight of the old running average (Flax convention; PyTorch's
      momentum=0.1 is the same update).
    epsilon: added to the variance.
    dtype: output dtype.
    virtual_batch_size: examples per statistics group, or None for the whole
      batch the module sees.
    scale_init: initialiser of 'scale'; zeros for zero-init residual blocks.
  """

  momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: Dtype = jnp.float32
  virtual_batch_size: int | None = None
  scale_init: nn.initializers.Initializer = nn.initializers.ones

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    """Normalises `x` of shape (B, ..., C); returns the same shape."""
    c = x.shape[-1]
    f32 = jnp.float32
    scale = self.param('scale', self.scale_init, (c,), f32)
    bias = self.param('bias', nn.initializers.zeros, (c,), f32)
    ra_mean = self.variable('batch_stats', 'mean', jnp.zeros, (c,), f32)
    ra_var = self.variable('batch_stats', 'var', jnp.ones, (c,), f32)
    # Statistics in float32 at least (float64 when the model computes in it,
    # as the exact-comparison tests do).
    x = x.astype(jnp.promote_types(x.dtype, f32))
    if not train:
      y = (x - ra_mean.value) * lax.rsqrt(ra_var.value + self.epsilon)
      return (y * scale + bias).astype(self.dtype)

    num_groups = self._num_groups(x.shape[0])
    if num_groups == 1 and cpu_defaults.use_fast_bn():
      # CPU only: the same function, with reductions XLA:CPU runs faster.
      out, mean, var = fast_bn.batch_norm_train(x, scale, bias, self.epsilon)
      if not self.is_initializing():
        self._update_averages(ra_mean, ra_var, mean, var)
      return out.astype(self.dtype)

    groups = x.reshape((num_groups, -1) + x.shape[1:])
    axes = tuple(range(1, groups.ndim - 1))
    mean = groups.mean(axes, keepdims=True)
    var = jnp.square(groups - mean).mean(axes, keepdims=True)
    y = ((groups - mean) * lax.rsqrt(var + self.epsilon)).reshape(x.shape)
    if not self.is_initializing():
      self._update_averages(
        ra_mean, ra_var, mean.reshape(-1, c).mean(0), var.reshape(-1, c).mean(0)
      )
    return (y * scale + bias).astype(self.dtype)

  def _update_averages(self, ra_mean, ra_var, mean: Array, var: Array):
    m = self.momentum
    ra_mean.value = (m * ra_mean.value + (1 - m) * mean).astype(jnp.float32)
    ra_var.value = (m * ra_var.value + (1 - m) * var).astype(jnp.float32)

  def _num_groups(self, batch: int) -> int:
    k = self.virtual_batch_size
    if k is None or self.is_initializing():
      return 1
    if batch % k:
      raise ValueError(
        f'bn_virtual_batch_size={k} does not divide the batch of {batch} '
        'examples this BatchNorm sees; choose a divisor of the per-device '
        'batch size, or None for whole-batch statistics.'
      )
    return batch // k


def batch_norm(
  name: str,
  dtype: Dtype,
  virtual_batch_size: int | None,
  *,
  zero_init: bool = False,
  epsilon: float = 1e-5,
) -> BatchNorm:
  """A `BatchNorm` with the model's settings; `zero_init` zeroes 'scale'."""
  return BatchNorm(
    epsilon=epsilon,
    dtype=dtype,
    virtual_batch_size=virtual_batch_size,
    scale_init=nn.initializers.zeros if zero_init else nn.initializers.ones,
    name=name,
  )


class ConvBlock(nn.Module):
  """Convolution, then BatchNorm (or a conv bias instead), then ReLU.

  The layout of torchvision's `BasicConv2d`: submodules 'conv' and 'bn'.
  """

  features: int
  kernel_size: int
  strides: int = 1
  batch_norm: bool = True
  bn_epsilon: float = 1e-5
  dtype: Dtype = jnp.float32
  bn_virtual_batch_size: int | None = None

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    x = conv(
      self.features,
      self.kernel_size,
      self.strides,
      use_bias=not self.batch_norm,
      dtype=self.dtype,
      name='conv',
    )(x)
    if self.batch_norm:
      bn = batch_norm(
        'bn', self.dtype, self.bn_virtual_batch_size, epsilon=self.bn_epsilon
      )
      x = bn(x, train)
    return nn.relu(x)


def _ceil_pad(size: int, window: int, stride: int, pad: int) -> int:
  """High-side padding that reproduces PyTorch's ceil_mode output size."""
  out = -(-(size + 2 * pad - window) // stride) + 1
  # PyTorch drops a last window that would start in the right padding.
  if (out - 1) * stride >= size + pad:
    out -= 1
  return max((out - 1) * stride + window - size - pad, 0)


def max_pool(
  x: Array,
  window: int,
  strides: int,
  padding: int = 0,
  *,
  ceil_mode: bool = False,
  name: str = 'pool',
) -> Array:
  """Square max pooling with PyTorch semantics (padding never wins the max).

  Args:
    x: NHWC input.
    window: side of the pooling window.
    strides: stride in both spatial dimensions.
    padding: pixels of -inf padding on each side.
    ceil_mode: round the output size up, as torchvision's GoogLeNet and
      Caffe do, by padding the bottom/right further.
    name: scope name, which the model report shows as the layer name.

  Returns:
    The pooled NHWC array.
  """
  pads = []
  for size in x.shape[1:3]:
    high = _ceil_pad(size, window, strides, padding) if ceil_mode else padding
    pads.append((padding, high))
  with jax.named_scope(name):
    return nn.max_pool(x, (window, window), (strides, strides), pads)


def avg_pool(x: Array, window: int, strides: int, *, name: str) -> Array:
  """Square average pooling without padding."""
  with jax.named_scope(name):
    return nn.avg_pool(x, (window, window), (strides, strides))


def _bins(size: int, out: int) -> list[tuple[int, int]]:
  return [(i * size // out, -(-(i + 1) * size // out)) for i in range(out)]


def adaptive_avg_pool(x: Array, out: int, *, name: str) -> Array:
  """PyTorch's `adaptive_avg_pool2d` to an (out, out) map, for static shapes.

  Window i covers [floor(i*n/out), ceil((i+1)*n/out)), so windows may
  overlap and differ in size; a mean of row means equals the window mean
  because every window is a rectangle.
  """
  with jax.named_scope(name):
    h, w = x.shape[1:3]
    x = jnp.concatenate(
      [x[:, a:b].mean(1, keepdims=True) for a, b in _bins(h, out)], 1
    )
    return jnp.concatenate(
      [x[:, :, a:b].mean(2, keepdims=True) for a, b in _bins(w, out)], 2
    )


def global_avg_pool(x: Array, *, name: str = 'gap') -> Array:
  """Mean over the spatial axes: (B, H, W, C) -> (B, C)."""
  with jax.named_scope(name):
    return x.mean((1, 2))


def flatten_chw(x: Array) -> Array:
  """(B, H, W, C) -> (B, C*H*W) in channel-major order.

  This is the order of `torch.flatten` on an NCHW tensor, so a PyTorch
  Linear weight W of shape (out, C*H*W) maps onto our Dense kernel as W.T.
  """
  return x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)


def local_response_norm(
  x: Array,
  size: int = 5,
  alpha: float = 1e-4,
  beta: float = 0.75,
  k: float = 1.0,
  *,
  name: str,
) -> Array:
  """Cross-channel LRN as in AlexNet/GoogLeNet (Caffe and PyTorch form).

  y = x / (k + alpha / size * sum of x^2 over `size` neighbouring
  channels) ** beta, computed in float32.
  """
  with jax.named_scope(name):
    sq = jnp.square(x.astype(jnp.float32))
    pad = ((0, 0),) * 3 + ((size // 2, (size - 1) // 2),)
    total = lax.reduce_window(
      sq, 0.0, lax.add, (1, 1, 1, size), (1, 1, 1, 1), pad
    )
    y = x.astype(jnp.float32) / (k + alpha / size * total) ** beta
    return y.astype(x.dtype)


def check_nhwc(x: Array) -> None:
  """Raises ValueError unless `x` looks like an NHWC image batch."""
  if x.ndim != 4:
    raise ValueError(
      'Expected an NHWC image batch (batch, height, width, channels); got '
      f'shape {tuple(x.shape)}.'
    )
  if x.shape[1] <= 4 < x.shape[3]:
    raise ValueError(
      f'Got input of shape {tuple(x.shape)}, which looks like NCHW '
      '(channels first). The models take NHWC (batch, height, width, '
      'channels): pass x.transpose(0, 2, 3, 1).'
    )


class Head(nn.Module):
  """The classifier on top of the last feature map.

  Kinds:
    'fc': flatten (channel-major, see `flatten_chw`), then the hidden FC
      layers (each with ReLU, dropout between them) and a final FC.
    'gap_fc': global average pooling, then dropout and one FC.
    'gap_conv': dropout, a 1x1 convolution to one channel per class, then
      global average pooling (Lin et al. 2013, Network in Network); no FC.

  Submodules: fc1, fc2, ... ('fc' with hidden layers), fc (single FC) or
  conv ('gap_conv').

  Returns:
    (logits float32 (B, num_classes), pre_logits (B, D)): the features the
    final classifier sees, before its dropout; for 'gap_conv' the globally
    pooled feature map.
  """

  num_classes: int
  kind: str = 'gap_fc'
  hidden_features: Sequence[int] = ()
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> tuple[Array, Array]:
    if self.kind not in HEADS:
      raise ValueError(f'Unknown head {self.kind!r}; expected one of {HEADS}.')
    drop = nn.Dropout(self.dropout_rate, deterministic=not train)
    if self.kind == 'gap_conv':
      pre_logits = global_avg_pool(x)
      x = nn.Conv(
        self.num_classes,
        (1, 1),
        dtype=self.dtype,
        param_dtype=jnp.float32,
        name='conv',
      )(drop(x))
      return global_avg_pool(x).astype(jnp.float32), pre_logits

    hidden = self.hidden_features if self.kind == 'fc' else ()
    x = flatten_chw(x) if self.kind == 'fc' else global_avg_pool(x)
    for i, width in enumerate(hidden):
      x = drop(x) if i else x
      x = nn.relu(dense(width, name=f'fc{i + 1}', dtype=self.dtype)(x))
    name = f'fc{len(hidden) + 1}' if hidden else 'fc'
    logits = dense(self.num_classes, name=name, dtype=self.dtype)(drop(x))
    return logits.astype(jnp.float32), x
