"""Hypothesis-driven ablations of the classic CNNs' claims.

Each module states a claim from a paper, the config variants that test it,
what is measured and how to read the result; `runner.run_experiment`
trains the variants (resumably) and writes a report with a verdict:

  python -m cnn_jax.experiments degradation --workdir=DIR --scale=cpu

See experiments/README.md for the list and the committed cpu-scale reports.
"""

from types import ModuleType

from cnn_jax.experiments import (
  degradation,
  gap_head,
  memory_profile,
  reductions,
  small_kernels,
)
from cnn_jax.experiments.runner import SCALES, run_experiment

EXPERIMENTS: dict[str, ModuleType] = {
  m.NAME: m
  for m in (degradation, small_kernels, reductions, gap_head, memory_profile)
}

__all__ = ['EXPERIMENTS', 'SCALES', 'get', 'run_experiment']


def get(name: str) -> ModuleType:
  """The experiment module called `name`; ValueError lists the known ones."""
  if name not in EXPERIMENTS:
    raise ValueError(
      f'Unknown experiment {name!r}; known: {", ".join(EXPERIMENTS)}.'
    )
  return EXPERIMENTS[name]
