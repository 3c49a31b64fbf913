"""Degradation: deeper plain nets train worse; residual nets do not.

  python -m cnn_jax.experiments degradation --workdir=/tmp/degradation \
      --scale=cpu            # about 10 min on 2 idle CPU cores
  python -m cnn_jax.experiments degradation --workdir=DIR --scale=full \
      --seeds=3              # the paper's 64k iterations; one GPU each

Hypothesis (He et al. 2016, "Deep Residual Learning for Image
Recognition", sec. 4.2 and Fig. 6): on CIFAR-10, plain-56 has a higher
TRAINING error than plain-20 throughout training, so the degradation is
an optimisation problem rather than overfitting; with identity shortcuts
the ordering flips and ResNet-56 trains (and tests) better than ResNet-20.

Variants: plain20, plain56, resnet20, resnet56 (option-A shortcuts,
BatchNorm after every convolution), same recipe for all four.

Measured: the training loss and error at equal steps (running means over
each log interval, from metrics.jsonl), an eval-mode training error on a
fixed subset of the train split at the end, and the test error.

Reading: the claim holds if plain56's training loss sits above plain20's
at equal steps, and resnet56's below resnet20's. At cpu scale the runs are
far from converged, so this tests the early part of the paper's curves.
"""

from __future__ import annotations

import math
import os

import numpy as np

from cnn_jax import config_lib
from cnn_jax.experiments import report as rep
from cnn_jax.experiments.runner import Analysis, Budget, Run, by_name, seeded

NAME = 'degradation'
TITLE = 'Degradation: deeper plain nets train worse, residual nets do not'
DEFAULT_SEEDS = {'tiny': 1, 'cpu': 1, 'full': 3}
DEPTHS = (20, 56)
NAMES = ('plain20', 'plain56', 'resnet20', 'resnet56')

BUDGETS = {
  # Batch 32 keeps a step of plain56 under a second on two CPU cores; the
  # rate is halved from the paper's 0.1 at batch 128 (rather than
  # quartered by the linear rule) so that 300 steps still make progress. A
  # 30-step warm-up keeps plain56 from diverging at the start. The paper's
  # decays at 50% and 75% of the run are kept.
  'cpu': Budget(
    steps=300,
    batch_size=32,
    train_limit=10_000,
    eval_limit=1_000,
    train_eval_limit=1_000,
    log_every=10,
    eval_every=100,
    learning_rate=0.05,
    warmup_steps=30,
  ),
  'tiny': Budget(
    steps=4,
    batch_size=8,
    train_limit=64,
    eval_limit=16,
    train_eval_limit=16,
    log_every=2,
    eval_every=2,
  ),
}
FULL_TRAIN_EVAL = 10_000
# In a first cpu-scale run without clipping, plain56's gradient norm
# averaged 186 over its first 10 steps (the gradients of deep plain nets
# with BatchNorm explode at initialisation; Yang et al. 2019, "A Mean Field
# Theory of Batch Normalization") and the net stayed at chance level
# for all 300 steps. Clipping the global gradient norm at 2 bounds those
# first updates; it helps the deep plain net most (the others' norms are
# far smaller), so a degradation that survives it is not an artefact of
# the first steps. All four nets get it at the small scales.
SMALL_SCALE_CLIP = 2.0

HYPOTHESIS = """
He et al. 2016 (*Deep Residual Learning for Image Recognition*, sec. 4.2,
Fig. 6): on CIFAR-10 a plain 56-layer net has a **higher training error**
than a plain 20-layer net, so depth hurts optimisation itself, not only
generalisation; with identity shortcuts the ordering flips: ResNet-56
trains and tests better than ResNet-20.
"""

MEASURES = """
- **Training loss and error at equal steps**: `train/loss` and
  `1 - train/accuracy` from `metrics.jsonl`, each row the mean over the
  steps since the previous row, on augmented batches with train-mode
  BatchNorm. This is the curve the claim is about; the table's "final"
  columns average the last 20% of the rows.
- **Eval-mode training error**: one pass at the end over a fixed subset
  of the train split (the first images, all inside the training subset),
  without augmentation and with the running BatchNorm statistics.
- **Test error**: on the (subset of the) test split, at every eval
  interval and at the end.
"""

HOW_TO_READ = """
The first comparison is plain56 against plain20 at equal steps: a higher
training loss for the deeper plain net is the degradation. The second is
resnet56 against resnet20: the residual pair should not degrade. "Above at
k of n" counts the logged steps of the second half of training at which
the seed-averaged curves are in the claimed order. At `cpu` scale the nets
are trained for a small fraction of the paper's 64k iterations, so the
comparison covers the beginning of Fig. 6 only; a residual pair that has
not separated yet is expected there, a plain pair in the wrong order
would count against the claim.
"""


def _config(depth: int, plain: bool, scale: str):
  config = config_lib.cifar_resnet_config(depth, plain=plain)
  if scale in BUDGETS:
    BUDGETS[scale].apply(config)
    config.optim.grad_clip_norm = SMALL_SCALE_CLIP
  return config


def variants(scale: str, seeds: int):
  """The four nets, each once per seed."""
  out = []
  for plain in (True, False):
    for depth in DEPTHS:
      name = f'{"plain" if plain else "resnet"}{depth}'
      extra = BUDGETS[scale].train_eval_limit if scale in BUDGETS else 0
      out += seeded(
        name,
        _config(depth, plain, scale),
        seeds,
        train_eval_examples=extra or FULL_TRAIN_EVAL,
        depth=depth,
        plain=plain,
      )
  return out


def setup(scale: str) -> str:
  recipe = (
    "The paper's CIFAR recipe (`config_lib.cifar_resnet_config`): SGD "
    'with momentum 0.9, weight decay 1e-4 on kernels, the learning rate '
    'divided by 10 at 50% and 75% of the run, 4-pixel padding with random '
    'crops and flips, option-A shortcuts, BatchNorm.'
  )
  if scale == 'full':
    return (
      f'{recipe} Full scale: batch 128, lr 0.1, 164 epochs (64k '
      'iterations) on all 50,000 train images, tested on all 10,000 test '
      f'images; eval-mode training error on the first {FULL_TRAIN_EVAL:,} '
      'train images.'
    )
  return (
    f'{recipe} **Shrunk for `{scale}` scale:** '
    f'{BUDGETS[scale].describe()} The global gradient norm is clipped at '
    f'{SMALL_SCALE_CLIP:g} (not in the paper): without it, in a first run, '
    "plain56's gradients exploded in the first steps (norm 186) and it "
    'never left chance level; clipping helps the deep plain net most, so a '
    'degradation that survives it is not an artefact of those steps. '
    "Everything else is the paper's, and the four nets share every "
    'setting.'
  )


# -------------------------------------------------------------- analysis


def tail_mean(run: Run, key: str, fraction: float = 0.2) -> float:
  """Mean of the last `fraction` of a metric's logged rows (at least one)."""
  _, values = run.curve(key)
  n = max(1, round(len(values) * fraction))
  return float(np.mean(values[-n:]))


def mean_curve(runs: list[Run], key: str) -> tuple[np.ndarray, np.ndarray]:
  """The seed-averaged curve of `key` on the steps all seeds logged."""
  curves = [r.curve(key) for r in runs]
  common = sorted(set.intersection(*(set(s) for s, _ in curves)))
  values = [
    [dict(zip(s, v, strict=True))[t] for t in common] for s, v in curves
  ]
  return np.array(common), np.mean(values, axis=0)


def ordered_fraction(
  deeper: list[Run], shallower: list[Run], key: str = 'train/loss'
) -> tuple[int, int]:
  """(k, n): at k of the n logged steps in the second half of training,
  the deeper net's seed-averaged `key` is above the shallower net's."""
  steps, a = mean_curve(deeper, key)
  steps_b, b = mean_curve(shallower, key)
  shared = sorted(set(steps) & set(steps_b))
  half = [t for t in shared if t > shared[-1] / 2] if shared else []
  da, db = dict(zip(steps, a, strict=True)), dict(zip(steps_b, b, strict=True))
  return sum(da[t] > db[t] for t in half), len(half)


def compare_pair(deeper: list[Run], shallower: list[Run]) -> dict:
  """Final train losses of a pair and the evidence that deeper > shallower."""
  deep = [tail_mean(r, 'train/loss') for r in deeper]
  shallow = [tail_mean(r, 'train/loss') for r in shallower]
  (dm, ds), (sm, ss) = rep.mean_std(deep), rep.mean_std(shallow)
  above, total = ordered_fraction(deeper, shallower)
  seeds = min(len(deep), len(shallow))
  if seeds >= 2:
    strength = rep.strength_from_spread(dm - sm, [ds, ss], seeds)
  else:
    # One seed: no spread to compare with. Consistency along the curve
    # is the only evidence, and it cannot exclude a seed effect.
    strength = 'moderate' if total and above >= 0.9 * total else 'weak'
  return {
    'deeper': dm,
    'shallower': sm,
    'difference': dm - sm,
    'above': above,
    'of': total,
    'strength': strength,
  }


def verdict(plain: dict, residual: dict) -> rep.Verdict:
  """The verdict from `compare_pair` of (plain56, plain20) and (resnet56,
  resnet20)."""
  plain_ok = plain['difference'] > 0
  residual_ok = residual['difference'] < 0
  reason = (
    f'Final training loss plain56 {plain["deeper"]:.3f} vs plain20 '
    f'{plain["shallower"]:.3f} ({plain["difference"]:+.3f}; plain56 above '
    f'at {plain["above"]} of {plain["of"]} logged steps of the second '
    f'half); resnet56 {residual["deeper"]:.3f} vs resnet20 '
    f'{residual["shallower"]:.3f} ({residual["difference"]:+.3f}).'
  )
  if plain_ok and residual_ok:
    outcome = 'supports'
  elif plain_ok:
    outcome = 'partly supports'
    reason += (
      ' The plain pair degrades as claimed, but resnet56 has not yet '
      'overtaken resnet20.'
    )
  else:
    outcome = 'does not support'
    reason += ' plain56 did not train worse than plain20.'
  return rep.Verdict(outcome, plain['strength'], reason)


def analyse(runs: list[Run], scale: str, out_dir: str) -> Analysis:
  groups = by_name(runs)
  rows = []
  for name in NAMES:
    rs = groups[name]
    rows.append(
      [
        name,
        rep.count(rs[0].result['num_params']),
        rep.pm([tail_mean(r, 'train/loss') for r in rs], 3),
        rep.pm([1 - tail_mean(r, 'train/accuracy') for r in rs], 1, 100),
        rep.pm([1 - r.result['train_eval']['top1'] for r in rs], 1, 100),
        rep.pm([1 - r.result['eval']['top1'] for r in rs], 1, 100),
        rep.pm([r.result['images_per_second'] for r in rs], 0),
      ]
    )
  final = rep.table(
    [
      'variant',
      'params',
      'train loss (final)',
      'train error % (running)',
      'train error % (eval mode)',
      'test error %',
      'train images/s',
    ],
    rows,
  )
  plain = compare_pair(groups['plain56'], groups['plain20'])
  residual = compare_pair(groups['resnet56'], groups['resnet20'])
  sections = [
    '### Final metrics (mean ± std over seeds)\n\n' + final,
    '### Training loss at equal steps\n\n' + _equal_steps_table(groups),
    *_notes(plain, residual, scale),
  ]
  figures = _plots(groups, out_dir)
  return Analysis(sections, figures, verdict(plain, residual))


def _notes(plain: dict, residual: dict, scale: str) -> list[str]:
  """Observations the numbers call for, in words."""
  notes = []
  chance = math.log(10)
  if abs(plain['deeper'] - chance) < 0.02 * chance:
    notes.append(
      f'plain56 never left chance level (a loss of ln 10 = {chance:.3f}) '
      'within this budget: here the degradation shows as a failure to '
      "start training, the early part of the paper's Fig. 6, where "
      "plain-56's training error stays above plain-20's throughout. "
      'resnet56 has the same depth, initialisation scheme and learning rate '
      f'and does train (final loss {residual["deeper"]:.3f}): the same rate '
      'suffices at this depth once the shortcuts are there.'
    )
  if residual['difference'] > 0 and scale != 'full':
    notes.append(
      'resnet56 is still behind resnet20 at the end: with shortcuts the '
      'deeper net trains, but within a short budget it has not yet caught '
      "up; the paper's ordering (ResNet-56 below ResNet-20) is reached over "
      'many epochs, which only the full scale tests.'
    )
  return notes


def _equal_steps_table(groups: dict[str, list[Run]]) -> str:
  """Seed-averaged running train loss at a quarter, half, ... of the run."""
  curves = {name: mean_curve(groups[name], 'train/loss') for name in NAMES}
  steps = curves[NAMES[0]][0]
  marks = sorted({steps[max(0, round(f * len(steps)) - 1)] for f in (
    0.25, 0.5, 0.75, 1.0)})  # fmt: skip
  rows = []
  for t in marks:
    row = [str(int(t))]
    for name in NAMES:
      s, v = curves[name]
      row.append(f'{dict(zip(s, v, strict=True)).get(t, float("nan")):.3f}')
    rows.append(row)
  return rep.table(['step', *NAMES], rows)


def _plots(groups: dict[str, list[Run]], out_dir: str) -> list[tuple]:
  def series(names, key, transform=lambda v: v):
    return {
      n: [(s, [transform(x) for x in v]) for s, v in
          (r.curve(key) for r in groups[n])]
      for n in names
    }  # fmt: skip

  err = lambda v: 100 * (1 - v)
  train = rep.plot_curves(
    os.path.join(out_dir, 'degradation_train_loss.png'),
    [
      ('plain', series(NAMES[:2], 'train/loss')),
      ('residual', series(NAMES[2:], 'train/loss')),
    ],
    'step',
    'training loss (running mean)',
  )
  train_err = rep.plot_curves(
    os.path.join(out_dir, 'degradation_train_error.png'),
    [
      ('plain', series(NAMES[:2], 'train/accuracy', err)),
      ('residual', series(NAMES[2:], 'train/accuracy', err)),
    ],
    'step',
    'training error % (running)',
  )
  test = rep.plot_curves(
    os.path.join(out_dir, 'degradation_test_error.png'),
    [
      ('plain', series(NAMES[:2], 'eval/top1', err)),
      ('residual', series(NAMES[2:], 'eval/top1', err)),
    ],
    'step',
    'test error %',
  )
  return [
    (train, 'Training loss (running mean over each log interval).'),
    (train_err, 'Training error (running, augmented batches).'),
    (test, 'Test error at each evaluation.'),
  ]
