"""The train loop: set-up, data, state, compile, loop, eval, checkpoint.

`train_and_evaluate(config, workdir)` is the one entry point; `main.py`,
the experiments and the tests all call it.
"""

from __future__ import annotations

import collections
import functools
import json
import logging as logging_std
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from cnn_jax import checkpoint as ckpt_lib
from cnn_jax import data as data_lib
from cnn_jax import errors, models, optim, parallel
from cnn_jax import metrics as metrics_lib

PyTree = Any

# How many train or eval steps the host dispatches before it waits for the
# oldest one. Two keep the devices busy while the host prepares the next
# batch. Unbounded run-ahead deadlocked XLA:CPU with several devices (jax
# 0.10.2, 8 host devices on 2 cores, an eval of 79 batches): some devices'
# launches waited on their device's in-flight limit, the others waited in an
# all-reduce for them, and XLA aborted after 40 s with 'Expected 8 threads
# to join the rendezvous, but only 7 of them arrived on time'.
MAX_STEPS_IN_FLIGHT = 2


class TrainState(flax.struct.PyTreeNode):
  """Everything that changes during training, replicated on every device."""

  step: jax.Array
  params: PyTree
  batch_stats: PyTree
  opt_state: PyTree
  rng: jax.Array
  ema_params: PyTree | None = None

  def eval_variables(self) -> dict[str, PyTree]:
    params = self.params if self.ema_params is None else self.ema_params
    return {'params': params, 'batch_stats': self.batch_stats}


class NonFiniteLossError(RuntimeError):
  pass


# ---------------------------------------------------------------- set-up


def build_model(config: ml_collections.ConfigDict, num_classes: int):
  """The model named by `config.model`, with the parallel BN setting."""
  fields = dict(config.model.get('fields', {}))
  if config.parallel.get('bn_virtual_batch_size'):
    fields['bn_virtual_batch_size'] = config.parallel.bn_virtual_batch_size
  try:
    return models.create_model(
      config.model.name,
      num_classes=num_classes,
      dtype=compute_dtype(config.model.dtype),
      **fields,
    )
  except (ValueError, TypeError) as e:
    # An unknown name or field; the message lists what exists.
    raise errors.ConfigError(
      f'--config.model.name={config.model.name!r} with fields '
      f'{sorted(fields)}: {e}'
    ) from None


def compute_dtype(name: str) -> jnp.dtype:
  """The model's computation dtype, from --config.model.dtype."""
  allowed = ('float32', 'bfloat16', 'float16', 'float64')
  if name not in allowed:
    raise errors.ConfigError(
      f'--config.model.dtype={name!r} is not a computation dtype; use one '
      f'of {", ".join(allowed)}.'
    )
  return jnp.dtype(name)


def check_virtual_batch(config: ml_collections.ConfigDict, devices: int):
  """Fails early when BatchNorm's virtual batch does not divide a device's."""
  k = config.parallel.get('bn_virtual_batch_size') or 0
  per_device = config.train.batch_size // devices
  if k and per_device % k:
    raise errors.ConfigError(
      f'--config.parallel.bn_virtual_batch_size={k} does not divide the '
      f'{per_device} examples each device gets (batch '
      f'{config.train.batch_size} over {devices} devices); choose a divisor '
      f'of {per_device}.'
    )


def run_lengths(
  config: ml_collections.ConfigDict, steps_per_epoch: int
) -> tuple[int, int, int]:
  """Total, eval-interval and checkpoint-interval lengths in steps."""
  t = config.train
  total = t.num_train_steps
  if total <= 0:
    total = math.ceil(t.num_epochs * steps_per_epoch)
  eval_every = t.eval_every_steps if t.eval_every_steps > 0 else total
  ckpt_every = config.checkpoint.every_steps
  ckpt_every = ckpt_every if ckpt_every > 0 else total
  return total, eval_every, ckpt_every


class _OrbaxInfoFilter(logging_std.Filter):
  """Drops orbax's per-save INFO lines (dozens each save); keeps warnings."""

  def filter(self, record):
    return record.levelno > logging_std.INFO or (
      f'{os.sep}orbax{os.sep}' not in record.pathname
    )


def quiet_orbax_logs() -> None:
  absl_logger = logging.get_absl_logger()
  if not any(isinstance(f, _OrbaxInfoFilter) for f in absl_logger.filters):
    absl_logger.addFilter(_OrbaxInfoFilter())


def save_run_record(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes the resolved config and library versions into the workdir."""
  if jax.process_index() != 0:
    return
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    f.write(config.to_json_best_effort(indent=2))
  with open(os.path.join(workdir, 'versions.json'), 'w') as f:
    json.dump(library_versions(), f, indent=2)


def library_versions() -> dict[str, str]:
  from importlib import metadata

  names = (
    'cnn_jax',
    'jax',
    'jaxlib',
    'flax',
    'optax',
    'orbax-checkpoint',
    'grain',
    'tensorflow-datasets',
    'ml-collections',
    'numpy',
  )
  out = {'python': sys.version.split()[0]}
  for name in names:
    try:
      out[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      out[name] = 'not installed'
  out['backend'] = jax.default_backend()
  out['devices'] = f'{jax.device_count()} x {jax.devices()[0].device_kind}'
  return out


# ----------------------------------------------------------------- state


def create_train_state(
  model,
  tx: optax.GradientTransformation,
  config: ml_collections.ConfigDict,
  image_shape: tuple[int, ...],
  mesh: jax.sharding.Mesh,
) -> TrainState:
  """Initialises the state directly into replicated device memory."""
  init_rng, train_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  # The 'rbg' generator compiles in about a second for a whole ResNet, where
  # the default threefry takes about one second per parameter shape on CPU.
  init_rng = jax.random.key(
    jax.random.randint(init_rng, (), 0, 2**31 - 1), impl='rbg'
  )
  dummy = jnp.zeros((1, *image_shape), jnp.float32)

  def init():
    variables = model.init(
      {'params': init_rng, 'dropout': init_rng}, dummy, train=False
    )
    params = variables['params']
    ema = params if config.optim.get('ema_decay') else None
    return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      batch_stats=variables.get('batch_stats', {}),
      opt_state=tx.init(params),
      rng=train_rng,
      ema_params=ema,
    )

  return jax.jit(init, out_shardings=parallel.replicated(mesh))()


def _load_initial_variables(state: TrainState, directory: str) -> TrainState:
  """Starts from converted or exported weights instead of a fresh init."""
  like = {'params': state.params, 'batch_stats': state.batch_stats}
  loaded = ckpt_lib.load_variables(directory, like)
  logging.info('Initialised params and batch_stats from %s.', directory)
  ema = loaded['params'] if state.ema_params is not None else None
  return state.replace(
    params=loaded['params'], batch_stats=loaded['batch_stats'], ema_params=ema
  )


def count_params(params: PyTree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


# ------------------------------------------------------------ the steps


def make_train_step(
  model,
  tx: optax.GradientTransformation,
  schedule: optim.Schedule,
  config: ml_collections.ConfigDict,
  mean,
  std,
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """One SGD step on a global batch; the loss is the global-batch mean."""
  smoothing = config.optim.label_smoothing
  aux_weight = config.train.aux_loss_weight
  ema_decay = config.optim.get('ema_decay', 0.0)

  def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    images = data_lib.normalize(batch['image'], mean, std)
    labels = batch['label']
    # Keys come from the one seed, the step and (inside the model, through
    # the global dropout mask) the example, so masks differ across steps and
    # devices yet repeat exactly from run to run.
    dropout_rng = jax.random.fold_in(state.rng, state.step)

    def loss_fn(params):
      logits, updates = model.apply(
        {'params': params, 'batch_stats': state.batch_stats},
        images,
        train=True,
        rngs={'dropout': dropout_rng},
        mutable=['batch_stats', 'aux_logits'],
      )
      main_loss = optim.cross_entropy(logits, labels, smoothing).mean()
      loss = main_loss
      for aux in jax.tree.leaves(updates.get('aux_logits', {})):
        loss += aux_weight * optim.cross_entropy(aux, labels, smoothing).mean()
      return loss, (main_loss, logits, updates.get('batch_stats', {}))

    grads, (main_loss, logits, batch_stats) = jax.grad(loss_fn, has_aux=True)(
      state.params
    )
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = state.ema_params
    if ema is not None:
      ema = jax.tree.map(
        lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, ema, params
      )
    new_state = state.replace(
      step=state.step + 1,
      params=params,
      batch_stats=batch_stats,
      opt_state=opt_state,
      ema_params=ema,
    )
    metrics = {
      'loss': main_loss,
      'accuracy': metrics_lib.topk_correct(logits, labels, 1).mean(),
      'learning_rate': schedule(state.step),
      'grad_norm': optax.tree.norm(grads),
    }
    return new_state, metrics

  return train_step


def make_eval_step(model, mean, std) -> Callable[[dict, dict], dict]:
  """Sums of loss and top-1/top-5 hits over the unmasked examples."""

  def eval_step(variables: dict, batch: dict) -> dict:
    images = data_lib.normalize(batch['image'], mean, std)
    logits = model.apply(variables, images, train=False)
    labels = batch['label']
    mask = batch['mask'].astype(jnp.float32)
    loss = optim.cross_entropy(logits, labels)
    return {
      'count': mask.sum(),
      'loss': (loss * mask).sum(),
      'top1': (metrics_lib.topk_correct(logits, labels, 1) * mask).sum(),
      'top5': (metrics_lib.topk_correct(logits, labels, 5) * mask).sum(),
    }

  return eval_step


def _add_on_host(totals: dict[str, float], sums: dict) -> None:
  for name, value in sums.items():
    totals[name] = totals.get(name, 0.0) + float(np.asarray(value))


def evaluate(
  eval_step: Callable,
  variables: dict,
  batches: Iterator[dict],
  mesh: jax.sharding.Mesh,
) -> dict[str, float]:
  """Runs the complete eval split; padding is masked, never counted.

  Each batch's sums are fetched once the next batch has been dispatched and
  added on the host in float64, so counts stay exact on any split size.
  """
  totals: dict[str, float] = {}
  in_flight = collections.deque()
  for local in batches:
    in_flight.append(eval_step(variables, parallel.global_batch(local, mesh)))
    if len(in_flight) >= MAX_STEPS_IN_FLIGHT:
      _add_on_host(totals, in_flight.popleft())
  if not in_flight and not totals:
    raise ValueError('the eval split yielded no batches.')
  while in_flight:
    _add_on_host(totals, in_flight.popleft())
  count = totals['count']
  return {
    'top1': totals['top1'] / count,
    'top5': totals['top5'] / count,
    'loss': totals['loss'] / count,
    'count': count,
  }


# ------------------------------------------------------------ preemption


class _StopRequest:
  """Turns SIGTERM/SIGINT into a flag the loop polls between steps."""

  def __init__(self):
    self.signal = None
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    self.signal = signum
    logging.warning(
      'Received %s: saving a checkpoint and stopping.',
      signal.Signals(signum).name,
    )

  def requested(self) -> bool:
    flag = self.signal is not None
    if jax.process_count() > 1:
      # Every process must stop at the same step, or the collectives hang.
      from jax.experimental import multihost_utils

      flag = bool(np.any(multihost_utils.process_allgather(np.array(flag))))
    return flag

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


# ------------------------------------------------------------- the loop


def _log_progress(
  step, total, history, timed_steps, batch_size, seconds, writer
):
  """Checks the losses since the last log for NaN/Inf, then writes means.

  `history` holds (step, metrics) pairs still on device; fetching them here,
  not every step, keeps the host from waiting on each step.
  """
  fetched = jax.device_get(history)
  for s, m in fetched:
    if not np.isfinite(m['loss']):
      raise NonFiniteLossError(
        f'non-finite loss {m["loss"]} at step {s}; stopping. Lower '
        'config.optim.learning_rate or set config.optim.grad_clip_norm.'
      )
  means = {
    f'train/{k}': float(np.mean([m[k] for _, m in fetched]))
    for k in fetched[-1][1]
  }
  # The rate of the last step, not a mean across a decay boundary.
  means['train/learning_rate'] = float(fetched[-1][1]['learning_rate'])
  seconds_per_step = seconds / max(timed_steps, 1)
  rate = batch_size / max(seconds_per_step, 1e-9)
  if timed_steps:
    means['train/images_per_second'] = rate
  writer.write(step, means)
  eta = (total - step) * seconds_per_step
  logging.info(
    'step %d/%d  loss %.4f  lr %.5g  %.1f img/s  ETA %s',
    step,
    total,
    means['train/loss'],
    means['train/learning_rate'],
    rate,
    time.strftime('%H:%M:%S', time.gmtime(eta)),
  )


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str
) -> dict[str, float]:
  """Trains `config` in `workdir`, resuming from its latest checkpoint.

  Args:
    config: a resolved experiment config (see configs/ and config_lib).
    workdir: where checkpoints, metrics.jsonl, TensorBoard events, the
      resolved config and the library versions go.

  Returns:
    The final eval metrics ('top1', 'top5', 'loss', 'count') and 'step'.
  """
  # Set-up.
  quiet_orbax_logs()
  parallel.maybe_initialize_distributed(config.parallel)
  workdir = os.path.abspath(workdir)
  mesh = parallel.make_mesh(config.parallel.get('num_devices') or None)
  batch_size = config.train.batch_size
  parallel.check_batch_size(batch_size, mesh, '--config.train.batch_size')
  parallel.check_batch_size(
    config.train.eval_batch_size, mesh, '--config.train.eval_batch_size'
  )
  check_virtual_batch(config, mesh.size)
  save_run_record(config, workdir)
  writer = metrics_lib.MetricWriter(workdir)

  # Data.
  info = data_lib.dataset_info(config.data)
  train_iter = data_lib.train_iterator(config.data, batch_size, config.seed)
  steps_per_epoch = train_iter.steps_per_epoch
  total, eval_every, ckpt_every = run_lengths(config, steps_per_epoch)
  eval_batches = functools.partial(
    data_lib.eval_iterator, config.data, config.train.eval_batch_size
  )

  # State.
  model = build_model(config, info.num_classes)
  schedule = optim.build_schedule(
    config.optim, batch_size, steps_per_epoch, total
  )
  tx = optim.build_optimizer(config.optim, schedule)
  state = create_train_state(model, tx, config, info.image_shape, mesh)
  checkpoints = ckpt_lib.Checkpointer(workdir, config)
  state, data_state = checkpoints.restore_latest(state)
  if data_state is not None:
    train_iter.set_state(data_state)
  elif config.checkpoint.init_from:
    state = _load_initial_variables(state, config.checkpoint.init_from)
  start = int(state.step)
  logging.info(
    'Model %s: %s parameters; %d devices (%d processes); %d steps of %d '
    'images, %d steps per epoch; starting at step %d.',
    config.model.name,
    f'{count_params(state.params):,}',
    mesh.size,
    jax.process_count(),
    total,
    batch_size,
    steps_per_epoch,
    start,
  )
  writer.drop_rows_after(start)
  writer.write(start, {'num_params': count_params(state.params)})

  # Compile.
  replicated = parallel.replicated(mesh)
  train_step = jax.jit(
    make_train_step(model, tx, schedule, config, info.mean, info.std),
    donate_argnums=0,
    out_shardings=(replicated, replicated),
  )
  eval_step = jax.jit(
    make_eval_step(model, info.mean, info.std), out_shardings=replicated
  )

  def run_eval(step):
    result = evaluate(eval_step, state.eval_variables(), eval_batches(), mesh)
    writer.write(step, {f'eval/{k}': v for k, v in result.items()})
    logging.info(
      'eval at step %d: top-1 %.4f  top-5 %.4f  loss %.4f  (%d examples)',
      step,
      result['top1'],
      result['top5'],
      result['loss'],
      result['count'],
    )
    return result

  if config.train.eval_only or start >= total:
    result = run_eval(start)
    writer.close()
    checkpoints.close()
    return {**result, 'step': start}

  # Loop.
  started = time.perf_counter()
  history, result = [], None
  in_flight = collections.deque()
  tick, tick_step = time.perf_counter(), start
  with _StopRequest() as stop:
    step = start
    while step < total:
      batch = parallel.global_batch(next(train_iter), mesh)
      state, step_metrics = train_step(state, batch)
      step += 1
      history.append((step, step_metrics))
      in_flight.append(step_metrics)
      if len(in_flight) >= MAX_STEPS_IN_FLIGHT:
        jax.block_until_ready(in_flight.popleft())
      if step == start + 1:
        # Keep compilation out of the throughput figures.
        jax.block_until_ready(state)
        logging.info(
          'first step (with compilation) took %.1f s',
          time.perf_counter() - tick,
        )
        tick, tick_step = time.perf_counter(), step
      log_now = step % config.train.log_every_steps == 0 or step == total
      stopping = stop.requested() or step == config.train.stop_at_step
      if log_now or stopping or step % ckpt_every == 0:
        jax.block_until_ready(history)  # time finished steps, not dispatch
        seconds = time.perf_counter() - tick
        _log_progress(
          step, total, history, step - tick_step, batch_size, seconds, writer
        )
        history, tick, tick_step = [], time.perf_counter(), step
      if step % eval_every == 0 or step == total:
        result = run_eval(step)
      if step % ckpt_every == 0 or step == total or stopping:
        checkpoints.save(
          step,
          state,
          train_iter.get_state(),
          metrics=result if step % eval_every == 0 or step == total else None,
        )
      if stopping:
        logging.warning(
          'Stopped at step %d on request; resume by running '
          'the same command again.',
          step,
        )
        break

  # Summary.
  checkpoints.close()
  writer.flush()
  writer.close()
  summary = {
    **(result or {}),
    'step': step,
    'num_params': count_params(state.params),
    'train_seconds': round(time.perf_counter() - started, 1),
  }
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'summary.json'), 'w') as f:
      json.dump(summary, f, indent=2)
  logging.info(
    'Finished at step %d of %d in %.0f s: %s',
    step,
    total,
    summary['train_seconds'],
    ', '.join(f'{k} {v:.4g}' for k, v in (result or {}).items()),
  )
  return summary
