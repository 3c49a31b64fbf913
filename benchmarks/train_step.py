r"""Train- and eval-step speed of a registered model, as JSON lines.

Run:
  python benchmarks/train_step.py --model=resnet20 --batch_size=128
  python benchmarks/train_step.py --model=resnet50 --image_size=224 \
    --batch_size=16 --steps=5
  python benchmarks/train_step.py --model=resnet152 --image_size=224 \
    --batch_size=16 --steps=0 --no_eval        # compile time only

The step is the real `cnn_jax.train.make_train_step` (SGD with momentum and
weight decay, BatchNorm in train mode, the metrics the loop logs), jitted
and donated as `train_and_evaluate` does, on every local device, with one
fixed synthetic uint8 batch already on device: only compute is measured.

The first line holds the versions, the XLA flags and the CPU defaults in
force. Each further line is one measurement: {'bench': 'train_step' |
'eval_step', model, batch_size, image_size, dtype, devices, device_kind,
compile_s (tracing, lowering and XLA compilation), trace_and_lower_s (the
part before XLA), step_ms_median, images_per_s, peak_host_mib,
[peak_device_mib], macs_forward, flops_per_step, achieved_gflops,
peak_gflops, fraction_of_peak}.

FLOP convention: a forward pass costs 2 x MACs (MACs from cnn_jax.summary:
convolutions and matrix products only), a train step 3 x that (forward, the
input gradient and the weight gradient each cost one forward), an eval step
1 x. The fraction is of `--peak_gflops`, by default the fp32 matrix-product
peak stated for the device kind in PEAK_GFLOPS.

`--profile=N` adds a line per step kind with the milliseconds per step that
XLA:CPU spends in each kind of op (transposes, reductions, elementwise
fusions, convolutions, loops), from `jax.profiler`, and the slowest ops.

`--serve` turns the script into a worker for `torch_reference.py --compare`:
it compiles, prints one line, then answers 'run N' on stdin with the times
of N steps, until 'quit'.
"""

from __future__ import annotations

import argparse
import ast
import collections
import json
import os
import pathlib
import re
import resource
import statistics
import sys
import tempfile
import time
from typing import Any

import jax
import numpy as np

from cnn_jax import config_lib, cpu_defaults, optim, parallel, train

# Dense fp32 (and bf16) matrix-product peaks in GFLOP/s, by device kind.
# 'cpu': numpy/OpenBLAS sgemm on the 2-core Zen 2 of CI and the developer
# machines (issue 8). H100/H200 figures are NVIDIA's dense, non-sparse ones.
PEAK_GFLOPS = {
  ('cpu', 'float32'): 165.0,
  ('cpu', 'bfloat16'): 165.0,
  ('NVIDIA H100 80GB HBM3', 'float32'): 67_000.0,
  ('NVIDIA H100 80GB HBM3', 'bfloat16'): 989_000.0,
  ('NVIDIA H200', 'float32'): 67_000.0,
  ('NVIDIA H200', 'bfloat16'): 989_000.0,
}


_CIFAR = re.compile(r'(resnet|plain)(20|32|44|56|110|1202)')


def is_cifar(name: str) -> bool:
  """Whether `name` is one of the CIFAR ResNets or plain nets."""
  return _CIFAR.fullmatch(name) is not None


def _parse_field(text: str) -> tuple[str, Any]:
  key, _, value = text.partition('=')
  try:
    return key, ast.literal_eval(value)
  except (ValueError, SyntaxError):
    return key, value


def make_config(args: argparse.Namespace):
  """The experiment config the benchmark's step is built from."""
  if is_cifar(args.model):
    depth = int(_CIFAR.fullmatch(args.model).group(2))
    config = config_lib.cifar_resnet_config(
      depth, plain=args.model.startswith('plain')
    )
  else:
    config = config_lib.base_config()
    config.model.name = args.model
  config.model.dtype = args.dtype
  for text in args.field:
    key, value = _parse_field(text)
    config.model.fields[key] = value
  config.train.batch_size = args.batch_size
  return config


def versions() -> dict[str, str]:
  return {**train.library_versions(), **cpu_defaults.describe()}


def peak_host_mib() -> float:
  # ru_maxrss is in KiB on Linux.
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_device_mib() -> float | None:
  stats = jax.local_devices()[0].memory_stats() or {}
  peak = stats.get('peak_bytes_in_use')
  return None if peak is None else peak / 2**20


def forward_macs(model, batch: int, image_size: int, channels: int):
  """MACs of one eval forward over the whole batch, or None."""
  try:
    from cnn_jax import summary
  except ImportError:
    return None
  shape = (batch, image_size, image_size, channels)
  return summary.summarize(model, shape).macs


class StepBench:
  """A compiled train or eval step with its fixed inputs."""

  def __init__(self, args: argparse.Namespace, kind: str = 'train'):
    self.args = args
    self.kind = kind
    config = make_config(args)
    self.config = config
    num_classes = args.num_classes
    self.model = train.build_model(config, num_classes)
    mesh = parallel.make_mesh()
    self.mesh = mesh
    parallel.check_batch_size(args.batch_size, mesh, '--batch_size')
    shape = (args.image_size, args.image_size, args.channels)
    mean = (127.0,) * args.channels
    std = (64.0,) * args.channels
    schedule = optim.build_schedule(config.optim, args.batch_size, 100, 1000)
    tx = optim.build_optimizer(config.optim, schedule)
    self.state = train.create_train_state(self.model, tx, config, shape, mesh)

    rng = np.random.default_rng(0)
    local = {
      'image': rng.integers(0, 256, (args.batch_size, *shape), np.uint8),
      'label': rng.integers(0, num_classes, (args.batch_size,), np.int32),
      'mask': np.ones((args.batch_size,), bool),
    }
    if kind == 'train':
      del local['mask']
    self.batch = parallel.global_batch(local, mesh)

    replicated = parallel.replicated(mesh)
    if kind == 'train':
      step = train.make_train_step(self.model, tx, schedule, config, mean, std)
      self.step = jax.jit(
        step, donate_argnums=0, out_shardings=(replicated, replicated)
      )
    else:
      step = train.make_eval_step(self.model, mean, std)
      self.step = jax.jit(step, out_shardings=replicated)
      self.variables = self.state.eval_variables()
    self.compile_s = self.lower_s = None

  def compile(self) -> float:
    """Traces, lowers and compiles (not runs) the step; returns seconds."""
    start = time.perf_counter()
    lowered = self.step.lower(*self._inputs())
    self.lower_s = time.perf_counter() - start
    self.compiled = lowered.compile()
    self.compile_s = time.perf_counter() - start
    return self.compile_s

  def _inputs(self):
    if self.kind == 'train':
      return self.state, self.batch
    return self.variables, self.batch

  def run(self, steps: int) -> list[float]:
    """Runs `steps` steps, each waited for; returns their seconds."""
    times = []
    for _ in range(steps):
      start = time.perf_counter()
      if self.kind == 'train':
        self.state, metrics = self.compiled(self.state, self.batch)
      else:
        metrics = self.compiled(self.variables, self.batch)
      jax.block_until_ready(metrics)
      if self.kind == 'train':
        jax.block_until_ready(self.state)
      times.append(time.perf_counter() - start)
    return times


def describe(args: argparse.Namespace, bench: StepBench, times: list[float]):
  """The JSON row of one measurement."""
  devices = jax.local_devices()
  kind = devices[0].device_kind
  row = {
    'bench': f'{bench.kind}_step',
    'model': args.model,
    'fields': dict(bench.config.model.fields),
    'batch_size': args.batch_size,
    'image_size': args.image_size,
    'dtype': args.dtype,
    'devices': len(devices),
    'device_kind': kind,
    'compile_s': round(bench.compile_s, 2),
    'trace_and_lower_s': round(bench.lower_s, 2),
    'steps_timed': len(times),
  }
  if times:
    median = statistics.median(times)
    row['step_ms_median'] = round(median * 1e3, 2)
    row['step_ms_min'] = round(min(times) * 1e3, 2)
    row['images_per_s'] = round(args.batch_size / median, 2)
  macs = forward_macs(
    bench.model, args.batch_size, args.image_size, args.channels
  )
  if macs:
    factor = 6 if bench.kind == 'train' else 2
    flops = factor * macs
    row['macs_forward'] = macs
    row['flops_per_step'] = flops
    peak = args.peak_gflops
    if peak is None:
      backend = 'cpu' if jax.default_backend() == 'cpu' else kind
      peak = PEAK_GFLOPS.get((backend, args.dtype))
    if times:
      achieved = flops / statistics.median(times) / 1e9
      row['achieved_gflops'] = round(achieved, 2)
      if peak:
        row['peak_gflops'] = peak
        row['fraction_of_peak'] = round(achieved / peak, 4)
  row['peak_host_mib'] = round(peak_host_mib(), 1)
  if jax.default_backend() != 'cpu':
    row['peak_device_mib'] = peak_device_mib()
  return row


def _op_kind(name: str) -> str:
  """A coarse kind from an XLA:CPU op name, e.g. 'transpose_copy_fusion.3'."""
  for word, kind in (
    ('transpose', 'transpose'),
    ('reduce', 'reduction'),
    ('conv', 'convolution'),
    ('dot', 'dot'),
    ('while', 'loop'),
    ('fusion', 'elementwise'),
  ):
    if word in name:
      return kind
  return 'other'


def profile(bench: StepBench, steps: int, top: int = 15) -> dict:
  """Milliseconds per step by op kind and for the slowest ops.

  Sums the op events of XLA:CPU's thunk executor. Convolution and dot
  thunks may run asynchronously, so their events can understate their time;
  fusions (elementwise, reductions, transposes) run synchronously and are
  exact.
  """
  with tempfile.TemporaryDirectory() as tmp:
    jax.profiler.start_trace(tmp)
    bench.run(steps)
    jax.profiler.stop_trace()
    (path,) = pathlib.Path(tmp).rglob('*.xplane.pb')
    data = jax.profiler.ProfileData.from_file(str(path))
  per_op = collections.Counter()
  for plane in data.planes:
    for line in plane.lines:
      if 'XLAEigen' not in line.name:
        continue
      for event in line.events:
        if not event.name.startswith('ThunkExecutor'):
          per_op[event.name] += event.duration_ns / 1e6 / steps
  by_kind = collections.Counter()
  for name, ms in per_op.items():
    by_kind[_op_kind(name)] += ms
  return {
    'bench': f'{bench.kind}_step_profile',
    'model': bench.args.model,
    'op_ms_per_step_by_kind': {k: round(v, 1) for k, v in by_kind.items()},
    'slowest_ops_ms': {k: round(v, 1) for k, v in per_op.most_common(top)},
  }


def serve(args: argparse.Namespace) -> None:
  """The worker protocol of `torch_reference.py --compare`."""
  bench = StepBench(args, 'train')
  bench.compile()
  bench.run(args.warmup)
  print(json.dumps({'ready': True, 'compile_s': bench.compile_s}), flush=True)
  for line in sys.stdin:
    command = line.split()
    if not command or command[0] == 'quit':
      break
    times = bench.run(int(command[1]))
    print(json.dumps({'times': times}), flush=True)


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--model', default='resnet20')
  p.add_argument('--batch_size', type=int, default=128)
  p.add_argument('--image_size', type=int, default=None,
                 help='default: 32 for CIFAR models, 224 otherwise')  # fmt: skip
  p.add_argument('--channels', type=int, default=3)
  p.add_argument('--num_classes', type=int, default=None,
                 help='default: 10 for CIFAR models, 1000 otherwise')  # fmt: skip
  p.add_argument('--dtype', default='float32',
                 choices=('float32', 'bfloat16'))  # fmt: skip
  p.add_argument('--field', action='append', default=[],
                 help='model field override, e.g. --field=version=v1')  # fmt: skip
  p.add_argument('--steps', type=int, default=10, help='timed steps')
  p.add_argument('--warmup', type=int, default=2, help='untimed steps')
  p.add_argument('--no_eval', action='store_true', help='skip the eval step')
  p.add_argument('--peak_gflops', type=float, default=None)
  p.add_argument('--profile', type=int, default=0,
                 help='then profile N more steps: ms per op kind')  # fmt: skip
  p.add_argument('--threads', type=int, default=None,
                 help='pin to the first N CPUs (XLA sizes its pool to them)')  # fmt: skip
  p.add_argument('--serve', action='store_true', help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  cifar = is_cifar(args.model)
  if args.image_size is None:
    args.image_size = 32 if cifar else 224
  if args.num_classes is None:
    args.num_classes = 10 if cifar else 1000
  return args


def pin_threads(threads: int | None) -> None:
  """Restricts this process to `threads` CPUs before a backend starts."""
  if threads:
    cpus = sorted(os.sched_getaffinity(0))[:threads]
    os.sched_setaffinity(0, cpus)


def main(argv=None) -> None:
  args = parse_args(argv)
  pin_threads(args.threads)
  if args.serve:
    serve(args)
    return
  print(json.dumps({'versions': versions()}), flush=True)
  kinds = ('train',) if args.no_eval else ('train', 'eval')
  for kind in kinds:
    bench = StepBench(args, kind)
    bench.compile()
    times = []
    if args.steps > 0:
      bench.run(args.warmup)
      times = bench.run(args.steps)
    print(json.dumps(describe(args, bench, times)), flush=True)
    if args.profile:
      print(json.dumps(profile(bench, args.profile)), flush=True)
    del bench


if __name__ == '__main__':
  main()
