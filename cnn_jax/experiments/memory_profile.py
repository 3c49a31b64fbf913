"""Memory profile: where activations and parameters sit, layer by layer.

  python -m cnn_jax.experiments memory_profile --workdir=/tmp/memory_profile

Nothing is trained: the numbers come from the model report
(`cnn_jax.summary`), which counts them from shapes, so every scale gives
the same report in seconds.

Hypothesis (Stanford CS231n's VGG-16 walkthrough, following Simonyan and
Zisserman 2015, Table 2): in VGG-16 most of the activation memory lives in
the early convolutional layers (large maps) and most of the parameters in
the late fully connected layers (the first FC alone has 102.8M weights).
ResNet-50 and GoogLeNet, which end in global average pooling, are shown
beside it.
"""

from __future__ import annotations

import os

import numpy as np

from cnn_jax import models, summary
from cnn_jax.experiments import report as rep
from cnn_jax.experiments.runner import Analysis, Run

NAME = 'memory_profile'
TITLE = 'Memory profile: activations early, parameters late'
DEFAULT_SEEDS = {'tiny': 1, 'cpu': 1, 'full': 1}
# (label, registry name, fields): the ImageNet forms at 224x224.
MODELS = (
  ('VGG-16', 'vgg16', {}),
  ('ResNet-50', 'resnet50', {}),
  ('GoogLeNet', 'googlenet', {'aux_heads': False}),
)
IMAGE = (1, 224, 224, 3)
# REFERENCE.md: VGG-16's forward activations at 224x224, input included.
VGG16_ACTIVATIONS = 15_237_608
VGG16_FC1 = 102_764_544

HYPOTHESIS = """
The usual account of VGG-16's memory (Stanford CS231n's walkthrough of
Simonyan and Zisserman 2015, configuration D): **activation memory
concentrates in the early layers** (the 224x224 and 112x112 maps) and
**parameters in the late ones** (the three FC layers, the first alone
25,088 x 4,096). ResNet-50 and GoogLeNet, whose heads average-pool the
last map, are profiled beside it.
"""

MEASURES = """
Per layer, from the model report (`cnn_jax.summary`, counted from shapes
in eval mode, batch 1, 224x224, 1000 classes): the elements of each
layer's output (float32 bytes) and its parameters. A layer is a row of the
report: the input, each convolution, BatchNorm, pooling and FC layer, in
execution order. "Early" and "late" are the first and second half of these
rows; the depth centroid is the mean relative position (0 = input, 1 =
logits) weighted by activations or by parameters. GoogLeNet is the
paper's form without the aux heads (unused at inference).
"""

HOW_TO_READ = """
The claim holds for a model when most of its activations sit in the first
half of its layers and most of its parameters in the second half, i.e.
when the activation centroid is well before the parameter centroid. These
are exact counts for batch 1; activation memory scales with the batch,
parameters do not, so with a training batch of 128 the (mostly early)
activations outweigh the (mostly late) parameters many times over.
Training also keeps more than these outputs (ReLU masks, BatchNorm
inputs), so the activation column is a lower bound on training memory.
"""


def variants(scale: str, seeds: int) -> list:
  del scale, seeds
  return []


def setup(scale: str) -> str:
  del scale
  return (
    'No training: VGG-16 (no BatchNorm), ResNet-50 (v1.5) and GoogLeNet '
    '(paper form, no aux heads) at 224x224 with 1000 classes, batch 1, '
    'float32; identical at every scale.'
  )


def profiles() -> dict[str, summary.Summary]:
  out = {}
  for label, name, fields in MODELS:
    model = models.create_model(name, 1000, **fields)
    out[label] = summary.summarize(model, IMAGE, name=name)
  return out


def layer_rows(s: summary.Summary) -> list[summary.Row]:
  return [r for r in s.rows if r.kind != 'unused']


def shares(s: summary.Summary) -> dict[str, float]:
  """Early/late shares and depth centroids of activations and params."""
  rows = layer_rows(s)
  acts = np.array([r.activations for r in rows], np.float64)
  params = np.array([r.params for r in rows], np.float64)
  depth = np.linspace(0.0, 1.0, len(rows))
  half = len(rows) // 2
  return {
    'act_early': acts[:half].sum() / acts.sum(),
    'params_late': params[half:].sum() / params.sum(),
    'act_centroid': float((acts * depth).sum() / acts.sum()),
    'params_centroid': float((params * depth).sum() / params.sum()),
  }


def verdict(vgg: dict[str, float], others: dict[str, dict]) -> rep.Verdict:
  """From `shares` of VGG-16 and of the models beside it."""
  act, par = vgg['act_early'], vgg['params_late']
  reason = (
    f'VGG-16: {100 * act:.1f}% of activations in the first half of its '
    f'layers, {100 * par:.1f}% of parameters in the second half '
    f'(centroids {vgg["act_centroid"]:.2f} vs {vgg["params_centroid"]:.2f}).'
  )
  for label, s in others.items():
    reason += (
      f' {label}: {100 * s["act_early"]:.1f}% / {100 * s["params_late"]:.1f}%.'
    )
  if act > 0.5 and par > 0.5:
    strength = 'exact counts; strongly' if min(act, par) >= 0.8 else (
      'exact counts; clearly'
    )  # fmt: skip
    return rep.Verdict('supports', strength, reason)
  if act > 0.5 or par > 0.5:
    return rep.Verdict('partly supports', 'exact counts', reason)
  return rep.Verdict('does not support', 'exact counts', reason)


def analyse(runs: list[Run], scale: str, out_dir: str) -> Analysis:
  del runs, scale
  reports = profiles()
  stats = {label: shares(s) for label, s in reports.items()}
  rows = []
  for label, s in reports.items():
    st, layers = stats[label], layer_rows(s)
    biggest_act = max(layers, key=lambda r: r.activations)
    biggest_par = max(layers, key=lambda r: r.params)
    rows.append(
      [
        label,
        rep.count(s.params),
        f'{s.macs / 1e9:.3f}G',
        rep.count(s.activations),
        f'{s.activation_bytes / 2**20:.1f}',
        f'{100 * st["act_early"]:.1f}%',
        f'{100 * st["params_late"]:.1f}%',
        f'{st["act_centroid"]:.2f} / {st["params_centroid"]:.2f}',
        f'{biggest_act.name} ({biggest_act.activations:,})',
        f'{biggest_par.name} ({biggest_par.params:,})',
      ]
    )
  table = rep.table(
    [
      'model',
      'params',
      'MACs',
      'activations',
      'MiB (fp32)',
      'activations in first half',
      'params in second half',
      'centroid act / params',
      'largest output',
      'largest layer',
    ],
    rows,
  )
  vgg = reports['VGG-16']
  fc1 = max(layer_rows(vgg), key=lambda r: r.params)
  check = (
    f'Check against REFERENCE.md: VGG-16 activations {vgg.activations:,} '
    f'(reference {VGG16_ACTIVATIONS:,}, '
    f'{"equal" if vgg.activations == VGG16_ACTIVATIONS else "DIFFERENT"}); '
    f'largest layer {fc1.name} with {fc1.params:,} parameters (reference '
    f'{VGG16_FC1:,}, '
    f'{"equal" if fc1.params == VGG16_FC1 else "DIFFERENT"}).'
  )
  blocks = _vgg_blocks(vgg)
  figures = [
    (_bars(reports, out_dir), 'Per-layer activation memory (left) and '
     'parameters (right), in execution order, batch 1, float32.'),
    (_cumulative(reports, out_dir), 'Cumulative share of activations '
     '(solid) and parameters (dashed) against relative depth.'),
  ]  # fmt: skip
  sections = [
    '### Totals and concentration\n\n' + table,
    check,
    '### VGG-16 by block\n\n' + blocks,
  ]
  others = {k: v for k, v in stats.items() if k != 'VGG-16'}
  return Analysis(sections, figures, verdict(stats['VGG-16'], others))


def _vgg_blocks(s: summary.Summary) -> str:
  acts, params = s.by_block('activations'), s.by_block('params')
  rows = [
    [
      block,
      rep.count(acts[block]),
      f'{100 * acts[block] / s.activations:.1f}%',
      rep.count(params[block]),
      f'{100 * params[block] / s.params:.1f}%',
    ]
    for block in acts
  ]
  return rep.table(['block', 'activations', 'share', 'params', 'share'], rows)


def _bars(reports: dict[str, summary.Summary], out_dir: str) -> str:
  plt = rep.pyplot()
  fig, axes = plt.subplots(len(reports), 2, figsize=(13, 3.2 * len(reports)))
  for (label, s), (ax_a, ax_p) in zip(reports.items(), axes, strict=True):
    rows = layer_rows(s)
    x = np.arange(len(rows))
    ax_a.bar(x, [r.activation_bytes / 2**20 for r in rows], color='tab:red')
    ax_p.bar(x, [r.params / 1e6 for r in rows], color='tab:blue')
    ax_a.set_ylabel('MiB')
    ax_p.set_ylabel('M params')
    ax_a.set_title(f'{label}: activation memory per layer')
    ax_p.set_title(f'{label}: parameters per layer')
    if len(rows) <= 45:
      for ax in (ax_a, ax_p):
        ax.set_xticks(x, [r.name for r in rows], rotation=90, fontsize=6)
    else:
      for ax in (ax_a, ax_p):
        ax.set_xlabel('layer (execution order)')
  fig.tight_layout()
  path = os.path.join(out_dir, 'memory_profile_layers.png')
  fig.savefig(path, dpi=80)
  plt.close(fig)
  return os.path.basename(path)


def _cumulative(reports: dict[str, summary.Summary], out_dir: str) -> str:
  plt = rep.pyplot()
  fig, ax = plt.subplots(figsize=(6, 4))
  for label, s in reports.items():
    rows = layer_rows(s)
    depth = np.linspace(0, 1, len(rows))
    acts = np.cumsum([r.activations for r in rows])
    params = np.cumsum([r.params for r in rows])
    (line,) = ax.plot(depth, acts / acts[-1], label=f'{label} activations')
    ax.plot(
      depth,
      params / params[-1],
      linestyle='--',
      color=line.get_color(),
      label=f'{label} params',
    )
  ax.set_xlabel('relative depth (layer index / layers)')
  ax.set_ylabel('cumulative share')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  path = os.path.join(out_dir, 'memory_profile_cumulative.png')
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return os.path.basename(path)
