"""Faster XLA:CPU settings, applied before JAX starts its backends.

XLA:CPU sends most convolutions, including every weight-gradient
convolution, to a library path that runs them at a few GFLOP/s on CPUs
like CI's; `--xla_cpu_experimental_ynn_fusion_type=dot` keeps convolutions
on XLA's own faster path (benchmarks/README.md has the figures). The flag
only concerns the CPU backend, so GPU and TPU runs are unaffected.

Set CNN_JAX_CPU_DEFAULTS=0 to turn this off, or put your own value of the
flag in XLA_FLAGS, which always wins.
"""

import os

CPU_FLAGS = ('--xla_cpu_experimental_ynn_fusion_type=dot',)


def apply() -> None:
  """Adds CPU_FLAGS to XLA_FLAGS unless disabled or already set by the user.

  Has no effect once a JAX backend is initialised, so it runs when cnn_jax
  is imported.
  """
  if os.environ.get('CNN_JAX_CPU_DEFAULTS', '1') == '0':
    return
  flags = os.environ.get('XLA_FLAGS', '')
  for flag in CPU_FLAGS:
    if flag.split('=')[0] not in flags:
      flags = f'{flags} {flag}'.strip()
  os.environ['XLA_FLAGS'] = flags
