"""Train-mode BatchNorm whose per-channel sums XLA:CPU runs fast.

Autodiff of BatchNorm leaves XLA four reductions over N·H·W per channel in
the backward pass (the scale and bias gradients, and two sums inside the
input gradient), and XLA:CPU runs these reductions over the major axes,
with channels minor, at a fraction of memory speed. Each one also fuses and
recomputes the elementwise chain that produced its operand (ReLU mask,
normalised input, residual add). On ResNet-50 at batch 16 they took 5.2 s
of an 8.0 s train step (benchmarks/README.md).

Here the backward pass is written out by hand: the two sums it needs,
sum(dy) and sum(dy * x_hat), give the scale and bias gradients as well.
Every per-channel sum, forward statistics included, is a product with a
vector of ones, which XLA:CPU runs as a matrix-vector product that reads
memory once, in order. The sums add the same terms in a different order,
so results differ from the plain path by float rounding only;
`cnn_jax.cpu_defaults` turns this on for the CPU backend.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array


def _channel_sum(a: Array) -> Array:
  """Sums (N, ..., C) over all axes but the last, mostly as a product.

  The M = N·H·W rows of each channel are split into about sqrt(M) blocks of
  B consecutive rows: a product with a vector of ones sums the (M / B,
  B·C) view over its rows, then a small reduction sums the B partial sums
  of each channel. Two short running sums keep float32 rounding at or
  below the level of XLA's own reduction; one product over all M rows
  tripled the error of a stem's bias gradient in tests/test_cpu_defaults.py.
  """
  channels = a.shape[-1]
  block = _block_rows(a.size // channels)
  flat = a.reshape(-1, block * channels)
  # HIGHEST keeps full float32 where a backend would otherwise round the
  # operands (TF32 on recent GPUs, when CNN_JAX_FAST_BN=1 forces this path
  # there); XLA:CPU computes in full precision either way.
  partial = jnp.dot(
    jnp.ones((flat.shape[0],), a.dtype), flat, precision=lax.Precision.HIGHEST
  )
  return partial.reshape(block, channels).sum(0)


def _block_rows(rows: int) -> int:
  """The largest divisor of `rows` that is at most sqrt(rows)."""
  # TODO: with the batch sharded over devices, a block that does not divide
  # each device's share of the rows makes the reshape above cross device
  # boundaries, and XLA may move data to do it. Results stay exact (tested
  # on 3, 5 and 8 devices) but multi-device CPU runs may lose some of the
  # speed-up; picking a divisor of the per-device row count would avoid it.
  for block in range(math.isqrt(rows), 0, -1):
    if rows % block == 0:
      return block
  return 1


def _statistics(x: Array) -> tuple[Array, Array]:
  count = x.size // x.shape[-1]
  mean = _channel_sum(x) / count
  return mean, _channel_sum(jnp.square(x - mean)) / count


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_train(
  x: Array, scale: Array, bias: Array, epsilon: float
) -> tuple[Array, Array, Array]:
  """Normalises x (N, ..., C) with its own statistics over all but C.

  Args:
    x: the input, float32 or float64.
    scale: (C,) multiplier after normalisation.
    bias: (C,) offset after normalisation.
    epsilon: added to the variance.

  Returns:
    (x_hat * scale + bias, mean, var): the output and the batch statistics
    (biased variance), in x's dtype.
  """
  return _forward(x, scale, bias, epsilon)[0]


def _forward(x, scale, bias, epsilon):
  mean, var = _statistics(x)
  rstd = lax.rsqrt(var + epsilon)
  out = (x - mean) * (rstd * scale) + bias
  return (out, mean, var), (x, scale, mean, rstd)


def _backward(epsilon, residuals, cotangents):
  del epsilon
  x, scale, mean, rstd = residuals
  dout, dmean, dvar = cotangents
  count = x.size // x.shape[-1]
  x_hat = (x - mean) * rstd
  sum_dout = _channel_sum(dout)
  sum_dout_xhat = _channel_sum(dout * x_hat)
  dx = (scale * rstd) * (
    dout - sum_dout / count - x_hat * (sum_dout_xhat / count)
  )
  # The statistics are outputs too (for the running averages); a loss that
  # used them would reach x through these terms.
  dx = dx + dmean / count + dvar * (2.0 / count) * (x - mean)
  return dx, sum_dout_xhat.astype(scale.dtype), sum_dout.astype(scale.dtype)


batch_norm_train.defvjp(_forward, _backward)
