"""Runs `python -m cnn_jax.main` in a fresh process, for the tests that
need one: resume after exit, signals, kill -9, several jax processes."""

import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
SMOKE_CONFIG = str(REPO / 'configs' / 'resnet20_cifar10.py') + ':smoke'

# XLA:CPU aborts the process when one simulated device reaches an
# all-reduce 40 s after the others. The stalls seen in CI came from the
# chunked conv gradient's per-chunk all-reduces, now a one-device default
# (cnn_jax.cpu_defaults.use_fast_conv). On 2 busy cores a device can also
# just be late; XLA logs such a case as a false alarm when the device
# arrives. With 5 minutes lateness only slows a test; a real stall still
# fails.
COLLECTIVE_TIMEOUT = '--xla_cpu_collective_call_terminate_timeout_seconds=300'


def main_command(workdir, *overrides, config=SMOKE_CONFIG) -> list[str]:
  return [
    sys.executable,
    '-m',
    'cnn_jax.main',
    f'--config={config}',
    f'--workdir={workdir}',
    *overrides,
  ]


def environment(devices: int = 1, **variables: str) -> dict[str, str]:
  """This process's environment with `devices` simulated CPU devices."""
  env = dict(os.environ, **variables)
  env['XLA_FLAGS'] = (
    f'--xla_force_host_platform_device_count={devices} {COLLECTIVE_TIMEOUT}'
  )
  return env


def start_main(workdir, *overrides, devices=1, config=SMOKE_CONFIG, env=None):
  """Starts the run; stdout and stderr go together to `proc.stdout`."""
  return subprocess.Popen(
    main_command(workdir, *overrides, config=config),
    env=env or environment(devices),
    cwd=REPO,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )


def run_main(
  workdir,
  *overrides,
  devices=1,
  config=SMOKE_CONFIG,
  timeout=600,
  check=True,
):
  """Runs to the end; with `check`, a non-zero exit fails with its stderr."""
  cmd = main_command(workdir, *overrides, config=config)
  proc = subprocess.run(
    cmd,
    env=environment(devices),
    capture_output=True,
    text=True,
    timeout=timeout,
    cwd=REPO,
  )
  if check and proc.returncode != 0:
    raise AssertionError(f'{cmd} failed:\n{proc.stderr[-4000:]}')
  return proc
