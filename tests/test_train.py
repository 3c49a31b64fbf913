"""The train loop: device-count invariance, BN modes, eval, decay, compiles."""

import json
import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnn_jax import config_lib, metrics, models, optim, parallel, train
from cnn_jax import data as data_lib


def tiny_config(**train_overrides):
  config = config_lib.cifar_resnet_config(20, smoke=True)
  config.optim.warmup_epochs = 0.0
  for key, value in train_overrides.items():
    config.train[key] = value
  return config


def run_steps(config, mesh, batches):
  """Trains on `batches` (numpy dicts) and returns the final state."""
  info = data_lib.dataset_info(config.data)
  model = train.build_model(config, info.num_classes)
  schedule = optim.build_schedule(
    config.optim, config.train.batch_size, 100, 100
  )
  tx = optim.build_optimizer(config.optim, schedule)
  state = train.create_train_state(model, tx, config, info.image_shape, mesh)
  step = jax.jit(
    train.make_train_step(model, tx, schedule, config, info.mean, info.std)
  )
  for batch in batches:
    state, _ = step(state, parallel.global_batch(batch, mesh))
  return jax.device_get(state)


def first_batches(config, n):
  it = data_lib.train_iterator(
    config.data, config.train.batch_size, config.seed
  )
  return [next(it) for _ in range(n)]


def assert_trees_close(a, b, atol):
  for (path, x), y in zip(
    jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b), strict=True
  ):
    np.testing.assert_allclose(
      x, y, atol=atol, rtol=0, err_msg=jax.tree_util.keystr(path)
    )


def float64_config(**train_overrides):
  """A config whose forward pass runs in float64.

  In float32, ResNet-20's gradients at init are chaotic: perturbing the
  input by one part in 10^7 (the size of a different summation order across
  devices) flips a few ReLUs and moves some gradients by ~1%. Computing in
  float64 removes that noise, so the comparisons below test the semantics
  of the sharded step (global means, global BN statistics) at 1e-5.
  """
  config = tiny_config(**train_overrides)
  config.model.dtype = 'float64'
  return config


def test_eight_devices_equal_one_device():
  config = float64_config(batch_size=32)
  batches = first_batches(config, 3)
  with jax.enable_x64(True):
    one = run_steps(config, parallel.make_mesh(1), batches)
    eight = run_steps(config, parallel.make_mesh(8), batches)
  assert int(one.step) == int(eight.step) == 3
  assert_trees_close(one.params, eight.params, atol=1e-5)
  assert_trees_close(one.batch_stats, eight.batch_stats, atol=1e-5)
  # A real update happened: the params moved away from their init.
  moved = jax.tree.leaves(
    jax.tree.map(lambda p: float(np.abs(p).sum()), one.params)
  )
  assert sum(moved) > 0


def test_virtual_batchnorm_matches_per_device_statistics():
  config = float64_config(batch_size=128)
  config.parallel.bn_virtual_batch_size = 16
  batches = first_batches(config, 1)
  with jax.enable_x64(True):
    on_eight = run_steps(config, parallel.make_mesh(8), batches)
    on_one = run_steps(config, parallel.make_mesh(1), batches)
  assert_trees_close(on_one.params, on_eight.params, atol=1e-5)
  assert_trees_close(on_one.batch_stats, on_eight.batch_stats, atol=1e-5)
  # And virtual statistics really differ from global ones.
  config.parallel.bn_virtual_batch_size = 0
  with jax.enable_x64(True):
    global_bn = run_steps(config, parallel.make_mesh(8), batches)
  diffs = jax.tree.leaves(
    jax.tree.map(
      lambda a, b: float(np.abs(a - b).max()),
      global_bn.batch_stats,
      on_eight.batch_stats,
    )
  )
  assert max(diffs) > 1e-4


def test_topk_counts_ties_against_the_label():
  logits = np.tile(np.arange(10, dtype=np.float32)[::-1], (4, 1))
  logits[3] = 1.0  # all tied
  labels = np.array([0, 4, 5, 2])  # ranks 1, 5, 6 and tied
  top1 = metrics.topk_correct(jnp.asarray(logits), jnp.asarray(labels), 1)
  top5 = metrics.topk_correct(jnp.asarray(logits), jnp.asarray(labels), 5)
  assert float(top1.mean()) == 0.25
  assert float(top5.mean()) == 0.5


def test_eval_counts_every_example_once_on_eight_devices():
  """10,001 examples, batch 128 on 8 devices, against numpy."""
  config = tiny_config()
  config.data.eval_limit = 0
  info = data_lib.dataset_info(config.data)
  model = train.build_model(config, info.num_classes)
  mesh = parallel.make_mesh(8)
  tx = optax.sgd(0.1)
  state = train.create_train_state(model, tx, config, info.image_shape, mesh)
  rng = np.random.default_rng(0)
  n = 10_001
  images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
  labels = rng.integers(0, 10, n).astype(np.int32)
  batches = []
  for start in range(0, n, 128):
    chunk = slice(start, start + 128)
    size = len(labels[chunk])
    pad = 128 - size
    batches.append(
      {
        'image': np.concatenate(
          [images[chunk], np.zeros((pad, 32, 32, 3), np.uint8)]
        ),
        'label': np.concatenate([labels[chunk], np.zeros(pad, np.int32)]),
        'mask': np.arange(128) < size,
      }
    )
  eval_step = jax.jit(train.make_eval_step(model, info.mean, info.std))
  result = train.evaluate(
    eval_step, state.eval_variables(), iter(batches), mesh
  )
  assert result['count'] == n

  # The reference runs on the host in chunks (one 10,001-image forward
  # would need gigabytes of activations).
  forward = jax.jit(
    lambda v, x: model.apply(v, data_lib.normalize(x, info.mean, info.std))
  )
  variables = jax.device_get(state.eval_variables())
  logits = np.concatenate(
    [
      np.asarray(forward(variables, images[i : i + 1000]))
      for i in range(0, n, 1000)
    ]
  ).astype(np.float64)
  order = np.argsort(-logits, axis=1, kind='stable')
  want_top1 = np.mean(order[:, 0] == labels)
  want_top5 = np.mean((order[:, :5] == labels[:, None]).any(axis=1))
  logp = (
    logits
    - np.log(
      np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)
    )
    - logits.max(1, keepdims=True)
  )
  want_loss = -np.mean(logp[np.arange(n), labels])
  assert result['top1'] == pytest.approx(want_top1, abs=1e-9)
  assert result['top5'] == pytest.approx(want_top5, abs=1e-9)
  assert result['loss'] == pytest.approx(want_loss, rel=1e-4)


def test_evaluate_fetches_each_batch_before_running_ahead():
  """No more than MAX_STEPS_IN_FLIGHT eval steps are dispatched unfetched.

  Unbounded run-ahead deadlocked XLA:CPU's all-reduce on 8 host devices.
  The sums here record when the host reads them.
  """
  dispatched, fetched, ahead = [0], [0], []

  class Sum:
    def __init__(self, value):
      self.value = value

    def __array__(self, dtype=None, copy=None):
      fetched[0] += 1
      return np.asarray(self.value, dtype)

  def eval_step(variables, batch):
    dispatched[0] += 1
    ahead.append(dispatched[0] - fetched[0] // 4)
    n = float(batch['mask'].sum())
    return {'count': Sum(n), 'loss': Sum(n), 'top1': Sum(1), 'top5': Sum(2)}

  mesh = parallel.make_mesh(1)
  batches = [
    {
      'image': np.zeros((4, 2, 2, 1), np.uint8),
      'label': np.zeros(4, np.int32),
      'mask': np.arange(4) < (3 if i == 9 else 4),
    }
    for i in range(10)
  ]
  result = train.evaluate(eval_step, {}, iter(batches), mesh)
  assert dispatched[0] == 10 and fetched[0] == 40
  assert max(ahead) == train.MAX_STEPS_IN_FLIGHT == 2
  assert result['count'] == 39
  assert result['loss'] == 1.0
  assert result['top1'] == pytest.approx(10 / 39)
  assert result['top5'] == pytest.approx(20 / 39)


def test_resume_forgets_metric_rows_past_the_checkpoint(tmp_path):
  writer = metrics.MetricWriter(str(tmp_path), enabled=True)
  for step in range(6):
    writer.write(step, {'train/loss': 1.0 / (step + 1)})
  writer.close()
  with open(tmp_path / 'metrics.jsonl', 'a') as f:
    f.write('{"step": 6, "train/lo')  # killed while writing
  resumed = metrics.MetricWriter(str(tmp_path), enabled=True)
  resumed.drop_rows_after(3)
  resumed.write(4, {'train/loss': 0.5})
  resumed.close()
  rows = [
    json.loads(line)
    for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()
  ]
  assert [r['step'] for r in rows] == [0, 1, 2, 3, 4]
  assert rows[-1]['train/loss'] == 0.5
  assert not (tmp_path / 'metrics.jsonl.tmp').exists()


def test_weight_decay_touches_only_the_21_kernels_of_resnet18():
  model = models.create_model('resnet18', num_classes=1000)
  variables = jax.eval_shape(
    lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
  )
  params = jax.tree.map(
    lambda s: jnp.ones(s.shape, s.dtype), variables['params']
  )
  config = config_lib.base_config()
  tx = optim.build_optimizer(config.optim, optax.constant_schedule(0.1))
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  before = jax.tree_util.tree_leaves_with_path(params)
  after = jax.tree.leaves(new)
  changed = [
    jax.tree_util.keystr(path)
    for (path, a), b in zip(before, after, strict=True)
    if not np.array_equal(a, b)
  ]
  assert len(changed) == 21, changed
  assert all('kernel' in name for name in changed)
  assert len(jax.tree.leaves(params)) > 21


def test_schedule_warmup_then_paper_decays():
  config = config_lib.cifar_resnet_config(110)
  schedule = optim.build_schedule(config.optim, 128, 100, 1000)
  lr = np.array(
    [float(schedule(s)) for s in (0, 50, 100, 499, 500, 749, 750, 999)]
  )
  np.testing.assert_allclose(
    lr, [0.01, 0.055, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-5
  )


def test_train_step_compiles_once_over_20_steps(tmp_path, caplog):
  config = tiny_config(num_train_steps=20, log_every_steps=5)
  config.optim.warmup_epochs = 0.05
  config.checkpoint.every_steps = 10
  config.data.train_limit = 64  # several epochs: epoch ends are crossed
  with jax.log_compiles(True), caplog.at_level(logging.WARNING):
    result = train.train_and_evaluate(config, str(tmp_path))
  compiles = [
    r for r in caplog.records if 'Compiling jit(train_step)' in r.getMessage()
  ]
  assert len(compiles) == 1, [r.getMessage() for r in compiles]
  assert result['step'] == 20
  rows = [
    json.loads(line)
    for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()
  ]
  lrs = [r['train/learning_rate'] for r in rows if 'train/learning_rate' in r]
  assert len(set(lrs)) > 1  # the rate really changed between steps
  assert (tmp_path / 'config.json').exists()
  assert 'jax' in json.loads((tmp_path / 'versions.json').read_text())


def test_non_finite_loss_names_the_step(tmp_path):
  config = tiny_config(num_train_steps=6, log_every_steps=3)
  config.optim.learning_rate = 1e30
  with pytest.raises(train.NonFiniteLossError, match=r'at step \d'):
    train.train_and_evaluate(config, str(tmp_path))
