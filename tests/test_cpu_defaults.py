"""The CPU defaults make training faster without changing its numbers.

Each configuration runs in its own process, because XLA reads its flags
once per process. The processes compute the loss and parameter gradients
of small residual nets in train mode (BatchNorm batch statistics). Each
process saves its results, and the test compares every run with the plain
path (CNN_JAX_CPU_DEFAULTS=0).
"""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax import cpu_defaults
from cnn_jax.models import fast_bn

REPO = pathlib.Path(__file__).resolve().parents[1]

# Small nets that cover every kind of conv: a CIFAR ResNet-8 with option-A
# shortcuts (3x3, stride 1 and 2), and an ImageNet-style net of two
# bottlenecks with the 7x7/2 stem and strided 1x1 projections.
_SCRIPT = r"""
import json, sys
import jax, jax.numpy as jnp, numpy as np
from cnn_jax import cpu_defaults, models, parallel

out_path, num_devices = sys.argv[1], int(sys.argv[2])
wanted = sys.argv[3].split(',')
mesh = parallel.make_mesh(num_devices)
rng = np.random.default_rng(0)
results = {'describe': cpu_defaults.describe()}
arrays = {}
for name, model, shape in (
  ('cifar', models.ResNet((1, 1, 1), 10, width=16, stem='cifar',
                          shortcut='A'), (8, 16, 16, 3)),
  ('bottleneck', models.ResNet((1, 1), 10, block='bottleneck', width=8),
   (8, 32, 32, 3)),
):
  if name not in wanted:
    continue
  x = rng.standard_normal(shape).astype(np.float32)
  labels = rng.integers(0, 10, shape[0])
  variables = model.init(jax.random.key(0), x[:1])

  def loss_fn(params, x):
    logits, _ = model.apply(
      {'params': params, 'batch_stats': variables['batch_stats']},
      x, train=True, mutable=['batch_stats'],
    )
    logp = jax.nn.log_softmax(logits)
    return -jnp.take_along_axis(logp, labels[:, None], 1).mean()

  step = jax.jit(jax.value_and_grad(loss_fn))
  xs = parallel.global_batch({'image': x}, mesh)['image']
  loss, grads = step(variables['params'], xs)
  hlo = step.lower(variables['params'], xs).as_text()
  results[name] = {
    'loss': float(loss),
    'loops': hlo.count('stablehlo.while'),
    'dots': hlo.count('stablehlo.dot_general'),
  }
  for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
    arrays[name + jax.tree_util.keystr(path)] = np.asarray(g)
np.savez(out_path + '.npz', **arrays)
with open(out_path + '.json', 'w') as f:
  json.dump(results, f)
"""

# name: (environment, devices, nets). Sharding is independent of the kind
# of conv, so the multi-device run checks one net only, to save time.
_RUNS = {
  'plain': ({'CNN_JAX_CPU_DEFAULTS': '0'}, 1, 'cifar,bottleneck'),
  'defaults': ({}, 1, 'cifar,bottleneck'),
  'defaults_4_devices': (
    {'XLA_FLAGS': '--xla_force_host_platform_device_count=4'},
    4,
    'cifar',
  ),
}


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """Runs the script once per configuration, all processes at once."""
  tmp = tmp_path_factory.mktemp('cpu_defaults')
  procs = {}
  for name, (env, devices, nets) in _RUNS.items():
    full_env = {**os.environ, 'JAX_PLATFORMS': 'cpu', **env}
    full_env.pop('CNN_JAX_FAST_CONV', None)
    full_env.pop('CNN_JAX_FAST_BN', None)
    if 'XLA_FLAGS' not in env:
      full_env.pop('XLA_FLAGS', None)
    procs[name] = subprocess.Popen(
      [sys.executable, '-c', _SCRIPT, str(tmp / name), str(devices), nets],
      env=full_env,
      cwd=REPO,
      stderr=subprocess.PIPE,
      text=True,
    )
  out = {}
  for name, proc in procs.items():
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, f'{name} failed:\n{err[-3000:]}'
    with open(tmp / f'{name}.json') as f:
      meta = json.load(f)
    out[name] = (meta, dict(np.load(tmp / f'{name}.npz')))
  return out


def test_plain_run_has_no_defaults(runs):
  meta, _ = runs['plain']
  assert meta['describe']['cpu_defaults'] is False
  assert meta['describe']['fast_conv'] is False
  assert meta['describe']['fast_bn'] is False
  assert 'ynn_fusion_type' not in meta['describe']['xla_flags']
  assert meta['cifar']['loops'] == 0
  # The classifier's forward product and its two gradients.
  assert meta['cifar']['dots'] == 3


@pytest.mark.parametrize('run', ['defaults', 'defaults_4_devices'])
def test_defaults_are_in_force(runs, run):
  meta, _ = runs[run]
  # The chunked conv gradient is for one device only (see use_fast_conv).
  one_device = run == 'defaults'
  assert meta['describe']['fast_conv'] is one_device
  assert meta['describe']['fast_bn'] is True
  assert cpu_defaults.CPU_FLAGS[0] in meta['describe']['xla_flags']
  # One weight-gradient loop per convolution, and one BatchNorm per
  # convolution: 7 in the ResNet-8; the stem, 2 x 3 and two projections in
  # the two-bottleneck net. Each BatchNorm takes four per-channel sums as
  # products (two statistics, two backward sums), beside the classifier's 3.
  assert meta['cifar']['loops'] == (7 if one_device else 0)
  assert meta['cifar']['dots'] == 3 + 4 * 7
  if 'bottleneck' in meta:
    assert meta['bottleneck']['loops'] == 9
    assert meta['bottleneck']['dots'] == 3 + 4 * 9


@pytest.mark.parametrize(
  'run,model',
  [
    ('defaults', 'cifar'),
    ('defaults', 'bottleneck'),
    ('defaults_4_devices', 'cifar'),
  ],
)
def test_same_loss_and_gradients_as_plain_path(runs, run, model):
  plain_meta, plain = runs['plain']
  meta, grads = runs[run]
  np.testing.assert_allclose(
    meta[model]['loss'], plain_meta[model]['loss'], rtol=1e-5
  )
  keys = [k for k in plain if k.startswith(model)]
  assert keys and set(keys) <= set(grads)
  for key in keys:
    scale = np.abs(plain[key]).max() + 1e-12
    err = np.abs(grads[key] - plain[key]).max() / scale
    assert err < 1e-5, f'{key}: max error {err:.2e} of the largest gradient'


@pytest.mark.parametrize(
  'variable,use',
  [
    ('CNN_JAX_FAST_CONV', cpu_defaults.use_fast_conv),
    ('CNN_JAX_FAST_BN', cpu_defaults.use_fast_bn),
  ],
)
def test_overrides(monkeypatch, variable, use):
  monkeypatch.delenv(variable, raising=False)
  monkeypatch.setenv('CNN_JAX_CPU_DEFAULTS', '0')
  assert not cpu_defaults.enabled()
  assert not use()
  monkeypatch.setenv(variable, '1')
  assert use()
  monkeypatch.setenv('CNN_JAX_CPU_DEFAULTS', '1')
  assert use()
  monkeypatch.setenv(variable, '0')
  assert not use()
  monkeypatch.delenv(variable)
  # The tests run on the CPU backend with 8 devices, where the chunked conv
  # gradient is not a default (see use_fast_conv).
  assert use() is (variable == 'CNN_JAX_FAST_BN')


def _batch_norm_reference(x, scale, bias, epsilon):
  mean = x.mean((0, 1, 2))
  var = jnp.square(x - mean).mean((0, 1, 2))
  out = (x - mean) / jnp.sqrt(var + epsilon) * scale + bias
  return out, mean, var


def test_fast_batch_norm_equals_autodiff_of_the_formula():
  # float64, so that only the order of summation can differ. The loss uses
  # the statistics too, which the train step never does, so that every
  # term of the hand-written backward pass is checked.
  rng = np.random.default_rng(0)
  x = rng.normal(1.0, 2.0, (6, 5, 4, 3))
  scale, bias = rng.normal(size=3), rng.normal(size=3)
  weights = rng.normal(size=x.shape)

  def loss(fn):
    def value(x, scale, bias):
      out, mean, var = fn(x, scale, bias, 1e-5)
      return (out * weights).sum() + 0.3 * (mean**2).sum() + (var * scale).sum()

    return value

  with jax.enable_x64(True):
    args = [jnp.asarray(a, jnp.float64) for a in (x, scale, bias)]
    got = fast_bn.batch_norm_train(*args, 1e-5)
    want = _batch_norm_reference(*args, 1e-5)
    for g, w in zip(got, want, strict=True):
      assert g.dtype == jnp.float64
      np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)
    got = jax.grad(loss(fast_bn.batch_norm_train), (0, 1, 2))(*args)
    want = jax.grad(loss(_batch_norm_reference), (0, 1, 2))(*args)
    for g, w in zip(got, want, strict=True):
      np.testing.assert_allclose(g, w, rtol=1e-11, atol=1e-11)


def test_user_flag_wins(monkeypatch):
  monkeypatch.setenv('CNN_JAX_CPU_DEFAULTS', '1')
  monkeypatch.setenv('XLA_FLAGS', '--xla_cpu_experimental_ynn_fusion_type=')
  cpu_defaults.apply()
  assert os.environ['XLA_FLAGS'] == '--xla_cpu_experimental_ynn_fusion_type='
