"""Trains and evaluates a model from a config file.

  python -m cnn_jax.main --config=configs/resnet20_cifar10.py --workdir=DIR \
      --config.train.num_epochs=2

Running the same command again resumes from the latest checkpoint in DIR.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from cnn_jax import train

_WORKDIR = flags.DEFINE_string('workdir', None, 'Where to write the run.')
_CONFIG = config_flags.DEFINE_config_file(
  'config',
  None,
  'An experiment config file, e.g. configs/default.py.',
  lock_config=True,
)
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.info('Config:\n%s', _CONFIG.value)
  train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == '__main__':
  app.run(main)
