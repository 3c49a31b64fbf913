"""Data parallelism over every device of every process.

One code path serves a laptop CPU, simulated CPU devices, a GPU box and a
multi-host pod: a 1-D mesh over all devices with a `data` axis. Batches are
sharded on that axis and params are replicated; `jax.jit` inserts the
collectives, so gradients and BatchNorm statistics are global-batch means
without any per-device code.
"""

from __future__ import annotations

import os

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from cnn_jax import errors

DATA_AXIS = 'data'

# Variables that mark a cluster that jax.distributed can discover itself.
_CLUSTER_ENV = (
  'SLURM_JOB_ID',
  'TPU_WORKER_HOSTNAMES',
  'OMPI_COMM_WORLD_SIZE',
  'JAX_COORDINATOR_ADDRESS',
)


def maybe_initialize_distributed(parallel: ml_collections.ConfigDict) -> None:
  """Starts jax.distributed when the config or the environment asks for it.

  `parallel.coordinator_address`, `num_processes` and `process_id` are
  passed through when set (e.g. '127.0.0.1:1234' for a local multi-process
  run); otherwise JAX discovers the cluster (Slurm, Cloud TPU, MPI).
  """
  wanted = parallel.get('distributed', False)
  if not wanted and not any(v in os.environ for v in _CLUSTER_ENV):
    return
  if jax.distributed.is_initialized():
    return
  kwargs = {}
  if parallel.get('coordinator_address'):
    kwargs = dict(
      coordinator_address=parallel.coordinator_address,
      num_processes=parallel.num_processes,
      process_id=parallel.process_id,
    )
  jax.distributed.initialize(**kwargs)
  logging.info(
    'jax.distributed: process %d of %d, %d local / %d global devices',
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )


def make_mesh(num_devices: int | None = None) -> jax.sharding.Mesh:
  """A 1-D mesh over the first `num_devices` devices (all by default)."""
  devices = jax.devices()
  if num_devices is not None:
    if num_devices > len(devices):
      raise ValueError(
        f'asked for {num_devices} devices but only {len(devices)} exist; set '
        'XLA_FLAGS=--xla_force_host_platform_device_count=N to simulate more '
        'CPU devices.'
      )
    devices = devices[:num_devices]
  return jax.sharding.Mesh(
    np.array(devices), (DATA_AXIS,), axis_types=(AxisType.Auto,)
  )


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch_size(
  global_batch: int, mesh: jax.sharding.Mesh, flag: str
) -> None:
  """Fails early when a batch cannot be split evenly over devices/hosts."""
  if global_batch <= 0:
    raise errors.ConfigError(
      f'{flag}={global_batch}: a batch needs at least one example per '
      f'device; choose a positive multiple of {mesh.size}.'
    )
  for count, what in (
    (mesh.size, 'devices'),
    (jax.process_count(), 'processes'),
  ):
    if global_batch % count:
      raise errors.ConfigError(
        f'{flag}={global_batch} is not divisible by the {count} {what}; '
        f'choose a multiple of {count}.'
      )


# What the steps read; example ids stay on the host.
DEVICE_KEYS = ('image', 'label', 'mask')


def global_batch(
  local: dict[str, np.ndarray], mesh: jax.sharding.Mesh
) -> dict[str, jax.Array]:
  """Assembles each process's slice of a batch into global sharded arrays."""
  sharding = batch_sharded(mesh)
  return {
    k: jax.make_array_from_process_local_data(sharding, v)
    for k, v in local.items()
    if k in DEVICE_KEYS
  }
