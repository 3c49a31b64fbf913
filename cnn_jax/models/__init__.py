"""The model zoo: VGG, GoogLeNet and ResNet behind one registry.

Every model is a `flax.linen.Module` called as `model.apply(variables, x,
train=...)` on NHWC float images, returning float32 logits (B, num_classes).
"""

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax

from cnn_jax.models import vgg
from cnn_jax.models.googlenet import GoogLeNet
from cnn_jax.models.layers import BatchNorm
from cnn_jax.models.resnet import ResNet
from cnn_jax.models.vgg import VGG

__all__ = [
  'BatchNorm',
  'GoogLeNet',
  'ResNet',
  'VGG',
  'create_model',
  'get_features',
  'list_models',
]


def _registry() -> dict[str, Callable[..., nn.Module]]:
  models = {}
  for bn in (False, True):
    for depth, sizes in vgg.STAGE_SIZES.items():
      name = f'vgg{depth}' + ('_bn' if bn else '')
      models[name] = functools.partial(VGG, sizes, batch_norm=bn)

  models['googlenet'] = GoogLeNet
  models['googlenet_tv'] = functools.partial(
    GoogLeNet,
    batch_norm=True,
    bn_epsilon=1e-3,
    large_kernel=3,
    lrn=False,
    aux_pool='adaptive',
    pool4_window=2,
    dropout_rate=0.2,
  )

  imagenet = {
    18: ((2, 2, 2, 2), 'basic'),
    34: ((3, 4, 6, 3), 'basic'),
    50: ((3, 4, 6, 3), 'bottleneck'),
    101: ((3, 4, 23, 3), 'bottleneck'),
    152: ((3, 8, 36, 3), 'bottleneck'),
  }
  for depth, (sizes, block) in imagenet.items():
    models[f'resnet{depth}'] = functools.partial(ResNet, sizes, block=block)
  cifar = functools.partial(ResNet, width=16, stem='cifar', shortcut='A')
  for depth in (20, 32, 44, 56, 110, 1202):
    models[f'resnet{depth}'] = functools.partial(cifar, ((depth - 2) // 6,) * 3)

  for depth in (18, 34, 20, 32, 44, 56, 110):
    models[f'plain{depth}'] = functools.partial(
      models[f'resnet{depth}'], residual=False
    )
  return models


_MODELS = _registry()


def list_models() -> list[str]:
  """Names accepted by `create_model`, grouped by family."""
  return list(_MODELS)


def _model_class(factory: Callable[..., nn.Module]) -> type[nn.Module]:
  while isinstance(factory, functools.partial):
    factory = factory.func
  return factory


def create_model(
  name: str, num_classes: int = 1000, **fields: Any
) -> nn.Module:
  """Builds a registered model.

  Args:
    name: one of `list_models()`, e.g. 'resnet50', 'vgg16_bn', 'googlenet_tv'.
    num_classes: classifier outputs.
    **fields: module fields overriding the registered defaults, e.g.
      dtype=jnp.bfloat16, head='gap_conv', version='v1',
      bn_virtual_batch_size=32. See the model class for its fields.

  Returns:
    An unbound module; call `init` / `apply` with (x, train=...).

  Raises:
    ValueError: unknown name (the message lists the known names).
    TypeError: a field the model class does not have (named in the message).
  """
  if name not in _MODELS:
    raise ValueError(
      f'Unknown model {name!r}. Known models: {", ".join(_MODELS)}.'
    )
  cls = _model_class(_MODELS[name])
  known = {f.name for f in dataclasses.fields(cls)} - {'parent', 'name'}
  unknown = sorted(set(fields) - known)
  if unknown:
    raise TypeError(
      f'{name} ({cls.__name__}) has no field(s) {", ".join(unknown)}; its '
      f'fields are: {", ".join(sorted(known))}.'
    )
  return _MODELS[name](num_classes=num_classes, **fields)


def get_features(
  model: nn.Module,
  variables: Mapping[str, Any],
  x: jax.Array,
  train: bool = False,
  rngs: Mapping[str, jax.Array] | None = None,
) -> dict[str, jax.Array]:
  """Intermediate features of one forward pass.

  Args:
    model: a model from `create_model`.
    variables: its variables ('params', and 'batch_stats' if it has BN).
    x: NHWC input batch.
    train: run in training mode (BN batch statistics, dropout; pass a
      'dropout' rng). The updated BN statistics are discarded.
    rngs: rngs for `apply`, e.g. {'dropout': key}.

  Returns:
    A dict from key to array: 'stem' (except VGG), 'stage1', 'stage2', ...
    and 'pre_logits' (B, D); see each model's `__call__`.
  """
  variables = {k: v for k, v in variables.items() if k != 'intermediates'}
  mutable = ['intermediates'] + (['batch_stats'] if train else [])
  _, state = model.apply(variables, x, train=train, rngs=rngs, mutable=mutable)
  return {k: v[-1] for k, v in state['intermediates'].items()}
