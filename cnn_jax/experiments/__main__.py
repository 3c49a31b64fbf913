"""python -m cnn_jax.experiments NAME --workdir=DIR [--scale=cpu|full]
[--seeds=N] [--parallel=N] [--only=VARIANT] [--override=train.x=value]

Trains the experiment's unfinished variants and writes DIR/report.md.
Running the same command again resumes: finished variants are skipped and
a stopped one continues from its latest checkpoint.
"""

import ast
import sys

from absl import app, flags, logging

from cnn_jax import experiments
from cnn_jax.experiments import runner

_WORKDIR = flags.DEFINE_string('workdir', None, 'The experiment directory.')
_SCALE = flags.DEFINE_enum(
  'scale',
  'cpu',
  list(experiments.SCALES),
  'cpu: shortened schedules on data subsets, minutes on a CPU; full: the '
  "papers' recipes, for accelerators; tiny: seconds, for tests.",
)
_SEEDS = flags.DEFINE_integer(
  'seeds', None, "Seeds per variant (default: the experiment's, per scale)."
)
_PARALLEL = flags.DEFINE_integer(
  'parallel', 1, 'Variants trained at once, each in its own process.'
)
_DEVICES = flags.DEFINE_integer(
  'devices_per_worker',
  0,
  'With --parallel>1: GPUs per worker through CUDA_VISIBLE_DEVICES '
  '(0: do not restrict).',
)
_ONLY = flags.DEFINE_list(
  'only', [], 'Train only these variants (name or name/seedK); no report.'
)
_OVERRIDE = flags.DEFINE_multi_string(
  'override',
  [],
  'dotted.config.field=value set on every unfinished variant, e.g. '
  'train.stop_at_step=100 to split a sweep over short jobs.',
)
flags.mark_flag_as_required('workdir')


def _parse_override(text: str) -> tuple[str, object]:
  key, sep, value = text.partition('=')
  if not sep:
    raise app.UsageError(f'--override wants field=value, got {text!r}.')
  try:
    return key, ast.literal_eval(value)
  except (ValueError, SyntaxError):
    return key, value


def main(argv: list[str]) -> None:
  if len(argv) != 2:
    raise app.UsageError(
      'Name one experiment: ' + ', '.join(experiments.EXPERIMENTS)
    )
  try:
    experiment = experiments.get(argv[1])
  except ValueError as e:
    sys.exit(f'FATAL {e}')
  try:
    outcome = experiments.run_experiment(
      experiment,
      _WORKDIR.value,
      _SCALE.value,
      _SEEDS.value,
      only=_ONLY.value,
      overrides=dict(map(_parse_override, _OVERRIDE.value)),
      parallel=_PARALLEL.value,
      devices_per_worker=_DEVICES.value,
    )
  except (runner.SweepInterruptedError, runner.StaleResultError) as e:
    sys.exit(f'FATAL {type(e).__name__}: {e}')
  if outcome.report_path:
    logging.info('Report: %s', outcome.report_path)
    print(outcome.report_path)


if __name__ == '__main__':
  app.run(main)
