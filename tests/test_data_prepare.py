"""`python -m cnn_jax.data.prepare`: local files -> tfds ArrayRecord -> back.

Runs without TensorFlow (it is not installed here). The full CIFAR-10 round
trip takes about a minute and is marked slow; slices run by default.
"""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import cnn_jax.data as data
from cnn_jax.data import catalog, raw
from cnn_jax.data.prepare import prepare

REPO = pathlib.Path(__file__).resolve().parents[1]


def _tfds_cfg(name, data_dir, **fields):
  cfg = data.default_config()
  cfg.name = name
  cfg.data_dir = str(data_dir)
  cfg.source = 'tfds'
  cfg.num_threads = 0
  cfg.update(fields)
  return cfg


def _all(cfg, split):
  cfg = cfg.copy_and_resolve_references()
  cfg.eval_split = split
  images, labels = [], []
  for batch in data.eval_iterator(cfg, 500, 0, 1):
    images.append(batch['image'][batch['mask']])
    labels.append(batch['label'][batch['mask']])
  return np.concatenate(images), np.concatenate(labels)


def _raw(name, folder, split):
  return raw.read(raw.find(name, pathlib.Path(folder)), split)[:2]


@pytest.mark.parametrize('name', ['cifar10', 'mnist'])
def test_prepare_slice_round_trip(name, cifar10_dir, mnist_dir, tmp_path):
  source = cifar10_dir if name == 'cifar10' else mnist_dir
  path = prepare(name, source, tmp_path, max_examples_per_split=300)
  version = '3.0.2' if name == 'cifar10' else '3.0.1'
  assert path == tmp_path / name / version
  info = json.loads((path / 'dataset_info.json').read_text())
  assert info['name'] == name and info['fileFormat'] == 'array_record'
  assert {s['name'] for s in info['splits']} == {'train', 'test'}
  features = json.loads((path / 'features.json').read_text())
  assert {'image', 'label'} <= set(features['featuresDict']['features'])

  cfg = _tfds_cfg(name, tmp_path)
  got = data.dataset_info(cfg)
  assert (got.num_train, got.num_eval) == (300, 300)
  assert got.location == str(path)
  for split in ('train', 'test'):
    images, labels = _all(cfg, split)
    expected_images, expected_labels = _raw(name, source, split)
    np.testing.assert_array_equal(images, expected_images[:300])
    np.testing.assert_array_equal(labels, expected_labels[:300])


def test_prepare_again_keeps_or_overwrites(mnist_dir, tmp_path):
  path = prepare('mnist', mnist_dir, tmp_path, max_examples_per_split=20)
  stamp = (path / 'dataset_info.json').stat().st_mtime_ns
  assert prepare('mnist', mnist_dir, tmp_path) == path  # kept as it was
  assert (path / 'dataset_info.json').stat().st_mtime_ns == stamp
  prepare(
    'mnist', mnist_dir, tmp_path, max_examples_per_split=30, overwrite=True
  )
  assert data.dataset_info(_tfds_cfg('mnist', tmp_path)).num_train == 30


def test_prepare_command_line(mnist_dir, tmp_path):
  command = [sys.executable, '-m', 'cnn_jax.data.prepare', 'mnist']
  done = subprocess.run(
    [
      *command,
      f'--source={mnist_dir}',
      f'--data_dir={tmp_path}',
      '--max_examples_per_split=50',
    ],
    capture_output=True,
    text=True,
    cwd=REPO,
    timeout=120,
  )
  assert done.returncode == 0, done.stderr
  assert 'train 50, test 50 examples' in done.stdout
  assert '--config.data.data_dir=' in done.stdout
  missing = subprocess.run(
    [*command, f'--source={tmp_path / "nothing"}', f'--data_dir={tmp_path}'],
    capture_output=True,
    text=True,
    cwd=REPO,
    timeout=120,
  )
  assert missing.returncode == 1
  assert 'does not exist' in missing.stderr
  assert 'Traceback' not in missing.stderr


def test_prepare_stops_on_a_bad_checksum(cifar10_dir, tmp_path):
  source = tmp_path / 'source'
  source.mkdir()
  for name in [f'data_batch_{i}.bin' for i in range(1, 6)]:
    (source / name).symlink_to(cifar10_dir / name)
  content = bytearray((cifar10_dir / 'test_batch.bin').read_bytes())
  content[-1] ^= 1
  (source / 'test_batch.bin').write_bytes(content)
  with pytest.raises(data.CorruptDataError, match='test_batch.bin'):
    prepare('cifar10', source, tmp_path / 'out')
  assert not (tmp_path / 'out' / 'cifar10').exists()


def _png_folder(root, images, labels, per_class):
  for split, offset in (('train', 0), ('test', 5000)):
    for c, name in enumerate(catalog.CIFAR10_CLASSES):
      folder = root / split / name
      folder.mkdir(parents=True)
      picked = offset + np.flatnonzero(labels[offset:] == c)[:per_class]
      for i in picked:
        Image.fromarray(images[i]).save(folder / f'{i:05d}.png')


@pytest.fixture
def png_root(cifar10_dir, tmp_path):
  root = tmp_path / 'pngs'
  _png_folder(root, *_raw('cifar10', cifar10_dir, 'test'), per_class=4)
  return root


def test_prepare_image_folder_streams_like_the_folder(png_root, tmp_path):
  path = prepare('my_pngs', png_root, tmp_path / 'tfds')
  assert path == tmp_path / 'tfds' / 'my_pngs' / '1.0.0'
  from_tfds = _tfds_cfg('my_pngs', tmp_path / 'tfds')
  from_folder = _tfds_cfg('my_pngs', png_root, source='folder')
  for cfg in (from_tfds, from_folder):
    cfg.augment.image_size = 32
    cfg.augment.resize_size = 32
  info = data.dataset_info(from_tfds)
  assert info.class_names == catalog.CIFAR10_CLASSES
  assert (info.num_train, info.num_eval) == (40, 40)
  a = data.train_iterator(from_tfds, 8, 0, 0, 1)
  b = data.train_iterator(from_folder, 8, 0, 0, 1)
  for _ in range(6):
    x, y = next(a), next(b)
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])
  # The eval view of 32x32 images at size 32 is the stored image itself.
  tfds_images, tfds_labels = _all(from_tfds, 'test')
  pngs = sorted((png_root / 'test').glob('*/*.png'))
  np.testing.assert_array_equal(
    tfds_images, np.stack([np.asarray(Image.open(p)) for p in pngs])
  )
  np.testing.assert_array_equal(tfds_labels, np.repeat(np.arange(10), 4))


def test_prepare_image_folder_stops_on_a_bad_image(png_root, tmp_path):
  bad = sorted((png_root / 'test' / 'ship').iterdir())[1]
  bad.write_bytes(b'\x89PNG\r\n\x1a\n but not really')
  with pytest.raises(data.CorruptDataError, match=str(bad)):
    prepare('my_pngs', png_root, tmp_path / 'tfds')
  assert not (tmp_path / 'tfds' / 'my_pngs').exists()


def test_tfrecord_datasets_are_refused_with_a_fix(mnist_dir, tmp_path):
  path = prepare('mnist', mnist_dir, tmp_path, max_examples_per_split=10)
  info_file = path / 'dataset_info.json'
  info = json.loads(info_file.read_text())
  info['fileFormat'] = 'tfrecord'
  info_file.write_text(json.dumps(info))
  with pytest.raises(data.CorruptDataError, match='ArrayRecord'):
    data.train_iterator(_tfds_cfg('mnist', tmp_path), 8, 0, 0, 1)


@pytest.mark.slow
def test_prepare_full_cifar10_is_bit_identical(cifar10_dir, tmp_path):
  done = subprocess.run(
    [
      sys.executable,
      '-m',
      'cnn_jax.data.prepare',
      'cifar10',
      f'--source={cifar10_dir}',
      f'--data_dir={tmp_path}',
    ],
    capture_output=True,
    text=True,
    cwd=REPO,
    timeout=600,
  )
  assert done.returncode == 0, done.stderr
  assert 'train 50,000, test 10,000 examples' in done.stdout
  cfg = _tfds_cfg('cifar10', tmp_path)
  for split, count in (('train', 50_000), ('test', 10_000)):
    images, labels = _all(cfg, split)
    expected_images, expected_labels = _raw('cifar10', cifar10_dir, split)
    assert len(images) == count
    np.testing.assert_array_equal(images, expected_images)
    np.testing.assert_array_equal(labels, expected_labels)
