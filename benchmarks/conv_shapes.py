r"""A CIFAR ResNet's convolutions alone, ours against PyTorch's, shape by shape.

The train-step comparison (`torch_reference.py --compare`) says how far
apart the two frameworks are; this one says how much of that distance the
convolutions account for. For every distinct 3x3 convolution of a CIFAR
ResNet it times, at the same batch and threads:

- fwd: the forward convolution;
- dx: the gradient with respect to the input (not for the stem, whose input
  is the image);
- dw: the gradient with respect to the weights,

in JAX exactly as our model computes them on this backend (with the CPU
defaults, `cnn_jax.models.fast_conv`'s chunked weight gradient) and in
PyTorch eager (`aten.convolution_backward`, what autograd calls). No
BatchNorm, ReLU or additions are timed.

  python benchmarks/conv_shapes.py --depth=20 --batch_size=128
  python benchmarks/conv_shapes.py --framework=jax   # ours alone

Each framework runs in its own process, because in one process PyTorch's
OpenMP threads keep spinning on the cores after each call and slow down
the XLA call that follows. The comparison runs ours, PyTorch, PyTorch,
ours, and a shape's figure is the mean of its two medians of `--repeats`
calls. Needs torch in the same environment, like `torch_reference.py` (the
`bench` extra). One JSON line per convolution and kind; the comparison
then prints a summary whose totals weight each shape by how many layers of
the net have it.
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from torch_reference import cpu_model, cpu_threads

from cnn_jax import cpu_defaults
from cnn_jax.models import fast_conv

KINDS = ('fwd', 'dx', 'dw')
NHWC = ('NHWC', 'HWIO', 'NHWC')


def conv_shapes(depth: int) -> list[dict]:
  """(cin, cout, input side, stride, layers) of He et al.'s CIFAR ResNet.

  6n + 2 layers: a 3x3 stem to 16 channels, then three stages of n blocks
  of two 3x3 convolutions at 16, 32 and 64 channels, the first of stages 2
  and 3 with stride 2. Option-A shortcuts have no convolution.
  """
  if depth < 8 or (depth - 2) % 6:
    raise SystemExit(
      f'--depth={depth}: a CIFAR ResNet has 6n + 2 layers, n >= 1 (20, '
      '32, 44, 56, 110, ...).'
    )
  n = (depth - 2) // 6
  return [
    dict(cin=3, cout=16, size=32, stride=1, layers=1),
    dict(cin=16, cout=16, size=32, stride=1, layers=2 * n),
    dict(cin=16, cout=32, size=32, stride=2, layers=1),
    dict(cin=32, cout=32, size=16, stride=1, layers=2 * n - 1),
    dict(cin=32, cout=64, size=16, stride=2, layers=1),
    dict(cin=64, cout=64, size=8, stride=1, layers=2 * n - 1),
  ]


def gflop(shape: dict, batch: int) -> float:
  out = shape['size'] // shape['stride']
  macs = batch * out * out * 9 * shape['cin'] * shape['cout']
  return 2 * macs / 1e9


class JaxConvs:
  """Jitted fwd, dx and dw of one shape, as the model's layers compute them."""

  def __init__(self, shape: dict, batch: int, seed: int):
    s = shape['stride']

    def conv(x, w, fn=jax.lax.conv_general_dilated):
      return fn(x, w, (s, s), ((1, 1), (1, 1)), dimension_numbers=NHWC)

    # fast_conv changes only the weight gradient; its forward pass and input
    # gradient are lax's own, so those two are timed with lax.
    apply_dw = (
      functools.partial(conv, fn=fast_conv.conv_general_dilated)
      if cpu_defaults.use_fast_conv()
      else conv
    )
    apply = conv

    rng = np.random.default_rng(seed)
    side = shape['size']
    self.x = jnp.asarray(
      rng.standard_normal((batch, side, side, shape['cin']), np.float32)
    )
    self.w = jnp.asarray(
      rng.standard_normal((3, 3, shape['cin'], shape['cout']), np.float32)
    )
    self.dy = jnp.asarray(
      rng.standard_normal(apply(self.x, self.w).shape, np.float32)
    )
    # Each function returns the full result, so nothing is left out, and
    # its input gradient or weight gradient only: XLA drops the other.
    self.fns = {
      'fwd': jax.jit(apply),
      'dx': jax.jit(lambda x, w, dy: jax.vjp(apply, x, w)[1](dy)[0]),
      'dw': jax.jit(lambda x, w, dy: jax.vjp(apply_dw, x, w)[1](dy)[1]),
    }

  def run(self, kind: str) -> float:
    args = (self.x, self.w) if kind == 'fwd' else (self.x, self.w, self.dy)
    start = time.perf_counter()
    jax.block_until_ready(self.fns[kind](*args))
    return time.perf_counter() - start


class TorchConvs:
  """The same three in PyTorch eager, on the same numbers in NCHW."""

  def __init__(self, shape: dict, jax_convs: JaxConvs):
    import torch

    self.torch = torch
    self.s = shape['stride']

    def nchw(array, axes):
      return torch.from_numpy(np.array(array).transpose(axes).copy())

    self.x = nchw(jax_convs.x, (0, 3, 1, 2))
    self.w = nchw(jax_convs.w, (3, 2, 0, 1))
    self.dy = nchw(jax_convs.dy, (0, 3, 1, 2))

  def run(self, kind: str) -> float:
    torch, s = self.torch, self.s
    start = time.perf_counter()
    with torch.no_grad():
      if kind == 'fwd':
        torch.nn.functional.conv2d(self.x, self.w, stride=s, padding=1)
      else:
        torch.ops.aten.convolution_backward(
          self.dy,
          self.x,
          self.w,
          None,
          [s, s],
          [1, 1],
          [1, 1],
          False,
          [0, 0],
          1,
          [kind == 'dx', kind == 'dw', False],
        )
    return time.perf_counter() - start


def measure(framework: str, depth: int, batch: int, repeats: int) -> None:
  """One JSON line per shape and kind, for one framework in this process."""
  threads = cpu_threads()
  version = jax.__version__
  if framework == 'torch':
    import torch

    torch.set_num_threads(threads)
    version = torch.__version__
  for i, shape in enumerate(conv_shapes(depth)):
    convs = JaxConvs(shape, batch, seed=i)
    if framework == 'torch':
      convs = TorchConvs(shape, convs)
    for kind in KINDS:
      if kind == 'dx' and shape['cin'] == 3:
        continue
      convs.run(kind)  # compile or warm up
      ms = statistics.median(convs.run(kind) for _ in range(repeats)) * 1e3
      emit(
        bench='conv_shapes',
        framework=framework,
        version=version,
        threads=threads,
        kind=kind,
        **shape,
        batch_size=batch,
        ms=round(ms, 3),
        gflops=round(gflop(shape, batch) / ms * 1e3, 1),
      )


def compare(args: argparse.Namespace) -> None:
  """Each framework in its own process, in the order ours, PyTorch,
  PyTorch, ours; a shape's figure is the mean of its two medians."""
  rows = collections.defaultdict(list)
  for framework in ('jax', 'torch', 'torch', 'jax'):
    out = subprocess.run(
      [
        sys.executable,
        __file__,
        f'--framework={framework}',
        f'--depth={args.depth}',
        f'--batch_size={args.batch_size}',
        f'--repeats={args.repeats}',
      ],
      capture_output=True,
      text=True,
      check=True,
    ).stdout
    for line in out.splitlines():
      row = json.loads(line)
      key = (row['kind'], row['cin'], row['cout'], row['size'], row['stride'])
      rows[key].append(row)
  totals = collections.Counter()
  for key, pair in rows.items():
    ms = {
      f: statistics.mean(r['ms'] for r in pair if r['framework'] == f)
      for f in ('jax', 'torch')
    }
    first = pair[0]
    layers = first['layers']
    totals[f'{key[0]}_jax_ms'] += ms['jax'] * layers
    totals[f'{key[0]}_torch_ms'] += ms['torch'] * layers
    emit(
      bench='conv_shapes_compare',
      kind=key[0],
      cin=key[1],
      cout=key[2],
      size=key[3],
      stride=key[4],
      layers=layers,
      jax_ms=round(ms['jax'], 3),
      torch_ms=round(ms['torch'], 3),
      torch_over_jax=round(ms['torch'] / ms['jax'], 3),
    )
  versions = {r['framework']: r['version'] for p in rows.values() for r in p}
  summary = {k: round(v, 1) for k, v in sorted(totals.items())}
  summary['all_jax_ms'] = round(
    sum(v for k, v in totals.items() if 'jax' in k), 1
  )
  summary['all_torch_ms'] = round(
    sum(v for k, v in totals.items() if 'torch' in k), 1
  )
  emit(
    bench='conv_shapes_summary',
    model=f'resnet{args.depth}',
    batch_size=args.batch_size,
    jax=versions['jax'],
    torch=versions['torch'],
    threads=cpu_threads(),
    device_kind=cpu_model(),
    cpu_defaults=cpu_defaults.describe(),
    **summary,
  )


def emit(**fields) -> None:
  print(json.dumps(fields), flush=True)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--depth', type=int, default=20)
  p.add_argument('--batch_size', type=int, default=128)
  p.add_argument('--repeats', type=int, default=7)
  p.add_argument(
    '--framework',
    choices=('jax', 'torch'),
    help='time one framework in this process instead of comparing both',
  )
  args = p.parse_args(argv)
  for flag in ('batch_size', 'repeats'):
    if getattr(args, flag) < 1:
      p.error(f'--{flag} must be at least 1, got {getattr(args, flag)}.')
  if args.framework:
    measure(args.framework, args.depth, args.batch_size, args.repeats)
    return
  try:
    import torch  # noqa: F401
  except ImportError:
    sys.exit(
      'torch is not installed here: pip install torch==2.13.0 (the bench '
      'extra), or pass --framework=jax.'
    )
  compare(args)


if __name__ == '__main__':
  main()
