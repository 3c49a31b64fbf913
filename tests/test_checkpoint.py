"""Checkpoints: exact resume, portability, preemption, crashes, retention."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax import checkpoint as ckpt_lib
from cnn_jax import config_lib, optim, parallel, train
from cnn_jax import data as data_lib
from tests.launch import REPO, run_main, start_main


def smoke_config(steps, **train_fields):
  config = config_lib.cifar_resnet_config(20, smoke=True)
  config.train.num_train_steps = steps
  for key, value in train_fields.items():
    config.train[key] = value
  return config


def restore_state(config, workdir, mesh):
  """The latest checkpoint of `workdir`, restored onto `mesh`."""
  info = data_lib.dataset_info(config.data)
  model = train.build_model(config, info.num_classes)
  tx = optim.build_optimizer(
    config.optim, optim.build_schedule(config.optim, 16, 10, 10)
  )
  state = train.create_train_state(model, tx, config, info.image_shape, mesh)
  checkpoints = ckpt_lib.Checkpointer(str(workdir), config)
  step = checkpoints.latest_step()
  restored, data_state = checkpoints.restore(step, state)
  checkpoints.close()
  return restored, data_state


def metric_rows(workdir):
  lines = (pathlib.Path(workdir) / 'metrics.jsonl').read_text().splitlines()
  return [json.loads(line) for line in lines]


def test_resumed_run_equals_uninterrupted_run(tmp_path):
  common = [
    '--config.train.num_train_steps=100',
    '--config.train.log_every_steps=1',
    '--config.checkpoint.every_steps=1000',
    '--config.data.train_limit=512',
  ]
  straight, split = tmp_path / 'straight', tmp_path / 'split'
  run_main(straight, *common)
  run_main(split, *common, '--config.train.stop_at_step=50')
  first, _ = restore_state(smoke_config(100), split, parallel.make_mesh(1))
  assert int(first.step) == 50  # the restored step counts applied updates
  run_main(split, *common)

  config = smoke_config(100)
  a, data_a = restore_state(config, straight, parallel.make_mesh(1))
  b, data_b = restore_state(config, split, parallel.make_mesh(1))
  assert int(a.step) == int(b.step) == 100
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert data_a == data_b

  rows_a = {r['step']: r for r in metric_rows(straight) if 'train/loss' in r}
  rows_b = {r['step']: r for r in metric_rows(split) if 'train/loss' in r}
  for step in range(51, 101):
    assert (
      rows_a[step]['train/learning_rate']
      == (rows_b[step]['train/learning_rate'])
    )
    assert rows_a[step]['train/loss'] == rows_b[step]['train/loss']


def test_restored_iterator_sees_the_same_batches(tmp_path):
  config = smoke_config(100)
  config.data.train_limit = 512
  straight = data_lib.train_iterator(config.data, 16, config.seed)
  ids = [next(straight)['id'] for _ in range(100)]
  resumed = data_lib.train_iterator(config.data, 16, config.seed)
  for _ in range(50):
    next(resumed)
  state = json.loads(json.dumps(resumed.get_state()))  # as orbax stores it
  fresh = data_lib.train_iterator(config.data, 16, config.seed)
  fresh.set_state(state)
  for step in range(50, 100):
    np.testing.assert_array_equal(next(fresh)['id'], ids[step])


def test_checkpoint_from_8_devices_restores_on_4_2_1(tmp_path):
  config = smoke_config(2)
  for devices, steps in ((8, 2), (4, 4), (2, 6), (1, 8)):
    config.parallel.num_devices = devices
    config.train.num_train_steps = steps
    result = train.train_and_evaluate(config, str(tmp_path))
    assert result['step'] == steps
  rows = metric_rows(tmp_path)
  assert [r['step'] for r in rows if 'num_params' in r] == [0, 2, 4, 6]
  state, _ = restore_state(config, tmp_path, parallel.make_mesh(1))
  assert int(state.step) == 8


def test_sigterm_saves_and_exits_zero(tmp_path):
  proc = start_main(
    tmp_path,
    '--config.train.num_train_steps=100000',
    '--config.train.log_every_steps=1',
    '--config.checkpoint.every_steps=100000',
  )
  metrics_file = tmp_path / 'metrics.jsonl'
  deadline = time.time() + 300
  while time.time() < deadline:
    if metrics_file.exists() and len(metric_rows(tmp_path)) >= 4:
      break
    time.sleep(0.2)
  else:
    proc.kill()
    pytest.fail('training never started:\n' + proc.communicate()[0][-3000:])
  sent = time.time()
  proc.send_signal(signal.SIGTERM)
  output, _ = proc.communicate(timeout=60)
  assert proc.returncode == 0, output[-3000:]
  assert time.time() - sent < 30
  saved = ckpt_lib.Checkpointer(str(tmp_path), smoke_config(100000))
  step = saved.latest_step()
  saved.close()
  last_logged = max(r['step'] for r in metric_rows(tmp_path))
  assert step is not None and step == last_logged and step >= 3


_KILL_WORKER = r"""
import sys, numpy as np, jax, jax.numpy as jnp
from cnn_jax import checkpoint as ckpt_lib, config_lib
config = config_lib.cifar_resnet_config(20, smoke=True)
config.checkpoint.keep = 5
saver = ckpt_lib.Checkpointer(sys.argv[1], config)
state = {'w': jnp.arange(64 * 2**20, dtype=jnp.float32)}  # 256 MiB
saver.save(1, state, {'epoch': 1})
saver.manager.wait_until_finished()
saver.save(2, {'w': state['w'] + 1}, {'epoch': 2})
print('SAVING', flush=True)
import time; time.sleep(120)
"""


def test_kill_during_async_save_keeps_previous_checkpoint(tmp_path):
  proc = subprocess.Popen(
    [sys.executable, '-c', _KILL_WORKER, str(tmp_path)],
    stdout=subprocess.PIPE,
    text=True,
    cwd=REPO,
    env=dict(os.environ, XLA_FLAGS=''),
  )
  line = proc.stdout.readline()
  assert line.strip() == 'SAVING'
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  directory = tmp_path / 'checkpoints'
  leftovers = [p.name for p in directory.iterdir() if 'tmp' in p.name]
  assert leftovers, 'the save finished before the kill; nothing was tested'

  config = config_lib.cifar_resnet_config(20, smoke=True)
  saver = ckpt_lib.Checkpointer(str(tmp_path), config)
  assert saver.latest_step() == 1
  like = {'w': jnp.zeros(64 * 2**20, jnp.float32)}
  restored, data_state = saver.restore(1, like)
  saver.close()
  np.testing.assert_array_equal(np.asarray(restored['w'][:5]), np.arange(5))
  assert data_state == {'epoch': 1}
  assert not [p.name for p in directory.iterdir() if 'tmp' in p.name]


def test_keeps_last_k_and_the_best(tmp_path):
  config = config_lib.base_config()
  config.checkpoint.keep = 2
  saver = ckpt_lib.Checkpointer(str(tmp_path), config)
  top1 = {1: 0.1, 2: 0.9, 3: 0.3, 4: None, 5: 0.2, 6: 0.4}
  for step, value in top1.items():
    metrics = None if value is None else {'top1': value}
    saver.save(step, {'x': jnp.full(3, step)}, {'epoch': step}, metrics)
    saver.manager.wait_until_finished()
  steps = sorted(saver.manager.all_steps())
  saver.close()
  assert steps == [2, 5, 6]


def test_different_model_in_workdir_is_refused(tmp_path):
  run_main(tmp_path, '--config.train.num_train_steps=2')
  other = str(REPO / 'configs' / 'resnet56_cifar10.py') + ':smoke'
  proc = run_main(tmp_path, config=other, timeout=300, check=False)
  assert proc.returncode != 0
  assert 'resnet20' in proc.stderr and 'resnet56' in proc.stderr
  assert "model.name differs: 'resnet20' saved, 'resnet56' asked" in (
    proc.stderr
  )
  # Nothing was overwritten: the workdir still holds resnet20 at step 2.
  state, _ = restore_state(smoke_config(2), tmp_path, parallel.make_mesh(1))
  assert int(state.step) == 2


def test_eval_only_evaluates_the_checkpoint(tmp_path):
  config = smoke_config(3)
  trained = train.train_and_evaluate(config, str(tmp_path))
  config.train.eval_only = True
  again = train.train_and_evaluate(config, str(tmp_path))
  assert again['step'] == 3
  assert again['count'] == trained['count'] == config.data.eval_limit
  assert again['top1'] == trained['top1']
  assert again['loss'] == pytest.approx(trained['loss'], rel=1e-6)


def test_save_and_load_variables_round_trip(tmp_path):
  variables = {
    'params': {'w': jnp.arange(6.0).reshape(2, 3)},
    'batch_stats': {'mean': jnp.ones(3)},
  }
  ckpt_lib.save_variables(str(tmp_path), variables, {'model': 'x'})
  like = jax.tree.map(jnp.zeros_like, variables)
  loaded = ckpt_lib.load_variables(str(tmp_path), like)
  for x, y in zip(
    jax.tree.leaves(variables), jax.tree.leaves(loaded), strict=True
  ):
    np.testing.assert_array_equal(x, y)
  with pytest.raises(FileNotFoundError, match='no variables checkpoint'):
    ckpt_lib.load_variables(str(tmp_path / 'missing'), like)
