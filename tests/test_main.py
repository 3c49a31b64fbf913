"""The command line: bad flags and missing data end in short, clear errors."""

import os
import pathlib
import subprocess
import sys
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def run_main(*args, timeout=120, xla_flags=''):
  env = dict(os.environ, XLA_FLAGS=xla_flags, TFDS_DATA_DIR='/nonexistent/tfds')
  return subprocess.run(
    [sys.executable, '-m', 'cnn_jax.main', *args],
    env=env,
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=timeout,
  )


@pytest.mark.parametrize(
  'override, expected',
  [
    ('--config.train.batchsize=3', 'Did you mean batch_size?'),
    ('--config.optim.lr=0.1', 'no such config field'),
    ('--config.train.batch_size=abc', 'invalid literal'),
  ],
)
def test_bad_override_names_the_field(tmp_path, override, expected):
  proc = run_main(
    '--config=configs/default.py', f'--workdir={tmp_path}', override
  )
  assert proc.returncode != 0
  assert override.split('=')[0].removeprefix('--') in proc.stderr
  assert expected in proc.stderr
  assert 'Traceback' not in proc.stderr
  assert not (tmp_path / 'checkpoints').exists()


@pytest.mark.parametrize(
  'override, xla_flags, expected',
  [
    (
      '--config.train.batch_size=16',
      '--xla_force_host_platform_device_count=3',
      'not divisible by the 3 devices; choose a multiple of 3',
    ),
    (
      '--config.parallel.bn_virtual_batch_size=5',
      '',
      'does not divide the 16 examples each device gets',
    ),
    ('--config.model.dtype=float17', '', 'use one of float32, bfloat16'),
    ('--config.model.name=resnet21', '', "Unknown model 'resnet21'"),
    ('--config.train.batch_size=0', '', 'choose a positive multiple of 1'),
    ('--config.optim.schedule=cosin', '', 'use constant, piecewise, cosine'),
    ('--config.optim.name=adam', '', 'use sgd or adamw'),
  ],
)
def test_unworkable_value_names_the_flag(
  tmp_path, override, xla_flags, expected
):
  proc = run_main(
    '--config=configs/default.py:smoke',
    f'--workdir={tmp_path}',
    override,
    xla_flags=xla_flags,
  )
  assert proc.returncode != 0
  assert override.split('=')[0] in proc.stderr
  assert expected in proc.stderr
  assert 'Traceback' not in proc.stderr


def test_resnet152_without_imagenet_stops_quickly(tmp_path):
  start = time.time()
  proc = run_main('--config=configs/resnet152.py', f'--workdir={tmp_path}')
  assert proc.returncode != 0
  assert time.time() - start < 60
  assert "Dataset 'imagenet2012' not found" in proc.stderr
  assert '/nonexistent/tfds' in proc.stderr  # the path that was searched
  assert 'cnn_jax.data.prepare imagenet2012' in proc.stderr  # the fix
  assert 'Traceback' not in proc.stderr


@pytest.mark.parametrize(
  'config, expected',
  [
    ('configs/default.py:smok', 'unknown config mode; add :smoke'),
    ('configs/nonexistent.py', 'no such file'),
  ],
)
def test_bad_config_file_or_mode_is_one_line(tmp_path, config, expected):
  proc = run_main(f'--config={config}', f'--workdir={tmp_path}')
  assert proc.returncode != 0
  assert expected in proc.stderr
  assert 'Traceback' not in proc.stderr
  assert not any(tmp_path.iterdir())  # nothing was written
