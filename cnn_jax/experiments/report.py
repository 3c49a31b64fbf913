"""Pieces of an experiment report: statistics, tables, plots and verdicts.

Everything here is a pure function of numbers already measured, so the
verdict printed in a report can be recomputed (and tested) from the
results files alone.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Mapping, Sequence

import numpy as np

OUTCOMES = (
  'supports',
  'partly supports',
  'does not support',
  'inconclusive',
)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (NaN for fewer than two values)."""
  x = np.asarray(values, np.float64)
  if x.size == 0:
    return math.nan, math.nan
  std = float(x.std(ddof=1)) if x.size > 1 else math.nan
  return float(x.mean()), std


def pm(values: Sequence[float], digits: int = 2, scale: float = 1.0) -> str:
  """'mean ± std' of `values` times `scale`; only the mean for one value."""
  mean, std = mean_std([v * scale for v in values])
  if math.isnan(mean):
    return 'n/a'
  if math.isnan(std):
    return f'{mean:.{digits}f}'
  return f'{mean:.{digits}f} ± {std:.{digits}f}'


def count(n: float) -> str:
  """An integer count with thousands separators."""
  return f'{int(n):,}'


def millions(n: float, digits: int = 2) -> str:
  return f'{n / 1e6:.{digits}f}M'


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
  """A GitHub markdown table; numbers are right-aligned."""
  cells = [[str(c) for c in row] for row in rows]
  align = []
  for i in range(len(header)):
    numeric = all(_numeric(row[i]) for row in cells) and cells
    align.append('---:' if numeric else '---')
  lines = [
    '| ' + ' | '.join(header) + ' |',
    '|' + '|'.join(align) + '|',
    *('| ' + ' | '.join(row) + ' |' for row in cells),
  ]
  return '\n'.join(lines)


_NUMBER = re.compile(r'^[-+]?[\d,]*\.?\d+(%|M|G|x)?( ± [\d,]*\.?\d+)?$')


def _numeric(text: str) -> bool:
  return bool(_NUMBER.match(text))


@dataclasses.dataclass(frozen=True)
class Verdict:
  """Whether a measurement supports a hypothesis, and how strongly.

  Attributes:
    outcome: one of OUTCOMES.
    strength: 'exact' (counted, not measured), 'strong', 'moderate' or
      'weak'.
    reason: the numbers behind the outcome, in one sentence.
  """

  outcome: str
  strength: str
  reason: str

  def __post_init__(self):
    if self.outcome not in OUTCOMES:
      raise ValueError(f'outcome {self.outcome!r} not in {OUTCOMES}')

  def line(self) -> str:
    """The report's verdict line."""
    return (
      f'**Verdict: the measurement {self.outcome} the hypothesis '
      f'({self.strength}).** {self.reason}'
    )


def strength_from_spread(
  difference: float, spreads: Sequence[float], seeds: int
) -> str:
  """'strong', 'moderate' or 'weak' from an effect and the seed spread.

  With two or more seeds per variant, the effect is compared with the
  larger of the variants' seed standard deviations: at least 3 of them is
  strong, at least 1 moderate. A single seed gives no spread to compare
  with, so the strength is at most 'weak' on that ground alone.
  """
  finite = [s for s in spreads if not math.isnan(s)]
  if seeds < 2 or not finite:
    return 'weak'
  noise = max(max(finite), 1e-12)
  ratio = abs(difference) / noise
  if ratio >= 3:
    return 'strong'
  if ratio >= 1:
    return 'moderate'
  return 'weak'


def weakest(*strengths: str) -> str:
  order = ('weak', 'moderate', 'strong', 'exact')
  return min(strengths, key=order.index)


# ------------------------------------------------------------------ plots


def pyplot():
  """matplotlib.pyplot on the Agg backend (files only, no display)."""
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  return plt


def plot_curves(
  path: str,
  panels: Sequence[tuple[str, Mapping[str, Sequence[tuple]]]],
  xlabel: str,
  ylabel: str,
  title: str = '',
  logy: bool = False,
) -> str:
  """One panel per (title, {label: [(steps, values) per seed]}).

  Each label is drawn as the mean over its seeds (on the steps all seeds
  share) with a band from the lowest to the highest seed.

  Returns:
    The file name of the written PNG (relative to its directory).
  """
  plt = pyplot()
  fig, axes = plt.subplots(
    1, len(panels), figsize=(5.0 * len(panels), 3.6), squeeze=False
  )
  for ax, (panel_title, series) in zip(axes[0], panels, strict=True):
    for label, runs in series.items():
      steps, values = _align(runs)
      if not len(steps):
        continue
      (line,) = ax.plot(steps, values.mean(0), label=label, linewidth=1.5)
      if values.shape[0] > 1:
        ax.fill_between(
          steps,
          values.min(0),
          values.max(0),
          color=line.get_color(),
          alpha=0.2,
        )
    ax.set_title(panel_title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
      ax.set_yscale('log')
    ax.grid(alpha=0.3)
    ax.legend()
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return os.path.basename(path)


def _align(runs: Sequence[tuple]) -> tuple[np.ndarray, np.ndarray]:
  """Restricts seeds' curves to their common steps: (steps, (seeds, n))."""
  common = None
  for steps, _ in runs:
    common = set(steps) if common is None else common & set(steps)
  steps = np.array(sorted(common or ()))
  values = [[dict(zip(s, v, strict=True))[t] for t in steps] for s, v in runs]
  return steps, np.asarray(values, np.float64).reshape(len(runs), -1)


def plot_bars(
  path: str,
  groups: Sequence[tuple[str, Sequence[str], Sequence[float]]],
  ylabel: str,
  title: str = '',
  logy: bool = False,
) -> str:
  """One panel per (title, bar labels, bar heights[, error bars]).

  Returns:
    The file name of the written PNG (relative to its directory).
  """
  plt = pyplot()
  fig, axes = plt.subplots(
    1, len(groups), figsize=(4.2 * len(groups), 3.6), squeeze=False
  )
  for ax, (panel_title, labels, heights, *errors) in zip(
    axes[0], groups, strict=True
  ):
    yerr = [0 if math.isnan(e) else e for e in errors[0]] if errors else None
    ax.bar(range(len(heights)), heights, yerr=yerr, capsize=4, color='tab:blue')
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha='right')
    ax.set_title(panel_title)
    ax.set_ylabel(ylabel)
    if logy:
      ax.set_yscale('log')
    ax.grid(alpha=0.3, axis='y')
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return os.path.basename(path)
