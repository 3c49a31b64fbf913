"""Model report: per-layer shapes, activations, parameters, MACs, receptive
fields, computed from shapes alone.

Usage:
  python -m cnn_jax.summary --model=vgg16 --image_size=224 --num_classes=1000
  python -m cnn_jax.summary --model=resnet50 --field=version=v1 --json

The model is traced once with `jax.eval_shape` (for the variables) and once
with `jax.make_jaxpr` (for the forward in eval mode); nothing is compiled or
run, so ResNet-152 takes seconds. Every equation carries the name stack of
the Flax module that emitted it, which gives the layer names.

What is counted:
- Rows are the layers: the input, every convolution, fully connected layer
  and pooling (including global average pooling), and every other module
  with parameters (BatchNorm). ReLU, residual additions and concatenations
  are not rows.
- activations: elements of each row's output, summed over rows (input
  included), for the given batch (1 by default); bytes at the computation
  dtype. This is the usual count for VGG (REFERENCE: 15,237,608 for VGG-16).
- MACs: multiply-accumulates of convolutions and matrix products only
  (torchvision's convention).
- receptive field: side, in input pixels, of the region one output element
  sees (along the height axis), from kernel sizes, strides and dilations;
  None ('global' in the table) after global pooling or flattening.
- Modules whose parameters the eval forward does not use (GoogLeNet's aux
  heads) get rows of kind 'unused' so that rows add up to the totals.
"""

import argparse
import ast
import dataclasses
import json
import math
import sys
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore

GLOBAL = 'global'
_Info = tuple[int, int] | str | None  # (rf, jump), GLOBAL, or not from x.


@dataclasses.dataclass
class Row:
  """One layer of the report; counts are for the whole input batch."""

  name: str
  kind: str
  shape: tuple[int, ...] | None
  activations: int = 0
  activation_bytes: int = 0
  params: int = 0
  macs: int = 0
  receptive_field: int | None = None


@dataclasses.dataclass
class Summary:
  """The report: rows in execution order and their totals."""

  model: str
  input_shape: tuple[int, ...]
  dtype: str
  rows: list[Row]

  @property
  def params(self) -> int:
    return sum(r.params for r in self.rows)

  @property
  def macs(self) -> int:
    return sum(r.macs for r in self.rows)

  @property
  def activations(self) -> int:
    return sum(r.activations for r in self.rows)

  @property
  def activation_bytes(self) -> int:
    return sum(r.activation_bytes for r in self.rows)

  def by_block(self, field: str) -> dict[str, int]:
    """Sums `field` over rows grouped by the first part of their name."""
    out: dict[str, int] = {}
    for r in self.rows:
      block = r.name.split('/')[0]
      out[block] = out.get(block, 0) + getattr(r, field)
    return out

  def to_dict(self) -> dict[str, Any]:
    """JSON-ready dict; totals under 'params', 'macs', 'activations'."""
    return {
      'model': self.model,
      'input_shape': list(self.input_shape),
      'dtype': self.dtype,
      'params': self.params,
      'macs': self.macs,
      'activations': self.activations,
      'activation_bytes': self.activation_bytes,
      'activations_by_block': self.by_block('activations'),
      'params_by_block': self.by_block('params'),
      'rows': [dataclasses.asdict(r) for r in self.rows],
    }

  def to_text(self) -> str:
    """A fixed-width table, the totals, and where memory and weights sit."""
    head = ('layer', 'kind', 'output', 'activations', 'bytes', 'params',
            'MACs', 'RF')  # fmt: skip
    body = [
      (
        r.name,
        r.kind,
        'x'.join(map(str, r.shape[1:])) if r.shape else '-',
        f'{r.activations:,}',
        _human_bytes(r.activation_bytes),
        f'{r.params:,}',
        f'{r.macs:,}',
        GLOBAL if r.receptive_field is None else str(r.receptive_field),
      )
      for r in self.rows
    ]
    total = ('total', '', '', f'{self.activations:,}',
             _human_bytes(self.activation_bytes), f'{self.params:,}',
             f'{self.macs:,}', '')  # fmt: skip
    widths = [max(len(t[i]) for t in [head, total, *body]) for i in range(8)]
    fmt = lambda t: '  '.join(
      s.ljust(w) if i < 3 else s.rjust(w)
      for i, (s, w) in enumerate(zip(t, widths, strict=True))
    )
    rule = '-' * len(fmt(head))
    lines = [
      f'{self.model}: input {self.input_shape}, compute dtype {self.dtype}',
      fmt(head),
      rule,
      *map(fmt, body),
      rule,
      fmt(total),
      '',
      *self._observations(),
    ]
    return '\n'.join(lines)

  def _observations(self) -> list[str]:
    acts = self.by_block('activations')
    shares = ', '.join(
      f'{k} {100 * v / max(self.activations, 1):.1f}%' for k, v in acts.items()
    )
    top = max(
      (r for r in self.rows if r.kind != 'unused'), key=lambda r: r.params
    )
    return [
      f'activations by block: {shares}',
      f'largest layer by parameters: {top.name} with {top.params:,} '
      f'({100 * top.params / max(self.params, 1):.1f}% of all)',
    ]


def _human_bytes(n: int) -> str:
  for unit in ('B', 'KiB', 'MiB'):
    if n < 1024:
      return f'{n:.0f} {unit}' if unit == 'B' else f'{n:.1f} {unit}'
    n /= 1024
  return f'{n:.1f} GiB'


def _merge(infos: Sequence[_Info]) -> _Info:
  infos = [i for i in infos if i is not None]
  if not infos:
    return None
  if GLOBAL in infos:
    return GLOBAL
  return max(i[0] for i in infos), max(i[1] for i in infos)


def _grow(info: _Info, window: int, stride: int, dilation: int) -> _Info:
  if not isinstance(info, tuple):
    return info
  rf, jump = info
  return rf + (window - 1) * dilation * jump, jump * stride


def _propagate(eqn, ins: list[_Info]) -> _Info:
  """Receptive field (and jump) of an equation's outputs along height."""
  name, p = eqn.primitive.name, eqn.params
  info = _merge(ins)
  if not isinstance(info, tuple):
    return info
  in_shape = eqn.invars[0].aval.shape
  out_shape = eqn.outvars[0].aval.shape
  if name == 'conv_general_dilated':
    lhs, rhs, _ = p['dimension_numbers']
    h = eqn.invars[1].aval.shape[rhs[2]]
    return _grow(ins[0], h, p['window_strides'][0], p['rhs_dilation'][0])
  if name.startswith('reduce_window'):
    return _grow(
      info, p['window_dimensions'][1], p['window_strides'][1],
      p['window_dilation'][1])  # fmt: skip
  if name.startswith(('reduce_', 'arg')) and {1, 2} & set(p.get('axes', ())):
    return GLOBAL
  if name == 'reshape' and in_shape[:3] != out_shape[:3]:
    return GLOBAL
  if name == 'transpose' and tuple(p['permutation'][:3]) != (0, 1, 2):
    return GLOBAL
  if name == 'slice' and p['strides']:
    return info[0], info[1] * p['strides'][1]
  if name == 'dot_general':
    (lc, rc), _ = p['dimension_numbers']
    contracted = lc if ins[0] is not None else rc
    if {1, 2} & set(contracted) and len(in_shape) == 4:
      return GLOBAL
  return info


def _layer_kind(eqn) -> str | None:
  """The row kind an equation starts, if it is a layer."""
  name, p = eqn.primitive.name, eqn.params
  if name == 'conv_general_dilated':
    return 'conv'
  if name == 'dot_general':
    return 'dense'
  if name.startswith('reduce_window'):
    window = p['window_dimensions'][1:3] + p['window_strides'][1:3]
    return 'pool' if max(window) > 1 else None
  ndim = len(eqn.invars[0].aval.shape)
  if name in ('reduce_sum', 'reduce_max') and ndim == 4:
    return 'pool' if set(p['axes']) == {1, 2} else None
  return None


def _macs(eqn) -> int:
  out = math.prod(eqn.outvars[0].aval.shape)
  if eqn.primitive.name == 'conv_general_dilated':
    rhs = eqn.invars[1].aval.shape
    _, rhs_spec, _ = eqn.params['dimension_numbers']
    return out * math.prod(rhs) // rhs[rhs_spec[0]]
  if eqn.primitive.name == 'dot_general':
    (lc, _), _ = eqn.params['dimension_numbers']
    lhs = eqn.invars[0].aval.shape
    return out * math.prod(lhs[d] for d in lc)
  return 0


def _sub_jaxpr(eqn):
  """The jaxpr a call-like equation runs on its own operands, if any."""
  for value in eqn.params.values():
    jaxpr = getattr(value, 'jaxpr', value)
    if isinstance(jaxpr, jcore.Jaxpr) and len(jaxpr.invars) == len(eqn.invars):
      return jaxpr
  return None


def _scope(name_stack: str) -> str:
  # Drop the root module and method-call scopes such as 'block0._merge'.
  parts = [s for s in name_stack.split('/')[1:] if s and '.' not in s]
  return '/'.join(parts)


class _Walker:
  """Walks a jaxpr, propagating receptive fields and collecting rows."""

  def __init__(self, params: dict[str, int], itemsize: int):
    self.params = params
    self.itemsize = itemsize
    self.rows: list[Row] = []
    self.last: dict[str, Row] = {}

  def walk(self, jaxpr, infos: list[_Info], prefix: str) -> list[_Info]:
    env = dict(zip(jaxpr.invars, infos, strict=True))
    read = lambda v: None if isinstance(v, jcore.Literal) else env.get(v)
    for eqn in jaxpr.eqns:
      ins = [read(v) for v in eqn.invars]
      stack = '/'.join(
        s for s in (prefix, str(eqn.source_info.name_stack)) if s
      )
      sub = _sub_jaxpr(eqn)
      if sub is not None:
        outs = self.walk(sub, ins, stack)
      else:
        outs = [_propagate(eqn, ins)] * len(eqn.outvars)
        if outs and outs[0] is not None:
          self._record(eqn, outs[0], _scope(stack))
      env.update(zip(eqn.outvars, outs, strict=True))
    return [read(v) for v in jaxpr.outvars]

  def add_row(self, name: str, kind: str, shape, info: _Info) -> Row:
    row = Row(name, kind, None)
    row.params = self.params.pop(name, 0)
    self.rows.append(row)
    self.last[name] = row
    self._set_output(row, shape, info)
    return row

  def _set_output(self, row: Row, shape, info: _Info) -> None:
    row.shape = tuple(shape)
    row.activations = math.prod(shape)
    row.activation_bytes = row.activations * self.itemsize
    row.receptive_field = info[0] if isinstance(info, tuple) else None

  def _record(self, eqn, info: _Info, scope: str) -> None:
    shape = eqn.outvars[0].aval.shape
    kind = _layer_kind(eqn)
    if kind is not None:
      name = scope
      if name in self.last:  # A second layer in one scope gets a suffix.
        name = f'{scope}/{eqn.primitive.name}{len(self.rows)}'
      row = self.add_row(name, kind, shape, info)
      row.macs = _macs(eqn)
    elif scope in self.last:
      # Bias additions, divisions of average pools: same layer, later op.
      if self.last[scope].shape[1:] == tuple(shape[1:]):
        self._set_output(self.last[scope], shape, info)
    elif scope in self.params:
      self.add_row(scope, 'norm', shape, info)


def _params_by_module(params: Any) -> dict[str, int]:
  counts: dict[str, int] = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    module = '/'.join(str(getattr(k, 'key', k)) for k in path[:-1])
    counts[module] = counts.get(module, 0) + math.prod(leaf.shape)
  return counts


def summarize(
  model: nn.Module,
  input_shape: Sequence[int],
  dtype: Any = None,
  name: str | None = None,
) -> Summary:
  """Builds the report of `model` on an input of `input_shape`, eval mode.

  Args:
    model: a Flax module called as `model.apply(variables, x, train=False)`.
    input_shape: NHWC input shape including the batch, e.g. (1, 224, 224,
      3); counts are for this whole batch.
    dtype: computation dtype to report at; if given, the model is cloned
      with `dtype=dtype`. Defaults to the model's own `dtype` (or float32).
    name: label for the report; defaults to the module class name.

  Returns:
    A `Summary` with one `Row` per layer and totals `params`, `macs`,
    `activations`, `activation_bytes`.
  """
  if dtype is not None:
    model = model.clone(dtype=dtype)
  compute = jnp.dtype(getattr(model, 'dtype', None) or jnp.float32)
  x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  variables = {k: v for k, v in variables.items() if k != 'intermediates'}
  apply = lambda v, x: model.apply(v, x, train=False)
  closed = jax.make_jaxpr(apply)(variables, x)

  walker = _Walker(_params_by_module(variables.get('params', {})),
                   compute.itemsize)  # fmt: skip
  walker.add_row('input', 'input', x.shape, (1, 1))
  infos: list[_Info] = [None] * (len(closed.jaxpr.invars) - 1) + [(1, 1)]
  walker.walk(closed.jaxpr, infos, '')
  for module, count in walker.params.items():
    walker.rows.append(Row(module, 'unused', None, params=count))
  return Summary(
    name or type(model).__name__,
    tuple(input_shape),
    compute.name,
    walker.rows,
  )


def _parse_field(text: str) -> tuple[str, Any]:
  key, sep, value = text.partition('=')
  if not sep:
    raise argparse.ArgumentTypeError(f'--field wants key=value, got {text!r}')
  if value in ('bfloat16', 'float32', 'float16'):
    return key, jnp.dtype(value)
  try:
    return key, ast.literal_eval(value)
  except (ValueError, SyntaxError):
    return key, value


def main(argv: Sequence[str] | None = None) -> None:
  """Command-line entry point; see the module docstring."""
  from cnn_jax import models  # Deferred: keeps `import summary` light.

  parser = argparse.ArgumentParser(
    prog='python -m cnn_jax.summary', description=__doc__.split('\n')[0]
  )
  parser.add_argument(
    '--model', required=True, help=', '.join(models.list_models())
  )
  parser.add_argument('--image_size', type=int, default=224)
  parser.add_argument('--num_classes', type=int, default=1000)
  parser.add_argument('--channels', type=int, default=3)
  parser.add_argument('--batch_size', type=int, default=1)
  parser.add_argument(
    '--dtype', default='float32', choices=['float32', 'bfloat16']
  )
  parser.add_argument(
    '--field', type=_parse_field, action='append', default=[],
    help='model field override, e.g. --field=version=v1 (repeatable)',
  )  # fmt: skip
  parser.add_argument('--json', action='store_true', help='print JSON')
  args = parser.parse_args(argv)

  try:
    model = models.create_model(
      args.model, args.num_classes, **dict(args.field)
    )
  except (ValueError, TypeError) as e:
    parser.error(str(e))
  size = args.image_size
  shape = (args.batch_size, size, size, args.channels)
  report = summarize(model, shape, jnp.dtype(args.dtype), name=args.model)
  if args.json:
    print(json.dumps(report.to_dict(), indent=1, default=_json_default))
  else:
    print(report.to_text())


def _json_default(value: Any) -> Any:
  if isinstance(value, np.integer):
    return int(value)
  raise TypeError(f'cannot serialise {type(value).__name__}')


if __name__ == '__main__':
  main(sys.argv[1:])
