r"""Imports torchvision weights into cnn_jax variables.

  python -m cnn_jax.convert --model=resnet50 --torch=resnet50.pth --out=DIR

reads a file written by `torch.save` (a state_dict, a checkpoint dict that
holds one, or, with --trust_pickle, a whole pickled model), maps every
tensor onto the variables of `cnn_jax.models.create_model(model)` and writes
them with `cnn_jax.checkpoint.save_variables`, which the eval mode loads:

  python -m cnn_jax.main --config=configs/resnet50.py --workdir=W \
      --config.checkpoint.init_from=DIR --config.train.eval_only=True

Covered: vgg11..19 and vgg11_bn..19_bn, resnet18..152 (torchvision's v1.5),
googlenet_tv, and the CIFAR ResNets and plain nets (resnet20.., plain20..)
from a PyTorch definition that uses torchvision's module names.

torch is imported only to read the file; `convert_state_dict` takes any
mapping of names to arrays (numpy arrays or torch tensors).

Layouts: torchvision is NCHW and cnn_jax NHWC, so convolution weights go
from (out, in, kh, kw) to (kh, kw, in, out), and Linear weights from
(out, in) to (in, out). Our VGG flattens its last map in channel-major
order, as `torch.flatten` does, so its first FC weight needs only the
transpose. torchvision's VGG resizes the last map to 7x7 (adaptive average
pooling) before that layer; ours does not, so for another input size than
224 the pooling is folded into the first FC weight (exact: both are linear).
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cnn_jax import models
from cnn_jax.models import VGG, GoogLeNet, ResNet

PyTree = Any

# ResNet depths with ImageNet configs; the others are CIFAR ResNets.
_IMAGENET_DEPTHS = ('18', '34', '50', '101', '152')

# Our name of each torchvision Inception submodule.
_INCEPTION_BRANCHES = {
  'branch1': 'branch1',
  'branch2.0': 'branch2_reduce',
  'branch2.1': 'branch2',
  'branch3.0': 'branch3_reduce',
  'branch3.1': 'branch3',
  'branch4.1': 'branch4_proj',
}

# Where the classifier's weight sits, to read num_classes from it.
_CLASSIFIER = {ResNet: 'fc.weight', VGG: 'classifier.6.weight'}


class ConversionError(ValueError):
  """The torch weights do not fit the requested cnn_jax model."""


def convert_state_dict(
  model_name: str,
  state_dict: Mapping[str, Any],
  *,
  num_classes: int | None = None,
  image_size: int | tuple[int, int] = 224,
  transform_input: bool = False,
  **fields: Any,
) -> dict[str, PyTree]:
  """Maps a torchvision state_dict onto the variables of a cnn_jax model.

  Args:
    model_name: a name from `cnn_jax.models.list_models()`: vgg11..vgg19,
      vgg11_bn..vgg19_bn, resnet18..resnet152, the CIFAR resnet20.. and
      plain20.., or googlenet_tv.
    state_dict: torch module names (e.g. 'layer1.0.conv1.weight') to
      tensors or numpy arrays, as `torch.nn.Module.state_dict()` returns.
    num_classes: classifier outputs; None reads it from the classifier.
    image_size: input side (or (height, width)) the model will see. Only
      VGG's parameters depend on it: its first FC layer takes the whole last
      map, 7x7x512 at 224, and for other sizes torchvision's 7x7 adaptive
      average pooling is folded into that layer's weight.
    transform_input: the weights come from torchvision's
      GoogLeNet(transform_input=True), which its pretrained weights use.
      The weights are unchanged; build the model with the same field,
      `create_model('googlenet_tv', transform_input=True)`, which rescales
      its input as torchvision does. `convert_file` records the field.
    **fields: model fields for `create_model`, e.g. version='v1' or
      aux_heads=False (googlenet_tv: default is whether the state_dict
      holds aux1/aux2).

  Returns:
    {'params': ..., 'batch_stats': ...}, nested dicts of float32 numpy
    arrays in the layout of `model.init`.

  Raises:
    ConversionError: a tensor whose shape does not fit (the first one, named
      with its torch key and our path), or torch tensors without a
      counterpart, or variables the state_dict does not provide.
    ValueError, TypeError: an unknown model name or field.
  """
  fields = _with_transform_input(model_name, fields, transform_input)
  return _convert(model_name, state_dict, num_classes, image_size, fields)[1]


def _with_transform_input(model_name, fields, transform_input):
  """`fields` plus the model field transform_input, which GoogLeNet has."""
  if not transform_input:
    return fields
  if not model_name.startswith('googlenet'):
    raise ConversionError(
      f'--transform_input applies to googlenet_tv only; drop it for '
      f'{model_name}.'
    )
  return {**fields, 'transform_input': True}


def _convert(model_name, state_dict, num_classes, image_size, fields):
  """`convert_state_dict`, returning (model, variables)."""
  arrays = {k: _to_numpy(v) for k, v in state_dict.items()}
  model = _build_model(model_name, arrays, num_classes, fields)
  hw = (image_size, image_size) if isinstance(image_size, int) else image_size
  target = _target_shapes(model, hw)
  rename = _renamer(model)

  out, unused = {}, []
  for key, value in arrays.items():
    module, _, leaf = key.rpartition('.')
    if leaf == 'num_batches_tracked':
      continue
    path = _variable_path(rename(module), leaf, target)
    if path is None:
      unused.append(key)
      continue
    value = _to_layout(value, path, target[path], model, hw)
    if value.shape != target[path]:
      raise ConversionError(
        f'{key} {tuple(arrays[key].shape)} gives {path} the shape '
        f'{value.shape}, but {model_name} expects {target[path]}. Check '
        'the model name, num_classes and the model fields.'
      )
    out[path] = value

  missing = [p for p in target if p not in out]
  if unused or missing:
    raise ConversionError(
      f'The state_dict does not fit {model_name}: '
      + _listing('torch tensors without a counterpart', unused)
      + _listing('variables not provided', missing)
    )
  return model, _unflatten(out)


def load_torch_file(
  path: str, trust_pickle: bool = False
) -> tuple[dict[str, Any], dict[str, Any]]:
  """Reads a state_dict from a file written by `torch.save`.

  Accepts a state_dict, a dict holding one under 'model', 'state_dict' or
  'model_state_dict' (training checkpoints), and with `trust_pickle` a
  pickled `torch.nn.Module`. A 'module.' prefix (DataParallel) is dropped.

  Args:
    path: the file.
    trust_pickle: allow arbitrary pickled objects. Unpickling runs code
      from the file: only for files you trust.

  Returns:
    (state_dict, facts): facts holds 'transform_input' when a pickled
    GoogLeNet says so.

  Raises:
    ConversionError: the file is missing or not torch's, holds no
      state_dict, or holds objects that need `trust_pickle`.
  """
  import torch  # Only this path needs torch.

  if not os.path.isfile(path):
    raise ConversionError(f'--torch={path}: no such file.')
  try:
    obj = torch.load(path, map_location='cpu', weights_only=not trust_pickle)
  except (EOFError, KeyError, RuntimeError) as e:
    # What torch raises for a file it did not write, or a truncated one.
    raise ConversionError(
      f'--torch={path} is not a file written by torch.save ({type(e).__name__}'
      f': {e}).'
    ) from e
  except pickle.UnpicklingError as e:
    raise ConversionError(
      f'{path} holds pickled Python objects (e.g. a whole model), which '
      'torch only loads by running code from the file. Save a state_dict '
      'instead (torch.save(model.state_dict(), path)), or pass '
      '--trust_pickle if you trust the file.'
    ) from e

  facts = {}
  if isinstance(obj, torch.nn.Module):
    if hasattr(obj, 'transform_input'):
      facts['transform_input'] = bool(obj.transform_input)
    obj = obj.state_dict()
  if isinstance(obj, Mapping):
    for key in ('model', 'state_dict', 'model_state_dict'):
      if isinstance(obj.get(key), Mapping):
        obj = obj[key]
        break
  if not isinstance(obj, Mapping) or not all(
    isinstance(v, torch.Tensor) for v in obj.values()
  ):
    raise ConversionError(
      f'{path} holds a {type(obj).__name__}, not a state_dict (a mapping '
      'from names to tensors).'
    )
  state_dict = {re.sub(r'^module\.', '', k): v for k, v in obj.items()}
  return state_dict, facts


def convert_file(
  model_name: str,
  torch_path: str,
  out_dir: str,
  *,
  trust_pickle: bool = False,
  transform_input: bool | None = None,
  image_size: int = 224,
  **fields: Any,
) -> dict[str, Any]:
  """Converts a torch file and writes the variables for the eval mode.

  Args:
    model_name: see `convert_state_dict`.
    torch_path: a file written by `torch.save`; see `load_torch_file`.
    out_dir: where `cnn_jax.checkpoint.save_variables` writes
      out_dir/variables and out_dir/model.json.
    trust_pickle: see `load_torch_file`.
    transform_input: googlenet_tv only; None takes it from a pickled model
      and is an error for a bare state_dict, which does not record it.
    image_size: see `convert_state_dict`.
    **fields: model fields; see `convert_state_dict`.

  Returns:
    The model description written to model.json.
  """
  from cnn_jax import checkpoint

  # A flag that cannot apply fails before the file is read.
  fields = _with_transform_input(model_name, fields, transform_input)
  state_dict, facts = load_torch_file(torch_path, trust_pickle)
  if model_name.startswith('googlenet') and transform_input is None:
    transform_input = facts.get('transform_input')
    if transform_input is None:
      raise ConversionError(
        'A GoogLeNet state_dict does not record transform_input: pass '
        "--transform_input=true for torchvision's pretrained weights "
        '(googlenet(weights=...) sets it), false for weights trained '
        'without it.'
      )
    fields = _with_transform_input(model_name, fields, transform_input)
  model, variables = _convert(model_name, state_dict, None, image_size, fields)
  info = {
    'name': model_name,
    'num_classes': model.num_classes,
    'fields': _fields_used(model_name, state_dict, fields),
    'image_size': image_size,
    'source': os.path.abspath(torch_path),
  }
  checkpoint.save_variables(out_dir, jax.tree.map(jnp.asarray, variables), info)
  return info


# ------------------------------------------------------------ the model


def _build_model(name, arrays, num_classes, fields):
  cls = type(models.create_model(name, num_classes=1))
  if cls not in (ResNet, VGG, GoogLeNet):
    raise ValueError(f'{name} is not convertible.')
  if num_classes is None:
    weight = arrays.get(_CLASSIFIER.get(cls, 'fc.weight'))
    num_classes = 1000 if weight is None else weight.shape[0]
  fields = _fields_used(name, arrays, fields)
  model = models.create_model(name, num_classes=num_classes, **fields)
  if cls is GoogLeNet and not model.batch_norm:
    raise ValueError(
      f"{name} has no BatchNorm, unlike torchvision's GoogLeNet: convert "
      'to googlenet_tv.'
    )
  return model


def _fields_used(name, arrays, fields):
  fields = dict(fields)
  if name.startswith('googlenet'):
    fields.setdefault('aux_heads', any(k.startswith('aux1.') for k in arrays))
  return fields


def _target_shapes(model, hw) -> dict[str, tuple[int, ...]]:
  """Path ('params/layer1/block0/conv1/kernel') -> shape, by tracing only."""
  x = jnp.zeros((1, *hw, 3), jnp.float32)
  init = lambda: model.init(jax.random.key(0), x, train=False)
  shapes = jax.eval_shape(init)
  shapes = {k: shapes[k] for k in ('params', 'batch_stats') if k in shapes}
  flat = jax.tree_util.tree_flatten_with_path(shapes)[0]
  return {
    '/'.join(k.key for k in path): tuple(leaf.shape) for path, leaf in flat
  }


# ------------------------------------------------------------ the names


def _renamer(model):
  if isinstance(model, ResNet):
    return _resnet_name
  if isinstance(model, GoogLeNet):
    return _googlenet_name
  return _vgg_renamer(model)


def _resnet_name(module: str) -> str:
  module = re.sub(r'^(layer\d+)\.(\d+)\.', r'\1.block\2.', module)
  module = module.replace('downsample.0', 'proj_conv')
  module = module.replace('downsample.1', 'proj_bn')
  return 'head.fc' if module == 'fc' else module


def _googlenet_name(module: str) -> str:
  parts = module.split('.')
  if parts[0].startswith('inception'):
    branch = '.'.join(parts[1:-1])
    parts = [parts[0], _INCEPTION_BRANCHES.get(branch, branch), parts[-1]]
  elif parts[0] in ('aux1', 'aux2'):
    parts[0] = f'aux_head{parts[0][-1]}'
  elif module == 'fc':
    parts = ['head', 'fc']
  return '.'.join(parts)


def _vgg_renamer(model: VGG):
  """torchvision's features.{i} / classifier.{i} indices to our names."""
  names, i = {}, 0
  for s, num_convs in enumerate(model.stage_sizes, start=1):
    for j in range(1, num_convs + 1):
      names[f'features.{i}'] = f'block{s}.conv{j}'
      i += 1
      if model.batch_norm:
        names[f'features.{i}'] = f'block{s}.bn{j}'
        i += 1
      i += 1  # ReLU
    i += 1  # max pool
  # Linear layers at 0, 3 and 6, with ReLU and dropout between them.
  for k in range(len(model.hidden_features) + 1):
    names[f'classifier.{3 * k}'] = f'head.fc{k + 1}'
  return lambda module: names.get(module, module)


def _variable_path(module: str, leaf: str, target) -> str | None:
  """Our variable for torch's `module.leaf`, or None if there is none."""
  base = module.replace('.', '/')
  if leaf == 'weight':
    candidates = (f'params/{base}/kernel', f'params/{base}/scale')
  else:
    candidates = {
      'bias': (f'params/{base}/bias',),
      'running_mean': (f'batch_stats/{base}/mean',),
      'running_var': (f'batch_stats/{base}/var',),
    }.get(leaf, ())
  return next((p for p in candidates if p in target), None)


# ------------------------------------------------------------ the layouts


def _to_layout(value, path, want, model, hw) -> np.ndarray:
  if not path.endswith('/kernel'):
    return value
  if value.ndim == 4:  # (out, in, kh, kw) -> (kh, kw, in, out)
    return value.transpose(2, 3, 1, 0)
  if value.ndim != 2:
    return value
  if isinstance(model, VGG) and path == 'params/head/fc1/kernel':
    value = _fold_vgg_pool(value, model.widths[-1], want[0], hw)
  return value.T


def _fold_vgg_pool(weight, channels, want_in, hw) -> np.ndarray:
  """torchvision's 7x7 adaptive pool, then `weight`, as one (out, in) matrix.

  Our last map is (h, w) = hw // 32 (five 2x2 pools); torchvision pools it
  to 7x7 with overlapping windows, then flattens (C, 7, 7). Both steps are
  linear, so weight . pool is the weight for the (C, h, w) flatten.
  """
  h, w = (side // 32 for side in hw)
  if weight.shape[1] != channels * 49 or want_in != channels * h * w:
    return weight  # not torchvision's layout; the shape check reports it
  if (h, w) == (7, 7):
    return weight
  out = weight.reshape(-1, channels, 7, 7) @ _pool_matrix(w)  # (O, C, 7, w)
  out = np.swapaxes(out, 2, 3) @ _pool_matrix(h)  # (O, C, w, h)
  return np.swapaxes(out, 2, 3).reshape(out.shape[0], -1)


def _pool_matrix(size: int, out: int = 7) -> np.ndarray:
  """(out, size): row i averages PyTorch's adaptive pooling window i."""
  m = np.zeros((out, size), np.float32)
  for i in range(out):
    start, stop = i * size // out, -(-(i + 1) * size // out)
    m[i, start:stop] = 1.0 / (stop - start)
  return m


# ------------------------------------------------------------ helpers


def _to_numpy(value) -> np.ndarray:
  if hasattr(value, 'detach'):  # a torch tensor; avoids importing torch
    value = value.detach().cpu()
    value = value.float() if value.is_floating_point() else value
    return value.numpy()
  return np.asarray(value)


def _listing(what: str, names: list[str], limit: int = 8) -> str:
  if not names:
    return ''
  shown = ', '.join(names[:limit])
  more = f' and {len(names) - limit} more' if len(names) > limit else ''
  return f'{len(names)} {what} ({shown}{more}). '


def _unflatten(flat: dict[str, np.ndarray]) -> dict[str, PyTree]:
  tree = {'params': {}, 'batch_stats': {}}
  for path, value in flat.items():
    node = tree
    *parents, leaf = path.split('/')
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = np.asarray(value, np.float32)
  return tree


# ------------------------------------------------------------ the CLI


def _define_flags():
  from absl import flags

  flags.DEFINE_string('model', None, 'cnn_jax model name, e.g. resnet50.')
  flags.DEFINE_string('torch', None, 'File written by torch.save.')
  flags.DEFINE_string('out', None, 'Directory for the converted variables.')
  flags.DEFINE_integer(
    'image_size', 224, 'Input side the model will see (VGG only).'
  )
  flags.DEFINE_enum(
    'transform_input',
    None,
    ['true', 'false'],
    "GoogLeNet: whether the weights expect torchvision's transform_input "
    '(true for its pretrained weights).',
  )
  flags.DEFINE_bool(
    'trust_pickle',
    False,
    'Allow a pickled model object; unpickling runs code from the file.',
  )
  flags.mark_flags_as_required(['model', 'torch', 'out'])
  return flags.FLAGS


def main(argv: list[str]) -> None:
  from absl import app

  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  f = FLAGS
  transform = None if f.transform_input is None else f.transform_input == 'true'
  try:
    info = convert_file(
      f.model,
      f.torch,
      f.out,
      trust_pickle=f.trust_pickle,
      transform_input=transform,
      image_size=f.image_size,
    )
  except (ConversionError, ValueError, TypeError) as e:
    raise SystemExit(f'FATAL {type(e).__name__}: {e}') from None
  print(
    f'Wrote {info["name"]} ({info["num_classes"]} classes) to '
    f'{os.path.abspath(f.out)}. Evaluate it with:\n  '
    + eval_command(info, os.path.abspath(f.out))
  )


def eval_command(info: dict[str, Any], directory: str) -> str:
  """The eval-mode command line for variables written by `convert_file`.

  It starts from the experiment config of the same architecture and
  overrides what the conversion fixed: the model name and, for GoogLeNet,
  the fields in which googlenet_tv differs from the paper's config.
  """
  name = info['name']
  configs = os.path.join(os.path.dirname(__file__), os.pardir, 'configs')
  family, depth = re.match(r'([a-z]+)(\d*)', name).groups()
  cifar = family in ('resnet', 'plain') and depth not in _IMAGENET_DEPTHS
  fallback = {'vgg': 'vgg16.py', 'googlenet': 'googlenet.py'}.get(
    family, f'{family}20_cifar10.py' if cifar else 'resnet50.py'
  )
  config = next(
    (
      f'configs/{c}'
      for c in (f'{name}.py', f'{name}_cifar10.py', fallback)
      if os.path.isfile(os.path.join(configs, c))
    ),
    'CONFIG',
  )
  flags = [f'--config={config}', '--workdir=WORKDIR']
  flags.append(f'--config.model.name={name}')
  if name == 'googlenet_tv':
    aux = info['fields'].get('aux_heads', True)
    flags += [
      '--config.model.fields.lrn=False',
      '--config.model.fields.large_kernel=3',
      f'--config.model.fields.aux_heads={aux}',
      '--config.model.fields.dropout_rate=0.2',
    ]
    if info['fields'].get('transform_input'):
      flags.append('--config.model.fields.transform_input=True')
  flags += [
    f'--config.checkpoint.init_from={directory}',
    '--config.train.eval_only=True',
  ]
  if not cifar:
    flags.append('--config.data.data_dir=IMAGENET_DIR')
  return 'python -m cnn_jax.main ' + ' '.join(flags)


if __name__ == '__main__':
  from absl import app

  FLAGS = _define_flags()
  app.run(main)
