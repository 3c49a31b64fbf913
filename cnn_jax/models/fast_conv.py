"""A convolution whose weight gradient XLA:CPU computes without waste.

The forward pass and the input gradient are exactly `lax.conv_general_dilated`
and its autodiff. Only the weight gradient differs, and only in how XLA is
allowed to schedule it.

XLA computes a weight gradient as a convolution over the batch. That needs
the layer input transposed to channels-major, batch-minor layout. XLA:CPU
fuses the elementwise ops that produced the input (BatchNorm, ReLU,
residual adds, often several blocks deep) into that transpose and recomputes
them there. Every element is then read across four or more full activations
with a 64 KiB stride. On ResNet-20 these transposes took half the train step
(benchmarks/README.md has the profile).

Here the weight gradient is a sum over batch chunks computed inside a
`lax.fori_loop`. A loop body cannot fuse producers from outside the loop, so it
transposes the saved input itself, one cache-sized chunk at a time. The
chunked sum adds the same products in a different order, so gradients differ
from the plain path by float rounding only (about 1e-7 relative). That is
why `cnn_jax.cpu_defaults` turns it on only for the CPU backend.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array
Padding = tuple[tuple[int, int], tuple[int, int]]

_NHWC = ('NHWC', 'HWIO', 'NHWC')
_MAX_CHUNKS = 8


def num_chunks(batch: int) -> int:
  """Batch chunks of the weight gradient: 2 when the batch is even.

  A loop of one trip is removed by XLA, and with it the fusion barrier. For
  an odd batch, the smallest divisor up to 8 is used. For a batch with no
  such divisor, the plain weight gradient is used.
  """
  for chunks in range(2, _MAX_CHUNKS + 1):
    if batch % chunks == 0:
      return chunks
  return 1


def _conv(x: Array, w: Array, strides, padding: Padding, precision) -> Array:
  return lax.conv_general_dilated(
    x, w, strides, padding, dimension_numbers=_NHWC, precision=precision
  )


def weight_gradient(
  x: Array,
  dy: Array,
  kernel_size: tuple[int, int],
  strides: tuple[int, int],
  padding: Padding,
  precision=None,
) -> Array:
  """dL/dw of an NHWC/HWIO convolution, as one batch-contracting conv.

  Args:
    x: layer input (N, H, W, Ci).
    dy: output cotangent (N, OH, OW, Co).
    kernel_size: (KH, KW).
    strides: the forward strides.
    padding: the forward padding, ((top, bottom), (left, right)).
    precision: passed to the convolution.

  Returns:
    The kernel cotangent (KH, KW, Ci, Co), in float32 (float64 for float64
    inputs).
  """
  # The batch becomes the contracted feature axis and dy the kernel, dilated
  # by the forward stride; the high padding is chosen so that the output is
  # exactly the kernel window (it may be negative, which crops).
  pads = []
  for axis in (0, 1):
    size, out = x.shape[1 + axis], dy.shape[1 + axis]
    low = padding[axis][0]
    high = kernel_size[axis] + strides[axis] * (out - 1) - size - low
    pads.append((low, high))
  out = lax.conv_general_dilated(
    x.transpose(3, 1, 2, 0),
    dy.transpose(1, 2, 0, 3),
    (1, 1),
    pads,
    rhs_dilation=strides,
    dimension_numbers=_NHWC,
    precision=precision,
    preferred_element_type=_accumulator(dy.dtype),
  )
  return out.transpose(1, 2, 0, 3)


def _accumulator(dtype) -> jnp.dtype:
  return jnp.promote_types(dtype, jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _fast_conv(x, w, strides, padding, precision):
  return _conv(x, w, strides, padding, precision)


def _fast_conv_fwd(x, w, strides, padding, precision):
  return _conv(x, w, strides, padding, precision), (x, w)


def _fast_conv_bwd(strides, padding, precision, residuals, dy):
  x, w = residuals
  _, input_vjp = jax.vjp(lambda x: _conv(x, w, strides, padding, precision), x)
  (dx,) = input_vjp(dy)

  # Chunk i holds examples i, i + c, i + 2c, ...: with the batch sharded
  # over devices in contiguous blocks, every device keeps its own examples
  # in every chunk, so chunking moves no data between devices.
  chunks = num_chunks(x.shape[0])
  interleave = lambda a: a.reshape(-1, chunks, *a.shape[1:])
  xs, dys = interleave(x), interleave(dy)
  kernel_size = w.shape[:2]

  def add_chunk(i, total):
    xc = lax.dynamic_index_in_dim(xs, i, axis=1, keepdims=False)
    dyc = lax.dynamic_index_in_dim(dys, i, axis=1, keepdims=False)
    dw = weight_gradient(xc, dyc, kernel_size, strides, padding, precision)
    return total + dw

  zeros = jnp.zeros(w.shape, _accumulator(w.dtype))
  dw = lax.fori_loop(0, chunks, add_chunk, zeros)
  return dx, dw.astype(w.dtype)


_fast_conv.defvjp(_fast_conv_fwd, _fast_conv_bwd)


def _is_nhwc(dimension_numbers) -> bool:
  if isinstance(dimension_numbers, lax.ConvDimensionNumbers):
    return tuple(dimension_numbers) == (
      (0, 3, 1, 2),
      (3, 2, 0, 1),
      (0, 3, 1, 2),
    )
  return tuple(dimension_numbers or ()) == _NHWC


def _ones(values) -> bool:
  return values is None or all(v == 1 for v in values)


def conv_general_dilated(
  lhs: Array,
  rhs: Array,
  window_strides: Sequence[int],
  padding: str | Sequence[tuple[int, int]],
  lhs_dilation: Sequence[int] | None = None,
  rhs_dilation: Sequence[int] | None = None,
  dimension_numbers=None,
  feature_group_count: int = 1,
  batch_group_count: int = 1,
  precision=None,
  preferred_element_type=None,
) -> Array:
  """`lax.conv_general_dilated` with the chunked weight gradient.

  Takes the same arguments, so it can be given to `flax.linen.Conv` as
  `conv_general_dilated`. Cases outside what the chunked gradient covers
  fall back to `lax.conv_general_dilated` unchanged. The chunked gradient
  covers 2-D NHWC/HWIO convolutions with explicit padding, no dilation, one
  group, and a batch with a divisor from 2 to 8.
  """
  simple = (
    lhs.ndim == 4
    and not isinstance(padding, str)
    and _is_nhwc(dimension_numbers)
    and _ones(lhs_dilation)
    and _ones(rhs_dilation)
    and feature_group_count == 1
    and batch_group_count == 1
    and preferred_element_type is None
    and num_chunks(lhs.shape[0]) > 1
  )
  if not simple:
    return lax.conv_general_dilated(
      lhs,
      rhs,
      window_strides,
      padding,
      lhs_dilation=lhs_dilation,
      rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count,
      batch_group_count=batch_group_count,
      precision=precision,
      preferred_element_type=preferred_element_type,
    )
  strides = tuple(int(s) for s in window_strides)
  pads = tuple((int(lo), int(hi)) for lo, hi in padding)
  return _fast_conv(lhs, rhs, strides, pads, precision)
