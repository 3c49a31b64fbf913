"""Accuracy counting and the one metric writer of a run."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping

import jax
import jax.numpy as jnp


def topk_correct(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
  """Whether the label is among the top k logits, counting ties against it.

  The label's rank is the number of logits greater than OR EQUAL to its own,
  so a model that outputs identical logits for every class scores zero
  rather than being credited with every label. Runs inside jit.

  Args:
    logits: (B, classes).
    labels: (B,) integer class ids.
    k: how many top classes count as a hit.

  Returns:
    (B,) float32, 1.0 where correct.
  """
  label_logit = jnp.take_along_axis(logits, labels[:, None], axis=-1)
  rank = jnp.sum(logits >= label_logit, axis=-1)
  return (rank <= k).astype(jnp.float32)


def _row_step(line: str) -> float:
  """A metrics.jsonl row's step; a torn last line (a crash while writing)
  counts as past every step."""
  try:
    return json.loads(line)['step']
  except (ValueError, KeyError, TypeError):
    return math.inf


class MetricWriter:
  """Writes scalars to `workdir/metrics.jsonl` and TensorBoard events.

  Only process 0 writes; on other processes every call is a no-op, so the
  train loop can call it unconditionally.
  """

  def __init__(self, workdir: str, enabled: bool | None = None):
    if enabled is None:
      enabled = jax.process_index() == 0
    self.enabled = enabled
    self._jsonl = None
    self._tb = None
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self._jsonl = open(os.path.join(workdir, 'metrics.jsonl'), 'a')
    try:
      from tensorboardX import SummaryWriter

      self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'))
    except ImportError:  # TensorBoard files are a convenience, not a need.
      self._tb = None

  def drop_rows_after(self, step: int) -> None:
    """Forgets metrics.jsonl rows past `step`, the step a run resumes from.

    A run killed between checkpoints logged steps that the resumed run
    trains again; without this they would appear twice. A torn last line
    goes too. The file is rewritten atomically, so a crash here loses
    nothing.
    """
    if not self.enabled:
      return
    path = self._jsonl.name
    self._jsonl.close()
    with open(path) as f:
      lines = f.readlines()
    kept = [line for line in lines if _row_step(line) <= step]
    if len(kept) != len(lines):
      with open(path + '.tmp', 'w') as f:
        f.writelines(kept)
      os.replace(path + '.tmp', path)
    self._jsonl = open(path, 'a')

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    row = {'step': int(step), 'time': round(time.time(), 3)}
    for name, value in scalars.items():
      value = float(value)
      row[name] = value if math.isfinite(value) else str(value)
      if self._tb is not None:
        self._tb.add_scalar(name, value, int(step))
    self._jsonl.write(json.dumps(row) + '\n')
    self._jsonl.flush()

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
      self._jsonl = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None
