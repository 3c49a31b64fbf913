"""Trains and evaluates a model from a config file.

  python -m cnn_jax.main --config=configs/resnet20_cifar10.py --workdir=DIR \
      --config.train.num_epochs=2

Running the same command again resumes from the latest checkpoint in DIR.
"""

import os
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from cnn_jax import checkpoint, data, errors, train

_WORKDIR = flags.DEFINE_string('workdir', None, 'Where to write the run.')
_CONFIG = config_flags.DEFINE_config_file(
  'config',
  None,
  'An experiment config file, e.g. configs/default.py.',
  lock_config=True,
)
flags.mark_flags_as_required(['config', 'workdir'])

# Errors whose message already says what is wrong and what fixes it; a
# traceback would only bury it.
_USER_ERRORS = (
  errors.ConfigError,
  data.DataError,
  checkpoint.CheckpointMismatchError,
  train.NonFiniteLossError,
)


def parse_flags(argv: list[str]) -> list[str]:
  """Parses flags; a mistyped --config.a.b field exits with a short error."""
  for arg in argv[1:]:
    if arg.startswith('--config='):
      path = arg.removeprefix('--config=').split(':')[0]
      if not os.path.isfile(path):
        sys.exit(
          f'FATAL --config={path}: no such file. The experiment configs '
          'are in configs/, e.g. configs/default.py.'
        )
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    # A ConfigError from the config file's get_config arrives re-raised with
    # the traceback in its message; the first one raised has the message.
    cause, first = e, None
    while cause is not None:
      if isinstance(cause, errors.ConfigError):
        first = cause
      cause = cause.__cause__ or cause.__context__
    if first is not None:
      sys.exit(f'FATAL ConfigError: {first}')
    sys.exit(f'FATAL Flags parsing error: {e}')
  except (AttributeError, KeyError) as e:
    # ml_collections raises these for an override of a field that does not
    # exist; its message carries a "Did you mean" suggestion.
    bad = ' '.join(a for a in argv[1:] if a.startswith('--config.'))
    hint = re.search(r'Did you mean "([^"]+)"', str(e))
    suggestion = f' Did you mean {hint.group(1)}?' if hint else ''
    sys.exit(
      f'FATAL {bad}: no such config field.{suggestion} Field '
      'names are listed in the config file and in cnn_jax/config_lib.py.'
    )


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.info('Config:\n%s', _CONFIG.value)
  try:
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except _USER_ERRORS as e:
    sys.exit(f'FATAL {type(e).__name__}: {e}')


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
