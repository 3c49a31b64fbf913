"""Runs an experiment's variants, resumably, and writes its report.

Layout of an experiment's workdir:

  DIR/report.md, DIR/*.png        the report, rewritten on every run
  DIR/<variant>/seed<k>/          one `train.train_and_evaluate` workdir
  DIR/<variant>/seed<k>/result.json   written once the variant finished

A variant with a result.json is finished and never trained again; one
without it is (re)started by `train_and_evaluate`, which resumes from the
latest checkpoint in its workdir. Every call of the train loop also
appends a line to attempts.jsonl there (start step, end step, seconds), so
a sweep split over several jobs still reports its total time.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import ml_collections
from absl import logging

from cnn_jax.experiments import report as report_lib

RESULT_FILE = 'result.json'
ATTEMPTS_FILE = 'attempts.jsonl'
SCALES = ('tiny', 'cpu', 'full')


# ------------------------------------------------------------- variants


@dataclasses.dataclass(frozen=True)
class Budget:
  """A shortened schedule on a data subset, for the cpu and tiny scales.

  Attributes:
    steps: optimizer steps (replaces the recipe's epochs).
    batch_size: global batch.
    train_limit: train on the first N train images only.
    eval_limit: test on the first N test images only.
    train_eval_limit: after training, evaluate (eval mode, no augmentation)
      on the first N train images, which lie inside the training subset;
      0 = skip.
    log_every: steps between train-metric rows (each the mean since the
      previous row).
    eval_every: steps between test evaluations; -1 = at the end only.
    learning_rate: peak rate; None keeps the recipe's.
    warmup_steps: linear warm-up from a tenth of the peak; 0 keeps the
      recipe's warm-up.
  """

  steps: int
  batch_size: int
  train_limit: int
  eval_limit: int
  train_eval_limit: int = 0
  log_every: int = 10
  eval_every: int = -1
  learning_rate: float | None = None
  warmup_steps: int = 0

  @property
  def steps_per_epoch(self) -> int:
    return max(self.train_limit // self.batch_size, 1)

  def apply(self, config: ml_collections.ConfigDict) -> None:
    """Shrinks `config` in place to this budget."""
    t = config.train
    t.num_train_steps = self.steps
    t.batch_size = self.batch_size
    t.eval_batch_size = min(256, max(self.batch_size, 32))
    t.log_every_steps = self.log_every
    t.eval_every_steps = self.eval_every
    config.data.train_limit = self.train_limit
    config.data.eval_limit = self.eval_limit
    # The data position is checkpointed too, so a killed run resumes exactly.
    config.checkpoint.every_steps = max(self.steps // 3, 1)
    config.checkpoint.keep = 1
    if self.learning_rate is not None:
      config.optim.learning_rate = self.learning_rate
      config.optim.lr_batch_size = 0
    if self.warmup_steps:
      config.optim.warmup_epochs = self.warmup_steps / self.steps_per_epoch
      config.optim.warmup_start_factor = 0.1

  def describe(self, dataset: str = 'CIFAR-10') -> str:
    """What this budget shrinks, in words, for the report's setup section."""
    images = self.steps * self.batch_size
    epochs = images / self.train_limit
    text = (
      f'{self.steps:,} steps of {self.batch_size} images ({images:,} '
      f'images, {epochs:.2f} epochs) on the first {self.train_limit:,} '
      f'images of the {dataset} train split; test metrics on the first '
      f'{self.eval_limit:,} test images'
    )
    if self.eval_every > 0:
      text += f' every {self.eval_every} steps'
    if self.train_eval_limit:
      text += (
        f'; at the end, an eval-mode pass over the first '
        f'{self.train_eval_limit:,} train images (no augmentation)'
      )
    if self.learning_rate is not None:
      text += f'; peak learning rate {self.learning_rate:g}'
    if self.warmup_steps:
      text += f', warmed up over {self.warmup_steps} steps'
    return text + '.'


@dataclasses.dataclass(frozen=True)
class Variant:
  """One trained configuration of an experiment, for one seed.

  Attributes:
    name: short name, also the workdir folder, e.g. 'plain56'.
    config: the complete train config (cnn_jax.config_lib).
    seed: written to config.seed (initialisation and data order).
    train_eval_examples: after training, evaluate on the first N train
      images; 0 = skip.
    meta: anything the analysis needs (e.g. {'depth': 56}).
  """

  name: str
  config: ml_collections.ConfigDict
  seed: int = 0
  train_eval_examples: int = 0
  meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def key(self) -> str:
    return f'{self.name}/seed{self.seed}'

  def seeded_config(self) -> ml_collections.ConfigDict:
    config = copy.deepcopy(self.config)
    config.seed = self.seed
    return config


def seeded(
  name: str,
  config: ml_collections.ConfigDict,
  seeds: int,
  train_eval_examples: int = 0,
  **meta: Any,
) -> list[Variant]:
  """The variant `name` once per seed 0..seeds-1."""
  return [
    Variant(name, config, s, train_eval_examples, dict(meta))
    for s in range(seeds)
  ]


@dataclasses.dataclass
class Run:
  """A finished variant: its result.json and (on demand) its metrics."""

  variant: Variant
  workdir: str
  result: dict

  @property
  def metrics(self) -> list[dict]:
    return read_metrics(self.workdir)

  def curve(self, key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of metric `key`, the last row per step winning."""
    by_step = {}
    for row in self.metrics:
      value = row.get(key)
      if isinstance(value, int | float):
        by_step[row['step']] = float(value)
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


@dataclasses.dataclass
class Analysis:
  """What an experiment's `analyse` returns for the report.

  Attributes:
    sections: markdown blocks (tables with their headings and notes).
    figures: (PNG file name inside the report folder, caption) pairs.
    verdict: the verdict on the hypothesis.
  """

  sections: list[str]
  figures: list[tuple[str, str]]
  verdict: report_lib.Verdict


class Experiment(Protocol):
  """What an experiment module provides (see degradation.py for one).

  NAME, TITLE, HYPOTHESIS (the claim and its paper), MEASURES (what is
  measured) and HOW_TO_READ are markdown strings; DEFAULT_SEEDS maps a
  scale to its default number of seeds.
  """

  NAME: str
  TITLE: str
  HYPOTHESIS: str
  MEASURES: str
  HOW_TO_READ: str
  DEFAULT_SEEDS: Mapping[str, int]

  def variants(self, scale: str, seeds: int) -> list[Variant]: ...

  def setup(self, scale: str) -> str: ...

  def analyse(self, runs: list[Run], scale: str, out_dir: str) -> Analysis: ...


# --------------------------------------------------------- one variant


def read_metrics(workdir: str) -> list[dict]:
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def planned_steps(config: ml_collections.ConfigDict) -> int:
  """The number of steps `train_and_evaluate` runs for `config`."""
  from cnn_jax import data as data_lib
  from cnn_jax import train

  info = data_lib.dataset_info(config.data)
  steps_per_epoch = max(info.num_train // config.train.batch_size, 1)
  return train.run_lengths(config, steps_per_epoch)[0]


def variant_dir(workdir: str, variant: Variant) -> str:
  return os.path.join(workdir, variant.name, f'seed{variant.seed}')


class StaleResultError(ValueError):
  pass


class SweepInterruptedError(RuntimeError):
  pass


def config_fingerprint(config: ml_collections.ConfigDict) -> str:
  """A short hash of a config's JSON, to tell a result's config apart."""
  text = config.to_json_best_effort(sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_result(vdir: str, variant: Variant | None = None) -> dict | None:
  """The variant's result.json, or None if it has not finished.

  Raises:
    StaleResultError: the result was produced by another config than
      `variant`'s (the experiment's variants changed since it ran).
  """
  path = os.path.join(vdir, RESULT_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    result = json.load(f)
  saved = result.get('config_fingerprint')
  if variant is not None and saved is not None:
    if saved != config_fingerprint(variant.seeded_config()):
      raise StaleResultError(
        f'{path} was produced by a different config than the current '
        f'{variant.key} (the experiment changed since it ran). Use a new '
        '--workdir, or delete that variant folder to retrain it.'
      )
  return result


def run_variant(
  variant: Variant,
  vdir: str,
  overrides: Mapping[str, Any] | None = None,
) -> dict | None:
  """Trains `variant` in `vdir` unless finished; returns its result or None.

  None means the train loop stopped at config.train.stop_at_step; the next
  call resumes from that checkpoint.

  Raises:
    SweepInterruptedError: the train loop stopped on SIGTERM/SIGINT (after
      saving a checkpoint), so the sweep should stop as well.
    StaleResultError: see `load_result`.
  """
  from cnn_jax import train

  result = load_result(vdir, variant)
  if result is not None:
    logging.info('%s: finished earlier; not retraining.', variant.key)
    return result
  config = variant.seeded_config()
  fingerprint = config_fingerprint(config)
  for dotted, value in (overrides or {}).items():
    _set(config, dotted, value)
  total = planned_steps(config)
  logging.info('%s: training %d steps in %s.', variant.key, total, vdir)
  tick = time.perf_counter()
  final = train.train_and_evaluate(config, vdir)
  seconds = time.perf_counter() - tick
  attempts = _record_attempt(vdir, final['step'], seconds)
  if final['step'] < total or 'top1' not in final:
    if final['step'] != config.train.get('stop_at_step', -1):
      # The train loop turns SIGTERM/SIGINT into a checkpoint and a normal
      # return; the sweep must stop there too, not start the next variant.
      raise SweepInterruptedError(
        f'{variant.key} stopped at step {final["step"]} of {total} on a '
        'signal; its checkpoint is saved. Run the same command again to '
        'resume.'
      )
    logging.info(
      '%s: stopped at step %d of %d; run again to resume.',
      variant.key,
      final['step'],
      total,
    )
    return None

  result = {
    'variant': variant.name,
    'seed': variant.seed,
    'config_fingerprint': fingerprint,
    'step': int(final['step']),
    'eval': {k: float(final[k]) for k in ('top1', 'top5', 'loss', 'count')},
    'attempts': attempts,
    'train_seconds': sum(a['seconds'] for a in attempts),
    **_summarise_metrics(read_metrics(vdir)),
  }
  if variant.train_eval_examples:
    result['train_eval'] = evaluate_checkpoint(
      config, vdir, 'train', variant.train_eval_examples
    )
  _write_json(os.path.join(vdir, RESULT_FILE), result)
  return result


def _set(config: ml_collections.ConfigDict, dotted: str, value: Any) -> None:
  *parents, leaf = dotted.split('.')
  node = config
  for part in parents:
    node = node[part]
  if leaf not in node:
    raise KeyError(f'override {dotted}: the config has no field {leaf!r}.')
  node[leaf] = value


def _record_attempt(vdir: str, end_step: int, seconds: float) -> list[dict]:
  """Appends this call's (start, end, seconds) and returns all attempts."""
  starts = [r['step'] for r in read_metrics(vdir) if 'num_params' in r]
  line = {
    'start_step': starts[-1] if starts else 0,
    'end_step': int(end_step),
    'seconds': round(seconds, 2),
  }
  path = os.path.join(vdir, ATTEMPTS_FILE)
  with open(path, 'a') as f:
    f.write(json.dumps(line) + '\n')
  with open(path) as f:
    return [json.loads(x) for x in f if x.strip()]


def _summarise_metrics(rows: list[dict]) -> dict:
  """Parameter count and median train throughput from metrics.jsonl."""
  params = [r['num_params'] for r in rows if 'num_params' in r]
  rates = [
    r['train/images_per_second']
    for r in rows
    if isinstance(r.get('train/images_per_second'), int | float)
  ]
  rates.sort()
  median = rates[len(rates) // 2] if rates else math.nan
  return {
    'num_params': int(params[-1]) if params else 0,
    'images_per_second': median,
  }


def evaluate_checkpoint(
  config: ml_collections.ConfigDict, vdir: str, split: str, limit: int
) -> dict[str, float]:
  """Evaluates the latest checkpoint in `vdir` on the first `limit`
  examples of `split`, in eval mode (running BN statistics, no dropout,
  no augmentation).

  Used for the training error on a fixed subset of the train split, which
  the running train metrics (augmented, train-mode BN, averaged while the
  weights move) only approximate.
  """
  import jax

  from cnn_jax import checkpoint as ckpt_lib
  from cnn_jax import data as data_lib
  from cnn_jax import optim, parallel, train

  config = copy.deepcopy(config)
  config.data.eval_split = split
  config.data.eval_limit = limit
  info = data_lib.dataset_info(config.data)
  mesh = parallel.make_mesh(config.parallel.get('num_devices') or None)
  model = train.build_model(config, info.num_classes)
  schedule = optim.build_schedule(config.optim, config.train.batch_size, 1, 1)
  tx = optim.build_optimizer(config.optim, schedule)
  state = train.create_train_state(model, tx, config, info.image_shape, mesh)
  checkpoints = ckpt_lib.Checkpointer(vdir, config)
  try:
    if checkpoints.latest_step() is None:
      raise FileNotFoundError(f'no checkpoint in {vdir} to evaluate.')
    state, _ = checkpoints.restore_latest(state)
  finally:
    checkpoints.close()
  eval_step = jax.jit(train.make_eval_step(model, info.mean, info.std))
  batches = data_lib.eval_iterator(config.data, config.train.eval_batch_size)
  return train.evaluate(eval_step, state.eval_variables(), batches, mesh)


def _write_json(path: str, value: dict) -> None:
  tmp = f'{path}.tmp'
  with open(tmp, 'w') as f:
    json.dump(value, f, indent=2)
  os.replace(tmp, path)  # Never a half-written result.json.


# ------------------------------------------------------ the experiment


@dataclasses.dataclass
class Outcome:
  """What `run_experiment` did: finished runs, pending keys, the report."""

  runs: list[Run]
  pending: list[str]
  report_path: str | None


def run_experiment(
  experiment: Experiment,
  workdir: str,
  scale: str = 'cpu',
  seeds: int | None = None,
  *,
  only: Sequence[str] = (),
  overrides: Mapping[str, Any] | None = None,
  parallel: int = 1,
  devices_per_worker: int = 0,
) -> Outcome:
  """Trains every unfinished variant, then writes DIR/report.md.

  Args:
    experiment: a module following `Experiment`.
    workdir: the experiment's directory (see the module docstring).
    scale: 'cpu' (shortened, on a data subset; minutes on a laptop CPU),
      'full' (the papers' recipes, for accelerators) or 'tiny' (seconds,
      for tests).
    seeds: seeds per variant; None = the experiment's default for `scale`.
    only: train only the variants with these keys ('name/seedK') or
      names, and write no report.
    overrides: dotted config fields set on every variant before training,
      e.g. {'train.stop_at_step': 100} to split runs over short jobs.
      They do not touch finished variants.
    parallel: variants trained at once, each in its own process; 1 trains
      them one after another in this process.
    devices_per_worker: with parallel > 1, give worker slot i the GPUs
      i*k .. i*k+k-1 through CUDA_VISIBLE_DEVICES; 0 leaves devices alone.

  Returns:
    An Outcome; its report_path is None while variants are unfinished.
  """
  if scale not in SCALES:
    raise ValueError(f'scale must be one of {SCALES}, got {scale!r}.')
  seeds = seeds or experiment.DEFAULT_SEEDS[scale]
  variants = experiment.variants(scale, seeds)
  _check_unique(variants)
  chosen = [v for v in variants if not only or _selected(v, only)]
  if only and not chosen:
    raise ValueError(
      f'--only={",".join(only)} matches no variant; the variants are '
      f'{", ".join(v.key for v in variants)}.'
    )
  os.makedirs(workdir, exist_ok=True)

  todo = [v for v in chosen if load_result(variant_dir(workdir, v), v) is None]
  if parallel > 1 and len(todo) > 1:
    _run_in_processes(
      experiment.NAME, workdir, scale, seeds, todo, overrides, parallel,
      devices_per_worker,
    )  # fmt: skip
  else:
    for v in todo:
      run_variant(v, variant_dir(workdir, v), overrides)

  runs, pending = [], []
  for v in variants:
    result = load_result(variant_dir(workdir, v), v)
    if result is None:
      pending.append(v.key)
    else:
      runs.append(Run(v, variant_dir(workdir, v), result))
  if only or pending:
    if pending and not only:
      logging.warning('Unfinished: %s; no report yet.', ', '.join(pending))
    return Outcome(runs, pending, None)
  path = write_report(experiment, runs, scale, seeds, workdir)
  return Outcome(runs, [], path)


def _check_unique(variants: Sequence[Variant]) -> None:
  keys = [v.key for v in variants]
  if len(set(keys)) != len(keys):
    raise ValueError(f'duplicate variant keys: {keys}')


def _selected(variant: Variant, only: Sequence[str]) -> bool:
  return variant.key in only or variant.name in only


def _run_in_processes(
  name, workdir, scale, seeds, todo, overrides, parallel, devices_per_worker
) -> None:
  """Trains `todo` with at most `parallel` child processes at a time."""
  queue = list(todo)
  active: dict[int, tuple[subprocess.Popen, Variant]] = {}
  failed = []
  while queue or active:
    for slot in range(parallel):
      if slot not in active and queue:
        variant = queue.pop(0)
        cmd = [
          sys.executable, '-m', 'cnn_jax.experiments', name,
          f'--workdir={workdir}', f'--scale={scale}', f'--seeds={seeds}',
          f'--only={variant.key}',
        ]  # fmt: skip
        for dotted, value in (overrides or {}).items():
          cmd.append(f'--override={dotted}={value!r}')
        active[slot] = (
          _start_worker(cmd, workdir, variant, slot, devices_per_worker),
          variant,
        )
    time.sleep(2)
    for slot, (proc, variant) in list(active.items()):
      if proc.poll() is not None:
        del active[slot]
        if proc.returncode:
          failed.append(f'{variant.key} (exit {proc.returncode})')
  if failed:
    raise RuntimeError(
      f'variants failed: {", ".join(failed)}; see the .log files in '
      f'{workdir}. Running the same command again resumes them.'
    )


def _start_worker(
  cmd: list[str], workdir: str, variant: Variant, slot: int, k: int
) -> subprocess.Popen:
  env = dict(os.environ)
  if k:
    env['CUDA_VISIBLE_DEVICES'] = ','.join(
      map(str, range(slot * k, slot * k + k))
    )
  log_path = os.path.join(workdir, f'{variant.name}.seed{variant.seed}.log')
  logging.info(
    '%s: child process in slot %d, log %s', variant.key, slot, log_path
  )
  with open(log_path, 'a') as log:
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)


# --------------------------------------------------------------- report


def write_report(
  experiment: Experiment,
  runs: list[Run],
  scale: str,
  seeds: int,
  workdir: str,
) -> str:
  """Writes DIR/report.md (and its PNGs) from finished runs; returns path."""
  analysis = experiment.analyse(runs, scale, workdir)
  lines = [
    f'# {experiment.TITLE}',
    '',
    f'Experiment `{experiment.NAME}`, scale `{scale}`, '
    + (f'{seeds} seed(s) per variant' if runs else 'nothing trained')
    + '. Regenerate with:',
    '',
    '```',
    f'python -m cnn_jax.experiments {experiment.NAME} --workdir=DIR '
    f'--scale={scale} --seeds={seeds}',
    '```',
    '',
    '## Hypothesis',
    '',
    experiment.HYPOTHESIS.strip(),
    '',
    '## Setup',
    '',
    experiment.setup(scale).strip(),
    '',
    '## What is measured',
    '',
    experiment.MEASURES.strip(),
    '',
    '## Results',
    '',
  ]
  for section in analysis.sections:
    lines += [section.strip(), '']
  for file_name, caption in analysis.figures:
    lines += [f'![{caption}]({file_name})', '', f'*{caption}*', '']
  train_time = sum(r.result.get('train_seconds', 0.0) for r in runs)
  if runs:
    lines += [
      f'Training time of all variants together: {train_time / 60:.1f} '
      'min of wall clock (as measured, on whatever else shared the '
      'machine).',
      '',
    ]
  lines += [
    '## How to read it',
    '',
    experiment.HOW_TO_READ.strip(),
    '',
    '## Verdict',
    '',
    analysis.verdict.line(),
    '',
  ]
  path = os.path.join(workdir, 'report.md')
  with open(path, 'w') as f:
    f.write('\n'.join(lines))
  logging.info('Wrote %s', path)
  return path


def by_name(runs: Sequence[Run]) -> dict[str, list[Run]]:
  """Runs grouped by variant name, in the order the variants were listed."""
  out: dict[str, list[Run]] = {}
  for run in runs:
    out.setdefault(run.variant.name, []).append(run)
  return out
