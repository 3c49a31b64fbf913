r"""The same train step in PyTorch eager, and side-by-side ratios to ours.

Needs torch 2.13.0, CPU build (the optional `bench` extra), best in its
own environment so that the project's stays torch-free:

  python3 -m venv /tmp/venv_bench
  /tmp/venv_bench/bin/pip install -e . torch==2.13.0

Run:
  # PyTorch alone, JSON lines like train_step.py's
  python benchmarks/torch_reference.py --model=resnet20 --batch_size=128
  # ours and PyTorch alternating, ratio per pair and the median
  python benchmarks/torch_reference.py --compare --model=resnet20 \
    --batch_size=128 --rounds=7 --steps_per_round=3
  python benchmarks/torch_reference.py --compare --model=resnet50 \
    --image_size=224 --batch_size=16 --rounds=5 --steps_per_round=1
  # also a variant of ours, e.g. without the CPU defaults
  python benchmarks/torch_reference.py --compare --model=resnet20 \
    --variant=plain:CNN_JAX_CPU_DEFAULTS=0

The PyTorch step matches ours: uint8 batch normalised in the step, forward
in train mode (BatchNorm batch statistics), cross-entropy, backward, SGD
with momentum 0.9 and weight decay 1e-4, on one fixed synthetic batch, with
torch.set_num_threads equal to the CPUs this process may use (what XLA:CPU
uses). Architectures: the ImageNet ResNets in torchvision's layout and the
CIFAR ResNets of He et al. 2016 (option A shortcuts), both written here
(see `_imagenet_resnet` for why not torchvision itself).

`--compare` starts two long-lived worker processes, ours
(`train_step.py --serve`) and PyTorch's (`--serve` here). Each compiles or
warms up once; then, in every round, each runs `--steps_per_round` steps
while the other waits idle on its stdin, the order alternating between
rounds. A round's ratio is PyTorch's median step time over ours (> 1 means
ours is faster); load from other processes hits both sides of a pair alike.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import re
import resource
import statistics
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent


def cpu_threads() -> int:
  return len(os.sched_getaffinity(0))


def cpu_model() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or 'cpu'


# ------------------------------------------------------------ the models


def _cifar_resnet(depth: int, num_classes: int, residual: bool = True):
  """He et al. 2016, section 4.2: 3 stages of (depth - 2) / 6 basic blocks."""
  import torch
  from torch import nn
  from torch.nn import functional as F  # noqa: N812

  class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
      super().__init__()
      self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(cout)
      self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(cout)
      self.stride, self.pad = stride, cout - cin

    def forward(self, x):
      y = F.relu(self.bn1(self.conv1(x)))
      y = self.bn2(self.conv2(y))
      if not residual:
        return F.relu(y)
      if self.pad or self.stride > 1:
        # Option A: subsample, then append zero channels.
        x = x[:, :, :: self.stride, :: self.stride]
        x = F.pad(x, (0, 0, 0, 0, 0, self.pad))
      return F.relu(x + y)

  class CifarResNet(nn.Module):
    def __init__(self):
      super().__init__()
      n = (depth - 2) // 6
      self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(16)
      blocks, cin = [], 16
      for i, width in enumerate((16, 32, 64)):
        for j in range(n):
          blocks.append(Block(cin, width, 2 if i and not j else 1))
          cin = width
      self.blocks = nn.Sequential(*blocks)
      self.fc = nn.Linear(64, num_classes)
      for m in self.modules():
        if isinstance(m, nn.Conv2d):
          nn.init.kaiming_normal_(m.weight, mode='fan_out')

    def forward(self, x):
      x = self.blocks(F.relu(self.bn1(self.conv1(x))))
      return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

  return CifarResNet()


def _imagenet_resnet(depth: int, num_classes: int):
  """torchvision's ResNet layout: 7x7/2 stem, max pool, v1.5 bottlenecks.

  Written here because PyPI's torchvision wheels link CUDA libraries and do
  not import beside the CPU build of torch. The layout (stride on the 3x3
  of a bottleneck, 1x1 projection with BN where shapes change, He init,
  global average pool and one FC) is torchvision's, so FLOPs and memory
  traffic are the same.
  """
  import torch
  from torch import nn

  stages, bottleneck = {
    18: ((2, 2, 2, 2), False),
    34: ((3, 4, 6, 3), False),
    50: ((3, 4, 6, 3), True),
    101: ((3, 4, 23, 3), True),
    152: ((3, 8, 36, 3), True),
  }[depth]
  expansion = 4 if bottleneck else 1

  def conv_bn(cin, cout, k, stride=1):
    conv = nn.Conv2d(cin, cout, k, stride, k // 2, bias=False)
    return [conv, nn.BatchNorm2d(cout)]

  class Block(nn.Module):
    def __init__(self, cin: int, width: int, stride: int):
      super().__init__()
      cout = width * expansion
      if bottleneck:
        body = [*conv_bn(cin, width, 1), nn.ReLU(inplace=True)]
        body += [*conv_bn(width, width, 3, stride), nn.ReLU(inplace=True)]
        body += conv_bn(width, cout, 1)
      else:
        body = [*conv_bn(cin, width, 3, stride), nn.ReLU(inplace=True)]
        body += conv_bn(width, width, 3)
      self.body = nn.Sequential(*body)
      self.proj = None
      if stride != 1 or cin != cout:
        self.proj = nn.Sequential(*conv_bn(cin, cout, 1, stride))
      self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
      shortcut = x if self.proj is None else self.proj(x)
      return self.relu(self.body(x) + shortcut)

  class ResNet(nn.Module):
    def __init__(self):
      super().__init__()
      layers = [*conv_bn(3, 64, 7, 2), nn.ReLU(inplace=True)]
      layers.append(nn.MaxPool2d(3, 2, 1))
      cin = 64
      for i, n in enumerate(stages):
        for j in range(n):
          width = 64 * 2**i
          layers.append(Block(cin, width, 2 if i and not j else 1))
          cin = width * expansion
      self.features = nn.Sequential(*layers)
      self.fc = nn.Linear(cin, num_classes)
      for m in self.modules():
        if isinstance(m, nn.Conv2d):
          nn.init.kaiming_normal_(m.weight, mode='fan_out')

    def forward(self, x):
      x = self.features(x)
      return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

  return ResNet()


def build_model(name: str, num_classes: int):
  """The PyTorch twin of our registered model `name`."""
  match = re.fullmatch(r'(resnet|plain)(20|32|44|56|110|1202)', name)
  if match:
    residual = match.group(1) == 'resnet'
    return _cifar_resnet(int(match.group(2)), num_classes, residual)
  match = re.fullmatch(r'resnet(18|34|50|101|152)', name)
  if match:
    return _imagenet_resnet(int(match.group(1)), num_classes)
  raise ValueError(
    f'no PyTorch twin for {name!r}; known: CIFAR resnet/plain 20-1202 and '
    'resnet18-152.'
  )


class TorchStep:
  """One PyTorch eager train step on a fixed synthetic batch."""

  def __init__(self, args: argparse.Namespace):
    import torch

    cpus = sorted(os.sched_getaffinity(0))[: args.threads]
    os.sched_setaffinity(0, cpus)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    self.torch = torch
    self.model = build_model(args.model, args.num_classes).train()
    if args.channels_last:
      self.model = self.model.to(memory_format=torch.channels_last)
    self.opt = torch.optim.SGD(
      self.model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4
    )
    g = torch.Generator().manual_seed(0)
    shape = (args.batch_size, args.channels, args.image_size, args.image_size)
    self.images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)
    if args.channels_last:
      self.images = self.images.to(memory_format=torch.channels_last)
    self.labels = torch.randint(
      0, args.num_classes, (args.batch_size,), generator=g
    )

  def step(self) -> float:
    f = self.torch.nn.functional
    x = (self.images.float() - 127.0) / 64.0
    self.opt.zero_grad(set_to_none=True)
    out = self.model(x)
    loss = f.cross_entropy(out, self.labels)
    loss.backward()
    self.opt.step()
    return loss.detach().item()

  def run(self, steps: int) -> list[float]:
    times = []
    for _ in range(steps):
      start = time.perf_counter()
      self.step()
      times.append(time.perf_counter() - start)
    return times


# -------------------------------------------------------- side by side


class Worker:
  """A benchmark process driven over stdin/stdout, one JSON line a reply."""

  def __init__(self, name: str, argv: list[str], env: dict[str, str]):
    self.name = name
    self.proc = subprocess.Popen(
      argv,
      stdin=subprocess.PIPE,
      stdout=subprocess.PIPE,
      text=True,
      env={**os.environ, **env},
    )
    self.ready = self._reply()

  def _reply(self) -> dict:
    for line in self.proc.stdout:
      if line.startswith('{'):
        return json.loads(line)
    raise RuntimeError(f'worker {self.name} exited early')

  def run(self, steps: int) -> list[float]:
    self.proc.stdin.write(f'run {steps}\n')
    self.proc.stdin.flush()
    return self._reply()['times']

  def close(self) -> None:
    if self.proc.poll() is None:
      self.proc.stdin.write('quit\n')
      self.proc.stdin.close()
      self.proc.wait(timeout=60)


def _shared_argv(args: argparse.Namespace) -> list[str]:
  return [
    f'--model={args.model}',
    f'--batch_size={args.batch_size}',
    f'--image_size={args.image_size}',
    f'--num_classes={args.num_classes}',
    f'--warmup={args.warmup}',
  ]


def _parse_variant(text: str) -> tuple[str, dict[str, str]]:
  """'name:KEY=VAL,KEY2=VAL2' -> (name, env)."""
  name, _, assignments = text.partition(':')
  env = dict(a.split('=', 1) for a in assignments.split(',') if a)
  return name, env


def compare(args: argparse.Namespace) -> None:
  """Alternates ours (and variants) with PyTorch; prints pairwise ratios."""
  shared = _shared_argv(args)
  ours = [args.jax_python, str(HERE / 'train_step.py'), '--serve', *shared]
  ours += [f'--field={f}' for f in args.field]
  if args.threads != cpu_threads():
    ours.append(f'--threads={args.threads}')
  variants = [('ours', {})] + [_parse_variant(v) for v in args.variant]
  workers = [Worker(name, ours, env) for name, env in variants]
  theirs = [sys.executable, str(HERE / 'torch_reference.py'), '--serve']
  theirs += [*shared, f'--threads={args.threads}']
  workers.append(Worker('pytorch', theirs, {}))
  for w in workers:
    _emit(event='ready', worker=w.name, **w.ready)

  medians = {w.name: [] for w in workers}
  try:
    for i in range(args.rounds):
      order = workers if i % 2 == 0 else workers[::-1]
      for w in order:
        medians[w.name].append(statistics.median(w.run(args.steps_per_round)))
      row = {w.name: round(medians[w.name][-1] * 1e3, 2) for w in workers}
      ratios = {
        f'{name}/pytorch': round(medians['pytorch'][-1] / medians[name][-1], 3)
        for name, _ in variants
      }
      _emit(event='round', round=i, step_ms=row, **ratios)
  finally:
    for w in workers:
      w.close()

  summary = {
    'event': 'summary',
    'model': args.model,
    'batch_size': args.batch_size,
    'image_size': args.image_size,
    'threads': args.threads,
    'rounds': args.rounds,
    'steps_per_round': args.steps_per_round,
    'load_average_1m': round(os.getloadavg()[0], 2),
    'cpu': cpu_model(),
  }
  for name, times in medians.items():
    summary[f'{name}_images_per_s'] = round(
      args.batch_size / statistics.median(times), 2
    )
  for name, _ in variants:
    pairs = [
      t / o for t, o in zip(medians['pytorch'], medians[name], strict=True)
    ]
    summary[f'{name}/pytorch_median'] = round(statistics.median(pairs), 3)
    summary[f'{name}/pytorch_pairs'] = [round(r, 3) for r in pairs]
  _emit(**summary)


def _emit(**fields) -> None:
  print(json.dumps(fields), flush=True)


def serve(args: argparse.Namespace) -> None:
  bench = TorchStep(args)
  bench.run(args.warmup)
  _emit(ready=True, compile_s=0.0)
  for line in sys.stdin:
    command = line.split()
    if not command or command[0] == 'quit':
      break
    _emit(times=bench.run(int(command[1])))


def standalone(args: argparse.Namespace) -> None:
  import torch

  bench = TorchStep(args)
  bench.run(args.warmup)
  times = bench.run(args.steps)
  median = statistics.median(times)
  _emit(
    bench='torch_train_step',
    model=args.model,
    batch_size=args.batch_size,
    image_size=args.image_size,
    torch=torch.__version__,
    threads=torch.get_num_threads(),
    channels_last=args.channels_last,
    device_kind=cpu_model(),
    steps_timed=len(times),
    step_ms_median=round(median * 1e3, 2),
    images_per_s=round(args.batch_size / median, 2),
    peak_host_mib=round(
      resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
    ),
  )


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--model', default='resnet20')
  p.add_argument('--batch_size', type=int, default=128)
  p.add_argument('--image_size', type=int, default=None)
  p.add_argument('--num_classes', type=int, default=None)
  p.add_argument('--channels', type=int, default=3)
  p.add_argument('--threads', type=int, default=cpu_threads())
  p.add_argument('--channels_last', action='store_true')
  p.add_argument('--steps', type=int, default=10)
  p.add_argument('--warmup', type=int, default=2)
  p.add_argument('--compare', action='store_true')
  p.add_argument('--rounds', type=int, default=7)
  p.add_argument('--steps_per_round', type=int, default=3)
  p.add_argument('--field', action='append', default=[],
                 help='model field override for ours')  # fmt: skip
  p.add_argument('--variant', action='append', default=[],
                 help="another of ours, 'name:ENV=VALUE,...'")  # fmt: skip
  p.add_argument('--jax_python', default=sys.executable,
                 help='python that runs our worker')  # fmt: skip
  p.add_argument('--serve', action='store_true', help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  cifar = re.fullmatch(r'(resnet|plain)(20|32|44|56|110|1202)', args.model)
  if args.image_size is None:
    args.image_size = 32 if cifar else 224
  if args.num_classes is None:
    args.num_classes = 10 if cifar else 1000
  return args


def main(argv=None) -> None:
  args = parse_args(argv)
  if args.serve:
    serve(args)
  elif args.compare:
    compare(args)
  else:
    standalone(args)


if __name__ == '__main__':
  main()
