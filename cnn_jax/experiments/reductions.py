"""Reductions: GoogLeNet's 1x1 convolutions before its 3x3 and 5x5 ones.

  python -m cnn_jax.experiments reductions --workdir=/tmp/reductions \
      --scale=cpu            # about 10 min on 2 idle CPU cores
  python -m cnn_jax.experiments reductions --workdir=DIR --scale=full

Hypothesis (Szegedy et al. 2015, "Going Deeper with Convolutions", sec. 4
and 5): 1x1 convolutions that reduce the channels in front of the
expensive 3x3 and 5x5 convolutions cut an inception module's compute by
a large factor without hurting accuracy.

Variants: GoogLeNet (BatchNorm, no aux heads) at CIFAR-10 size, with the
reductions and without them (`reductions=False`: the 3x3 and 5x5 branches
convolve the module input directly; every module keeps Table 1's output
width, so the rest of the net is unchanged).

Measured: parameters and MACs (exact, from cnn_jax.summary), per module
and in total; test accuracy after the same schedule; train images/s.
"""

from __future__ import annotations

import math
import os

from cnn_jax import config_lib, models, summary
from cnn_jax.experiments import report as rep
from cnn_jax.experiments.runner import Analysis, Budget, Run, by_name, seeded

NAME = 'reductions'
TITLE = 'Reductions: 1x1 convolutions cut inception compute'
DEFAULT_SEEDS = {'tiny': 1, 'cpu': 1, 'full': 3}
NAMES = ('with_reductions', 'without_reductions')

# The stem per scale. At 32x32 the CIFAR stem runs inception 3 at 32x32:
# 1.45 GMACs per image with reductions and 5.2 without, hours per epoch on
# two CPU cores. The cpu scale uses the ImageNet stem instead (7x7/2 conv
# and two stride-2 pools), which runs inception 3 at 4x4, 4 at 2x2 and 5
# at 1x1: 32 and 90 MMACs per image.
STEMS = {'tiny': 'imagenet', 'cpu': 'imagenet', 'full': 'cifar'}
BUDGETS = {
  # Without reductions a step costs about three times more. A trial of
  # 150 steps left both nets below 25% top-1 (loss above 5 at step 50), so
  # 400 steps with a 30-step warm-up.
  'cpu': Budget(
    steps=400,
    batch_size=32,
    train_limit=10_000,
    eval_limit=1_000,
    log_every=10,
    learning_rate=0.05,
    warmup_steps=30,
  ),
  'tiny': Budget(steps=2, batch_size=8, train_limit=64, eval_limit=16),
}

HYPOTHESIS = """
Szegedy et al. 2015 (*Going Deeper with Convolutions*, sec. 4 and 5): 1x1
convolutions that reduce the number of channels in front of the expensive
3x3 and 5x5 convolutions **cut an inception module's compute** (and
parameters) by a large factor, **without hurting accuracy**; this is what
let GoogLeNet be deep and wide at 1.5 GMACs.
"""

MEASURES = """
- **Parameters and MACs** of the whole net and of each inception module,
  counted from shapes by the model report (`cnn_jax.summary`): exact.
- **Test top-1** after the same training schedule, and its sampling error
  on the test subset (binomial standard error of the difference).
- **Train images/s**: the median over the log intervals of the train
  loop's own throughput, compilation excluded.
"""

HOW_TO_READ = """
The compute claim is read off the MACs columns: the ratio is exact for
these modules and independent of the training run. The accuracy claim is
"without hurting": the net with reductions should be no worse than the
one without by more than the noise. The noise shown is the test-set
sampling error (two standard errors of the difference of two accuracies on
n test images); with one seed it ignores seed-to-seed variation, so a
difference inside it is "no detectable harm", not proof of equality.
Images/s are wall-clock figures on a shared machine: compare the ratio, not
the absolute numbers.
"""


def _fields(scale: str, reductions: bool) -> dict:
  return {'stem': STEMS[scale], 'reductions': reductions}


def _config(scale: str, reductions: bool):
  config = config_lib.cifar_googlenet_config()
  config.model.fields.update(_fields(scale, reductions))
  if scale in BUDGETS:
    BUDGETS[scale].apply(config)
  return config


def variants(scale: str, seeds: int):
  out = []
  for name, flag in zip(NAMES, (True, False), strict=True):
    out += seeded(name, _config(scale, flag), seeds, reductions=flag)
  return out


def setup(scale: str) -> str:
  text = (
    'GoogLeNet with BatchNorm after every convolution, no LRN, no aux '
    'heads, GAP + dropout 0.4 + FC head, 5x5 kernels in the 5x5 branch '
    '(`config_lib.cifar_googlenet_config`): SGD with momentum 0.9, weight '
    'decay 5e-4, cosine decay, crops and flips.'
  )
  if scale == 'full':
    return text + (
      ' Full scale: the CIFAR stem (one 3x3 conv to 192 channels, inception '
      '3 at 32x32), lr 0.1, batch 128, 200 epochs on the whole train split.'
    )
  return (
    f'{text} **Shrunk for `{scale}` scale:** the ImageNet stem on the '
    '32x32 images (inception 3 runs at 4x4, 4 at 2x2, 5 at 1x1) instead of '
    'the CIFAR stem (32x32, 16x16, 8x8), which would cost 1.45 and 5.2 '
    'GMACs per image; the reductions act inside each module, so the '
    'per-module MAC ratios are those of the full-size net; '
    f'{BUDGETS[scale].describe()}'
  )


def report_of(stem: str, reductions: bool, size: int) -> summary.Summary:
  """The model report of GoogLeNet as configured here, at size x size."""
  config = config_lib.cifar_googlenet_config()
  fields = dict(config.model.fields)
  fields.update(stem=stem, reductions=reductions)
  model = models.create_model('googlenet', 10, **fields)
  return summary.summarize(model, (1, size, size, 3))


def two_sigma(p1: float, p2: float, n: float) -> float:
  """Two binomial standard errors of the difference of two accuracies."""
  return 2 * math.sqrt((p1 * (1 - p1) + p2 * (1 - p2)) / max(n, 1))


def verdict(
  macs: tuple[int, int], accuracy: tuple[float, float], n: float
) -> rep.Verdict:
  """From MACs and test top-1 (with, without reductions) on n images."""
  with_r, without = accuracy
  cut = macs[1] / macs[0]
  noise = two_sigma(with_r, without, n)
  diff = with_r - without
  reason = (
    f'MACs per image {macs[0] / 1e6:.1f}M with reductions vs '
    f'{macs[1] / 1e6:.1f}M without ({cut:.2f}x less, exact); test top-1 '
    f'{100 * with_r:.1f}% vs {100 * without:.1f}% ({100 * diff:+.1f} '
    f'points, test-set noise ±{100 * noise:.1f}).'
  )
  if cut <= 1:
    return rep.Verdict('does not support', 'exact', reason)
  if diff < -noise:
    return rep.Verdict(
      'partly supports',
      'compute exact; accuracy harmed beyond noise',
      reason + ' The reductions cost accuracy at this scale.',
    )
  strength = 'moderate' if diff > noise else 'weak'
  return rep.Verdict(
    'supports', f'compute exact; accuracy not harmed, {strength}', reason
  )


def analyse(runs: list[Run], scale: str, out_dir: str) -> Analysis:
  groups = by_name(runs)
  stem = STEMS[scale]
  trained = {n: report_of(stem, n == NAMES[0], 32) for n in NAMES}
  full = {n: report_of('cifar', n == NAMES[0], 32) for n in NAMES}
  imagenet = {n: report_of('imagenet', n == NAMES[0], 224) for n in NAMES}
  rows = []
  for name in NAMES:
    rs = groups[name]
    rows.append(
      [
        name,
        rep.count(trained[name].params),
        rep.millions(trained[name].macs, 1),
        rep.millions(full[name].macs, 0),
        rep.millions(imagenet[name].macs, 0),
        rep.pm([r.result['eval']['top1'] for r in rs], 2, 100),
        rep.pm([r.result['images_per_second'] for r in rs], 1),
      ]
    )
  totals = rep.table(
    [
      'variant',
      'params',
      f'MACs/image (as trained, {stem} stem, 32x32)',
      'MACs (CIFAR stem, 32x32)',
      'MACs (ImageNet stem, 224x224)',
      'test top-1 %',
      'train images/s',
    ],
    rows,
  )
  modules = _module_table(trained)
  accuracy = [
    rep.mean_std([r.result['eval']['top1'] for r in groups[n]])[0]
    for n in NAMES
  ]
  n_test = groups[NAMES[0]][0].result['eval']['count']
  macs = (trained[NAMES[0]].macs, trained[NAMES[1]].macs)
  speed = [
    rep.mean_std([r.result['images_per_second'] for r in groups[n]])[0]
    for n in NAMES
  ]
  figure = rep.plot_bars(
    os.path.join(out_dir, 'reductions.png'),
    [
      ('MMACs / image (as trained)', NAMES, [m / 1e6 for m in macs]),
      ('test top-1 %', NAMES, [100 * a for a in accuracy]),
      ('train images/s', NAMES, speed),
    ],
    '',
  )
  sections = [
    '### Whole net (mean ± std over seeds)\n\n' + totals,
    '### Per inception module (exact, as trained)\n\n' + modules,
    f'Train throughput ratio (with / without reductions): '
    f'{speed[0] / speed[1]:.2f}x.',
  ]
  return Analysis(
    sections,
    [(figure, 'MACs, test top-1 and train throughput.')],
    verdict(macs, tuple(accuracy), n_test),
  )


def _module_table(reports: dict[str, summary.Summary]) -> str:
  macs = {n: r.by_block('macs') for n, r in reports.items()}
  params = {n: r.by_block('params') for n, r in reports.items()}
  rows = []
  for block in macs[NAMES[0]]:
    if not block.startswith('inception'):
      continue
    a, b = macs[NAMES[0]][block], macs[NAMES[1]][block]
    pa, pb = params[NAMES[0]][block], params[NAMES[1]][block]
    rows.append(
      [
        block.removeprefix('inception'),
        rep.count(a),
        rep.count(b),
        f'{b / a:.2f}x',
        rep.count(pa),
        rep.count(pb),
        f'{pb / pa:.2f}x',
      ]
    )
  return rep.table(
    [
      'module',
      'MACs with',
      'MACs without',
      'ratio',
      'params with',
      'params without',
      'ratio',
    ],
    rows,
  )
