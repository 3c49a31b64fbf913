"""Orbax checkpoints of the whole train state, the data position and config.

A checkpoint holds params, batch_stats, the optimizer state, the step, the
RNG, the EMA weights if any (all one pytree), the data iterator's position
and the resolved config. Orbax writes each step into a temporary directory
and renames it when complete, so a crash or kill -9 mid-save leaves the
previous checkpoint intact; the half-written directory is removed at the
next start. Restoring uses the shardings of the state it restores into,
so a checkpoint saved on 8 devices loads on 1.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint import checkpoint_managers as policies

PyTree = Any

# Config sections that must agree for a saved state to fit the current one.
_STATE_DEFINING = ('model', 'optim.name', 'optim.ema_decay')


class CheckpointMismatchError(ValueError):
  pass


def _lookup(config: dict, dotted: str):
  node = config
  for part in dotted.split('.'):
    node = node.get(part) if isinstance(node, dict) else None
  return node


def _plain(config: ml_collections.ConfigDict) -> dict:
  return json.loads(config.to_json_best_effort())


def _leaves_by_name(tree: PyTree) -> dict[str, Any]:
  """Leaves keyed by a path string that ignores dict-vs-attribute keys."""

  def name(key):
    for attr in ('name', 'key', 'idx'):
      if hasattr(key, attr):
        return str(getattr(key, attr))
    return str(key)

  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {'/'.join(name(k) for k in path): leaf for path, leaf in flat}


def _describe(config: dict) -> str:
  model = config.get('model', {})
  fields = model.get('fields') or {}
  extra = ', '.join(f'{k}={v}' for k, v in sorted(fields.items()))
  name = f'{model.get("name")}({extra})' if extra else model.get('name')
  return f'model {name}, optimizer {_lookup(config, "optim.name")}'


def _first_difference(path: str, saved: Any, asked: Any) -> tuple:
  """The first dotted field at or below `path` whose values differ."""
  if isinstance(saved, dict) and isinstance(asked, dict):
    for key in sorted(set(saved) | set(asked)):
      if saved.get(key) != asked.get(key):
        return _first_difference(
          f'{path}.{key}', saved.get(key), asked.get(key)
        )
  return path, saved, asked


class Checkpointer:
  """Saves and restores train state in `workdir/checkpoints`.

  Keeps the last `config.checkpoint.keep` checkpoints plus the one with the
  best eval top-1. Saves are asynchronous: the call returns once the arrays
  are copied off the devices, and the disk write overlaps training.
  """

  def __init__(self, workdir: str, config: ml_collections.ConfigDict):
    self.directory = os.path.join(workdir, 'checkpoints')
    self._config = _plain(config)
    keep = config.checkpoint.keep
    policy = policies.AnyPreservationPolicy(
      [
        policies.LatestN(n=keep),
        policies.BestN(
          get_metric_fn=lambda m: m['top1'],
          reverse=False,
          n=1,
          keep_checkpoints_without_metrics=False,
        ),
      ]
    )
    options = ocp.CheckpointManagerOptions(
      preservation_policy=policy,
      enable_async_checkpointing=config.checkpoint.get('async_save', True),
      cleanup_tmp_directories=True,
      create=True,
    )
    self.manager = ocp.CheckpointManager(
      self.directory,
      options=options,
      # Named up front so that metadata and partial restores work in a
      # fresh process, before any save has registered the handlers.
      item_handlers={
        'state': ocp.StandardCheckpointHandler(),
        'data': ocp.JsonCheckpointHandler(),
        'config': ocp.JsonCheckpointHandler(),
      },
    )

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(
    self,
    step: int,
    state: PyTree,
    data_state: dict,
    metrics: dict | None = None,
  ) -> None:
    args = ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=ocp.args.JsonSave(data_state),
      config=ocp.args.JsonSave(self._config),
    )
    if metrics is not None:
      metrics = {k: float(v) for k, v in metrics.items()}
    self.manager.save(step, args=args, metrics=metrics, force=True)

  def saved_config(self, step: int) -> dict:
    restored = self.manager.restore(
      step, args=ocp.args.Composite(config=ocp.args.JsonRestore())
    )
    return restored['config']

  def check_compatible(self, step: int, state: PyTree) -> None:
    """Stops with a clear error if the saved state cannot fill `state`."""
    saved = self.saved_config(step)
    for key in _STATE_DEFINING:
      if _lookup(saved, key) != _lookup(self._config, key):
        path, was, now = _first_difference(
          key, _lookup(saved, key), _lookup(self._config, key)
        )
        raise CheckpointMismatchError(
          f'{self.directory} (step {step}) holds {_describe(saved)}, but '
          f'the config asks for {_describe(self._config)} ({path} differs: '
          f'{was!r} saved, {now!r} asked). Use a new --workdir, or restore '
          'the original config.'
        )
    meta = self.manager.item_metadata(step)['state']
    want = _leaves_by_name(state)
    have = _leaves_by_name(meta)
    for name, leaf in want.items():
      found = have.get(name)
      if found is None or tuple(found.shape) != tuple(np.shape(leaf)):
        got = 'missing' if found is None else f'shape {tuple(found.shape)}'
        raise CheckpointMismatchError(
          f'{self.directory} (step {step}): {name} is {got} in the '
          f'checkpoint but has shape {tuple(np.shape(leaf))} in the model '
          f'({_describe(self._config)}). Use a new --workdir.'
        )

  def restore(self, step: int, state: PyTree) -> tuple[PyTree, dict]:
    """Restores step `step` into the shapes and shardings of `state`."""
    self.check_compatible(step, state)
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    restored = self.manager.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target),
        data=ocp.args.JsonRestore(),
      ),
    )
    return restored['state'], restored['data']

  def restore_latest(self, state: PyTree) -> tuple[PyTree, dict | None]:
    """The latest complete checkpoint, or `state` and None if none exists."""
    step = self.latest_step()
    if step is None:
      return state, None
    logging.info('Resuming from %s at step %d.', self.directory, step)
    return self.restore(step, state)

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def save_variables(
  directory: str, variables: PyTree, config: dict | None = None
) -> None:
  """Writes model variables alone (params, batch_stats), e.g. converted ones.

  `load_variables` reads them back; the eval mode loads them through
  `config.checkpoint.init_from`.
  """
  directory = os.path.abspath(directory)
  with ocp.StandardCheckpointer() as saver:
    saver.save(os.path.join(directory, 'variables'), variables, force=True)
  if config is not None and jax.process_index() == 0:
    with open(os.path.join(directory, 'model.json'), 'w') as f:
      json.dump(config, f, indent=2)


def load_variables(directory: str, like: PyTree) -> PyTree:
  """Reads variables written by `save_variables` into the layout of `like`."""
  path = os.path.join(os.path.abspath(directory), 'variables')
  if not os.path.isdir(path):
    raise FileNotFoundError(
      f'no variables checkpoint at {path}; expected a directory written by '
      'cnn_jax.convert or cnn_jax.checkpoint.save_variables.'
    )
  target = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
  with ocp.StandardCheckpointer() as loader:
    return loader.restore(path, target)
