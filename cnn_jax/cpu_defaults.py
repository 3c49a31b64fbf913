"""Faster defaults for training on CPU, each one overridable.

Three settings, all measured in benchmarks/README.md:

1. XLA flag `--xla_cpu_experimental_ynn_fusion_type=dot`. By default
   XLA:CPU sends most convolutions, including every weight-gradient
   convolution, to a library path that runs them at a few GFLOP/s on CPUs
   like CI's. The flag keeps convolutions on XLA's own faster path and
   leaves only matrix products to that library. The flag concerns only the
   CPU backend, so GPU and TPU runs are unaffected. It is added to XLA_FLAGS
   when cnn_jax is imported, because XLA reads the flags once, when the
   first backend starts.
2. Chunked convolution weight gradients (`cnn_jax.models.fast_conv`), used
   by `cnn_jax.models.layers.conv` when the default backend is CPU and the
   process sees one device (see `use_fast_conv`). They stop XLA:CPU from
   recomputing BatchNorm/ReLU chains inside the transposes that feed each
   weight gradient. The forward pass is unchanged.
3. Train-mode BatchNorm with a hand-written backward pass whose per-channel
   sums are products with a vector of ones (`cnn_jax.models.fast_bn`), used
   by `cnn_jax.models.layers.BatchNorm` when the default backend is CPU and
   the statistics are over the whole batch. XLA:CPU's own column
   reductions were most of ResNet-50's step.

Settings 2 and 3 change the order of summation only: losses and gradients
equal the plain path's to float rounding (tests/test_cpu_defaults.py), and
eval-mode outputs are bit-identical. They are kept to CPU, where they pay.

Overrides, by environment variable:
- CNN_JAX_CPU_DEFAULTS=0 turns all three off, which gives the plain JAX/XLA
  path.
- CNN_JAX_FAST_CONV=0 or 1 and CNN_JAX_FAST_BN=0 or 1 turn setting 2 or 3
  off, or force it on, on any backend.
- Your own value of the flag in XLA_FLAGS always wins over setting 1.
"""

import os

CPU_FLAGS = ('--xla_cpu_experimental_ynn_fusion_type=dot',)


def enabled() -> bool:
  """False when CNN_JAX_CPU_DEFAULTS=0 asks for the plain path."""
  return os.environ.get('CNN_JAX_CPU_DEFAULTS', '1') != '0'


def apply() -> None:
  """Adds CPU_FLAGS to XLA_FLAGS unless disabled or already set by the user.

  Has no effect once a JAX backend is initialised, so it runs when cnn_jax
  is imported.
  """
  if not enabled():
    return
  flags = os.environ.get('XLA_FLAGS', '')
  for flag in CPU_FLAGS:
    if flag.split('=')[0] not in flags:
      flags = f'{flags} {flag}'.strip()
  os.environ['XLA_FLAGS'] = flags


_OFF = ('0', 'false', 'no')
_ON = ('1', 'true', 'yes')


def _cpu_default_setting(variable: str) -> bool:
  setting = os.environ.get(variable, '').lower()
  if setting in _OFF:
    return False
  if setting in _ON:
    return True
  if not enabled():
    return False
  import jax  # Imported late: importing cnn_jax must not start a backend.

  return jax.default_backend() == 'cpu'


def use_fast_conv() -> bool:
  """Whether `layers.conv` takes the chunked weight gradient.

  Yes on the CPU backend with a single device, unless CNN_JAX_FAST_CONV=0
  or CNN_JAX_CPU_DEFAULTS=0. CNN_JAX_FAST_CONV=1 forces it on any backend.
  Decided when a model is traced, so the environment variable can change
  between two jitted functions in one process.

  Not by default with several devices (simulated CPU devices, or several
  processes): the chunks of the batch then span devices, so every chunk
  ends in its own all-reduce, over subgroups of the devices. XLA:CPU runs
  independent loops at once, each holding a thread while it waits for the
  other devices, and on 2 cores this deadlocked (seen in CI and reproduced
  here: rendezvous over devices [0, 2, 4, 6], [1, 3, 5, 7] and all 8 waiting
  on one another until XLA aborted).
  """
  if os.environ.get('CNN_JAX_FAST_CONV', '').lower() in _ON:
    return True
  if not _cpu_default_setting('CNN_JAX_FAST_CONV'):
    return False
  import jax

  return jax.device_count() == 1


def use_fast_bn() -> bool:
  """Whether `layers.BatchNorm` trains through `cnn_jax.models.fast_bn`.

  As `use_fast_conv`, with CNN_JAX_FAST_BN.
  """
  return _cpu_default_setting('CNN_JAX_FAST_BN')


def active_flags() -> list[str]:
  """The XLA_FLAGS now in the environment, one per item."""
  return os.environ.get('XLA_FLAGS', '').split()


def describe() -> dict[str, object]:
  """What is in force, for benchmark and run records."""
  return {
    'cpu_defaults': enabled(),
    'fast_conv': use_fast_conv(),
    'fast_bn': use_fast_bn(),
    'xla_flags': ' '.join(active_flags()),
  }
