"""Test set-up: 8 simulated CPU devices, and paths to the shared data."""

import os

from tests.launch import COLLECTIVE_TIMEOUT

# Before JAX starts its CPU backend: the sharding tests need 8 devices.
_flags = os.environ.get('XLA_FLAGS', '')
if 'xla_force_host_platform_device_count' not in _flags:
  _flags = f'{_flags} --xla_force_host_platform_device_count=8'
if 'collective_call_terminate_timeout' not in _flags:
  _flags = f'{_flags} {COLLECTIVE_TIMEOUT}'
os.environ['XLA_FLAGS'] = _flags.strip()

import pathlib  # noqa: E402

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / 'shared'
DATASETS = SHARED / 'datasets'


@pytest.fixture(scope='session')
def cifar10_dir() -> pathlib.Path:
  path = DATASETS / 'cifar10'
  if not (path / 'data_batch_1.bin').exists():
    pytest.fail(f'CIFAR-10 binary batches not found in {path}')
  return path


@pytest.fixture(scope='session')
def mnist_dir() -> pathlib.Path:
  path = DATASETS / 'mnist'
  if not (path / 'train-images-idx3-ubyte.gz').exists():
    pytest.fail(f'MNIST IDX files not found in {path}')
  return path
