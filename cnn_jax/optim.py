"""Optimizers, learning-rate schedules and the weight-decay mask.

All durations in the config are in epochs; `build_schedule` converts them to
steps here and nowhere else, so the train loop never does epoch arithmetic.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from cnn_jax import errors

Schedule = Callable[[jax.Array], jax.Array]


def peak_learning_rate(optim: ml_collections.ConfigDict, batch: int) -> float:
  """The peak learning rate, scaled linearly with the batch if configured.

  `optim.lr_batch_size` names the batch the base rate was tuned for (256 in
  the ImageNet recipes: lr = 0.1 x batch / 256). None leaves it unscaled.
  """
  if optim.get('lr_batch_size'):
    return optim.learning_rate * batch / optim.lr_batch_size
  return optim.learning_rate


def build_schedule(
  optim: ml_collections.ConfigDict,
  batch: int,
  steps_per_epoch: int,
  total_steps: int,
) -> Schedule:
  """Linear warm-up, then a constant, piecewise, cosine or staircase decay.

  Args:
    optim: the `optim` config section (`schedule`, `warmup_epochs`,
      `warmup_start_factor`, `decay_at_fractions`, `decay_factor`,
      `decay_every_epochs`).
      Piecewise decays sit at fractions of the whole run, so a shortened
      run keeps the shape of the paper's schedule.
    batch: the global batch size.
    steps_per_epoch: optimizer steps in one epoch.
    total_steps: the length of the run in steps.

  Returns:
    A function from the step count (before the update) to the learning rate.
  """
  peak = peak_learning_rate(optim, batch)
  warmup = round(optim.get('warmup_epochs', 0.0) * steps_per_epoch)
  kind = optim.schedule
  if kind == 'constant':
    main = optax.constant_schedule(peak)
  elif kind == 'piecewise':
    boundaries = {
      round(f * total_steps) - warmup: optim.decay_factor
      for f in optim.decay_at_fractions
    }
    main = optax.piecewise_constant_schedule(peak, boundaries)
  elif kind == 'cosine':
    main = optax.cosine_decay_schedule(peak, max(total_steps - warmup, 1))
  elif kind == 'staircase':
    # GoogLeNet's "decrease the learning rate by 4% every 8 epochs".
    main = optax.exponential_decay(
      peak,
      round(optim.decay_every_epochs * steps_per_epoch),
      optim.decay_factor,
      staircase=True,
    )
  else:
    raise errors.ConfigError(
      f'--config.optim.schedule={kind!r} is not a schedule; use constant, '
      'piecewise, cosine or staircase.'
    )
  if warmup <= 0:
    return main
  start = peak * optim.get('warmup_start_factor', 0.0)
  ramp = optax.linear_schedule(start, peak, warmup)
  return optax.join_schedules([ramp, main], [warmup])


def weight_decay_mask(pattern: str) -> Callable[[object], object]:
  """A mask function selecting params whose '/'-joined path matches pattern.

  The default pattern, 'kernel$', decays conv and dense kernels only: biases
  and BatchNorm scales and offsets are left alone, as in most ImageNet
  recipes since Goyal et al. 2017.
  """
  regex = re.compile(pattern)

  def mask(params):
    def leaf(path, _):
      name = '/'.join(str(getattr(k, 'key', k)) for k in path)
      return bool(regex.search(name))

    return jax.tree_util.tree_map_with_path(leaf, params)

  return mask


def build_optimizer(
  optim: ml_collections.ConfigDict, schedule: Schedule
) -> optax.GradientTransformation:
  """SGD (momentum, optional Nesterov) or AdamW with masked weight decay.

  SGD couples the decay into the gradient before momentum (PyTorch's and the
  ResNet paper's convention); AdamW decouples it.
  """
  mask = weight_decay_mask(optim.weight_decay_pattern)
  chain = []
  if optim.get('grad_clip_norm'):
    chain.append(optax.clip_by_global_norm(optim.grad_clip_norm))
  if optim.name == 'sgd':
    if optim.weight_decay:
      chain.append(optax.add_decayed_weights(optim.weight_decay, mask))
    chain.append(
      optax.sgd(
        schedule, momentum=optim.momentum or None, nesterov=optim.nesterov
      )
    )
  elif optim.name == 'adamw':
    chain.append(
      optax.adamw(
        schedule,
        b1=optim.b1,
        b2=optim.b2,
        eps=optim.eps,
        weight_decay=optim.weight_decay,
        mask=mask,
      )
    )
  else:
    raise errors.ConfigError(
      f'--config.optim.name={optim.name!r} is not an optimizer; use sgd or '
      'adamw.'
    )
  return optax.chain(*chain)


def cross_entropy(
  logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0
) -> jax.Array:
  """Per-example cross-entropy in float32, with optional label smoothing."""
  logits = logits.astype(jnp.float32)
  targets = jax.nn.one_hot(labels, logits.shape[-1])
  if label_smoothing:
    n = logits.shape[-1]
    targets = targets * (1.0 - label_smoothing) + label_smoothing / n
  return optax.softmax_cross_entropy(logits, targets)
