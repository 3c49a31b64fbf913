"""Two jax.distributed processes on 127.0.0.1 train like one process."""

import json
import socket

import jax
import numpy as np

from cnn_jax import parallel
from tests import launch as launch_lib
from tests.test_checkpoint import restore_state, smoke_config

# float64 compute, as in test_train: in float32 a different summation
# order (one process vs two) moves ResNet-20's early gradients by ~1%.
COMMON = [
  '--config.model.dtype=float64',
  '--config.train.num_train_steps=3',
  '--config.train.batch_size=32',
  '--config.train.log_every_steps=1',
]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def launch(workdir, devices, *extra):
  # The same conv gradient in both runs: by default the 1-device run would
  # take the chunked one, which is for one device only (see
  # cpu_defaults.use_fast_conv).
  env = launch_lib.environment(
    devices, JAX_ENABLE_X64='1', CNN_JAX_FAST_CONV='0'
  )
  return launch_lib.start_main(workdir, *COMMON, *extra, env=env)


def finish(proc) -> str:
  output, _ = proc.communicate(timeout=600)
  assert proc.returncode == 0, output[-4000:]
  return output


def test_two_processes_match_one_process(tmp_path):
  single, multi = tmp_path / 'single', tmp_path / 'multi'
  finish(launch(single, 1))
  port = free_port()
  procs = [
    launch(
      multi,
      2,
      '--config.parallel.distributed=True',
      f'--config.parallel.coordinator_address=127.0.0.1:{port}',
      '--config.parallel.num_processes=2',
      f'--config.parallel.process_id={i}',
    )
    for i in range(2)
  ]
  outputs = [finish(proc) for proc in procs]
  assert all('4 devices (2 processes)' in out for out in outputs)

  # Only process 0 wrote metrics.
  rows = [
    json.loads(x) for x in (multi / 'metrics.jsonl').read_text().splitlines()
  ]
  assert sum('num_params' in r for r in rows) == 1

  # The checkpoints record the float64 compute dtype, and restoring checks
  # the model config, so this process restores under x64 too.
  config = smoke_config(3)
  config.train.batch_size = 32
  config.model.dtype = 'float64'
  with jax.enable_x64(True):
    a, _ = restore_state(config, single, parallel.make_mesh(1))
    b, _ = restore_state(config, multi, parallel.make_mesh(1))
  assert int(a.step) == int(b.step) == 3
  for x, y in zip(
    jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True
  ):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-5)
