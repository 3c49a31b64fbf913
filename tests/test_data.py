"""The data pipeline on the real shared data: counts, statistics, order,
determinism, sharding, eval masks, augmentation and exact resume."""

import json

import numpy as np
import pytest

import cnn_jax.data as data
from cnn_jax.data import augment


def _cfg(name, data_dir='', **fields):
  cfg = data.default_config()
  cfg.name = name
  cfg.data_dir = str(data_dir)
  for key, value in fields.items():
    if '.' in key:
      section, field = key.split('.')
      cfg[section][field] = value
    else:
      cfg[key] = value
  return cfg


@pytest.fixture
def cifar(cifar10_dir):
  return _cfg('cifar10', cifar10_dir, num_threads=0)


def _eval_arrays(cfg, batch=1000):
  images, labels = [], []
  for b in data.eval_iterator(cfg, batch, 0, 1):
    images.append(b['image'][b['mask']])
    labels.append(b['label'][b['mask']])
  return np.concatenate(images), np.concatenate(labels)


def _channel_stats(images):
  """Exact per-channel mean and std of uint8 images, from histograms."""
  values = np.arange(256, dtype=np.float64)
  means, stds = [], []
  for c in range(images.shape[-1]):
    counts = np.bincount(images[..., c].ravel(), minlength=256)
    mean = counts @ values / counts.sum()
    means.append(mean)
    stds.append(np.sqrt(counts @ (values - mean) ** 2 / counts.sum()))
  return np.array(means), np.array(stds)


def _train_split(cfg, batch=1000):
  """The whole train split in stored order, read through the eval path."""
  cfg = cfg.copy_and_resolve_references()
  cfg.eval_split = 'train'
  return _eval_arrays(cfg, batch)


# Counts, statistics and order, against REFERENCE.md and the READMEs.


def test_cifar10_matches_reference(cifar):
  info = data.dataset_info(cifar)
  assert (info.num_classes, info.image_shape) == (10, (32, 32, 3))
  assert (info.num_train, info.num_eval) == (50_000, 10_000)
  images, labels = _train_split(cifar)
  assert images.shape == (50_000, 32, 32, 3) and images.dtype == np.uint8
  assert labels.dtype == np.int32
  np.testing.assert_array_equal(np.bincount(labels), [5000] * 10)
  assert labels[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
  np.testing.assert_array_equal(
    np.bincount(labels[:10_000]),
    [1005, 974, 1032, 1016, 999, 937, 1030, 1001, 1025, 981],
  )
  mean, std = _channel_stats(images)
  np.testing.assert_allclose(mean, [125.3, 123.0, 113.9], atol=0.05)
  np.testing.assert_allclose(std, [63.0, 62.1, 66.7], atol=0.05)
  # The constants used for normalisation are these statistics.
  np.testing.assert_allclose(info.mean, mean, atol=1e-3)
  np.testing.assert_allclose(info.std, std, atol=1e-3)

  test_images, test_labels = _eval_arrays(cifar)
  assert test_images.shape == (10_000, 32, 32, 3)
  np.testing.assert_array_equal(np.bincount(test_labels), [1000] * 10)
  assert test_labels[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
  test_mean, _ = _channel_stats(test_images)
  np.testing.assert_allclose(test_mean, [126.025, 123.709, 114.854], atol=1e-3)


def test_mnist_matches_reference(mnist_dir):
  cfg = _cfg('mnist', mnist_dir, num_threads=0)
  info = data.dataset_info(cfg)
  assert (info.num_classes, info.image_shape) == (10, (28, 28, 1))
  images, labels = _train_split(cfg)
  assert images.shape == (60_000, 28, 28, 1) and images.dtype == np.uint8
  np.testing.assert_array_equal(
    np.bincount(labels),
    [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
  )
  assert labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
  mean, std = _channel_stats(images)
  np.testing.assert_allclose(mean / 255, [0.1307], atol=5e-5)
  np.testing.assert_allclose(std / 255, [0.3081], atol=5e-5)
  np.testing.assert_allclose(info.mean, mean, atol=1e-3)
  np.testing.assert_allclose(info.std, std, atol=1e-3)
  test_images, test_labels = _eval_arrays(cfg)
  assert test_images.shape == (10_000, 28, 28, 1)
  np.testing.assert_array_equal(
    np.bincount(test_labels),
    [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009],
  )


def test_embedded_default_is_real_mnist(mnist_dir):
  cfg = data.default_config()
  assert cfg.name == 'mnist_5k'
  info = data.dataset_info(cfg)
  assert (info.num_train, info.num_eval, info.num_classes) == (4000, 1000, 10)
  images, labels = _train_split(cfg)
  test_images, test_labels = _eval_arrays(cfg)
  np.testing.assert_array_equal(np.bincount(labels), [400] * 10)
  np.testing.assert_array_equal(np.bincount(test_labels), [100] * 10)
  # Digits interleaved: a smoke run's prefix (256 train, 64 test) holds
  # all ten in nearly equal numbers.
  np.testing.assert_array_equal(labels[:20], list(range(10)) * 2)
  assert np.bincount(labels[:256]).min() == 25
  assert np.bincount(test_labels[:64], minlength=10).min() == 6
  mean, std = _channel_stats(images)
  np.testing.assert_allclose(info.mean, mean, atol=1e-3)
  np.testing.assert_allclose(info.std, std, atol=1e-3)
  # Every embedded image is an official MNIST training image with its label.
  mnist = _cfg('mnist', mnist_dir, num_threads=0)
  official, official_labels = _train_split(mnist)
  index = {img.tobytes(): i for i, img in enumerate(official[:6000])}
  both = np.concatenate([images, test_images])
  where = np.array([index.get(img.tobytes(), -1) for img in both])
  assert (where >= 0).all()
  np.testing.assert_array_equal(
    official_labels[where], np.concatenate([labels, test_labels])
  )
  assert len(set(where.tolist())) == 5000  # train and test are disjoint


# Determinism and sharding.


def _ids(it, steps):
  return np.stack([next(it)['id'] for _ in range(steps)])


def test_same_seed_same_batches(cifar):
  a = data.train_iterator(cifar, 128, seed=3, process_index=0, process_count=1)
  b = data.train_iterator(cifar, 128, seed=3, process_index=0, process_count=1)
  c = data.train_iterator(cifar, 128, seed=4, process_index=0, process_count=1)
  for _ in range(3):
    x, y, z = next(a), next(b), next(c)
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])
    assert not np.array_equal(x['id'], z['id'])
    assert not np.array_equal(x['image'], z['image'])


def test_threads_do_not_change_batches(cifar):
  threaded = cifar.copy_and_resolve_references()
  threaded.num_threads = 2
  a = data.train_iterator(cifar, 64, 0, 0, 1)
  with data.train_iterator(threaded, 64, 0, 0, 1) as b:
    for _ in range(20):
      x, y = next(a), next(b)
      np.testing.assert_array_equal(x['image'], y['image'])
      np.testing.assert_array_equal(x['id'], y['id'])


def test_shuffle_seed_overrides_seed(cifar):
  cifar.shuffle_seed = 7
  a = data.train_iterator(cifar, 32, seed=1, process_index=0, process_count=1)
  b = data.train_iterator(cifar, 32, seed=2, process_index=0, process_count=1)
  np.testing.assert_array_equal(_ids(a, 2), _ids(b, 2))


@pytest.mark.parametrize('num_examples', [50_000, 10_001])
@pytest.mark.parametrize('process_count', [1, 2, 8])
def test_train_shards_are_disjoint_and_cover_the_epoch(
  cifar, num_examples, process_count
):
  cifar.train_limit = num_examples
  cifar.augment.policy = 'none'
  global_batch = 400
  iters = [
    data.train_iterator(cifar, global_batch, 0, p, process_count)
    for p in range(process_count)
  ]
  steps = iters[0].steps_per_epoch
  assert steps == num_examples // global_batch
  # (steps, global batch): process p's ids are columns [p*b, (p+1)*b).
  epoch = np.concatenate([_ids(it, steps) for it in iters], axis=1)
  ids = epoch.ravel()
  # Each example at most once; all but the epoch's dropped remainder.
  assert len(np.unique(ids)) == len(ids) == steps * global_batch
  assert ids.min() >= 0 and ids.max() < num_examples
  if num_examples % global_batch == 0:
    np.testing.assert_array_equal(np.sort(ids), np.arange(num_examples))
  # The next epoch starts with a different order.
  second = np.concatenate([_ids(it, 1) for it in iters], axis=1)
  assert not np.array_equal(second[0], epoch[0])


@pytest.mark.parametrize('process_count', [2, 8])
def test_global_batch_does_not_depend_on_process_count(cifar, process_count):
  one = data.train_iterator(cifar, 64, 5, 0, 1)
  many = [
    data.train_iterator(cifar, 64, 5, p, process_count)
    for p in range(process_count)
  ]
  for _ in range(3):
    whole = next(one)
    parts = [next(it) for it in many]
    assert parts[0]['image'].shape[0] == 64 // process_count
    for key in whole:
      np.testing.assert_array_equal(
        np.concatenate([p[key] for p in parts]), whole[key]
      )


@pytest.mark.parametrize('num_examples', [50_000, 10_001])
@pytest.mark.parametrize('process_count', [1, 2, 8])
def test_eval_mask_covers_the_split_exactly_once(
  cifar, num_examples, process_count
):
  cifar.eval_split = 'train'
  cifar.eval_limit = num_examples
  global_batch = 1024
  images, labels = _train_split(_cfg('cifar10', cifar.data_dir))
  seen = []
  counts = []
  for p in range(process_count):
    batches = list(data.eval_iterator(cifar, global_batch, p, process_count))
    counts.append(len(batches))
    for b in batches:
      assert b['image'].shape == (global_batch // process_count, 32, 32, 3)
      assert b['mask'].dtype == bool
      ids = b['id'][b['mask']]
      assert (b['id'][~b['mask']] == -1).all()
      assert not b['image'][~b['mask']].any()
      np.testing.assert_array_equal(b['image'][b['mask']], images[ids])
      np.testing.assert_array_equal(b['label'][b['mask']], labels[ids])
      seen.append(ids)
  assert len(set(counts)) == 1
  assert counts[0] == -(-num_examples // global_batch)
  np.testing.assert_array_equal(
    np.sort(np.concatenate(seen)), np.arange(num_examples)
  )


# Augmentation.


def test_crop_flip_is_a_shifted_mirrored_view():
  rng = np.random.default_rng(0)
  images = rng.integers(1, 256, (3, 32, 32, 3), dtype=np.uint8)
  oy, ox = np.array([0, 4, 8]), np.array([8, 4, 0])
  out = augment.crop_flip(images, oy, ox, np.array([False, False, True]), 4)
  assert out.shape == images.shape and out.dtype == np.uint8
  # Offset (0, 8): the image moved down 4 and left 4, zeros enter.
  np.testing.assert_array_equal(out[0, 4:, :28], images[0, :28, 4:])
  assert not out[0, :4].any() and not out[0, :, 28:].any()
  np.testing.assert_array_equal(out[1], images[1])  # centred: unchanged
  # Offset (8, 0), then mirrored: up 4 and, mirrored, left 4.
  flipped = images[2, :, ::-1]
  np.testing.assert_array_equal(out[2, :28, :28], flipped[4:, 4:])
  assert not out[2, 28:].any() and not out[2, :, 28:].any()
  reflect = augment.crop_flip(
    images, oy, ox, np.zeros(3, bool), 4, pad_mode='reflect'
  )
  assert reflect.all()  # no zero padding
  np.testing.assert_array_equal(reflect[0, 4:, :28], images[0, :28, 4:])


def test_train_batches_are_augmented_uint8(cifar):
  cifar.augment.policy = 'none'
  plain = next(data.train_iterator(cifar, 256, 0, 0, 1))
  cifar.augment.policy = 'crop_flip'
  augmented = next(data.train_iterator(cifar, 256, 0, 0, 1))
  np.testing.assert_array_equal(plain['id'], augmented['id'])
  assert augmented['image'].shape == (256, 32, 32, 3)
  assert augmented['image'].dtype == np.uint8
  changed = (plain['image'] != augmented['image']).any(axis=(1, 2, 3))
  # Only the centred, unmirrored crop (1 in 162) leaves an image as it was.
  assert changed.mean() > 0.95
  # Zero padding shows as all-zero borders on shifted images.
  assert (augmented['image'][:, 0] == 0).all(axis=(1, 2)).any()


def test_mnist_family_is_not_mirrored_by_default():
  cfg = data.default_config()
  cfg.num_threads = 0
  batch = next(data.train_iterator(cfg, 100, 0, 0, 1))
  images, _ = _train_split(cfg)
  np.testing.assert_array_equal(batch['image'], images[batch['id']])


def test_inception_crop_and_center_crop_shapes():
  from PIL import Image

  rng = np.random.default_rng(0)
  image = Image.fromarray(rng.integers(0, 256, (300, 500, 3), dtype=np.uint8))
  for _ in range(20):
    left, top, right, bottom = augment.inception_crop_box(500, 300, rng)
    assert 0 <= left < right <= 500 and 0 <= top < bottom <= 300
    area = (right - left) * (bottom - top) / (500 * 300)
    assert 0.08 - 1e-9 <= area <= 1 + 1e-9
    assert 3 / 4 - 1e-9 <= (right - left) / (bottom - top) <= 4 / 3 + 1e-9
  out = augment.inception_crop_flip(image, rng, 224, (0.08, 1), (3 / 4, 4 / 3))
  assert out.shape == (224, 224, 3) and out.dtype == np.uint8
  center = augment.center_crop(image, 224, 256)
  assert center.shape == (224, 224, 3) and center.dtype == np.uint8
  # A tall strip cannot fit any sampled crop: the fallback stays in range.
  box = augment.inception_crop_box(10, 1000, rng, attempts=0)
  assert box[2] - box[0] == 10 and abs((box[3] - box[1]) - 10 / 0.75) < 1e-6


def test_normalize_uses_dataset_statistics(cifar):
  info = data.dataset_info(cifar)
  images, _ = _eval_arrays(cifar)
  out = np.asarray(data.normalize(images, info.mean, info.std))
  assert out.dtype == np.float32
  np.testing.assert_allclose(out.mean((0, 1, 2)), 0, atol=0.02)
  np.testing.assert_allclose(out.std((0, 1, 2)), 1, atol=0.02)


# Resume.


@pytest.mark.parametrize('stop', [7, 25, 61])
def test_resume_gives_the_uninterrupted_batches(cifar, stop):
  cifar.train_limit = 1000  # 10 steps per epoch: resume across epochs
  straight = data.train_iterator(cifar, 100, 0, 0, 1)
  expected = [next(straight) for _ in range(80)]
  first = data.train_iterator(cifar, 100, 0, 0, 1)
  for _ in range(stop):
    next(first)
  state = json.loads(json.dumps(first.get_state()))
  assert (state['epoch'], state['step_in_epoch']) == divmod(stop, 10)
  resumed = data.train_iterator(cifar, 100, 0, 0, 1)
  resumed.set_state(state)
  for step in range(stop, 80):
    batch = next(resumed)
    np.testing.assert_array_equal(batch['id'], expected[step]['id'])
    np.testing.assert_array_equal(batch['image'], expected[step]['image'])


def test_resume_on_another_process_count(cifar):
  one = data.train_iterator(cifar, 64, 0, 0, 1)
  for _ in range(5):
    next(one)
  state = one.get_state()
  expected = next(one)['id']
  halves = [data.train_iterator(cifar, 64, 0, p, 2) for p in range(2)]
  for it in halves:
    it.set_state(state)
  np.testing.assert_array_equal(
    np.concatenate([next(it)['id'] for it in halves]), expected
  )


def test_state_survives_an_orbax_json_checkpoint(cifar, tmp_path):
  import orbax.checkpoint as ocp

  it = data.train_iterator(cifar, 50, 0, 0, 1)
  for _ in range(3):
    next(it)
  with ocp.CheckpointManager(tmp_path / 'ckpt') as manager:
    manager.save(3, args=ocp.args.JsonSave(it.get_state()))
    manager.wait_until_finished()
    restored = manager.restore(3, args=ocp.args.JsonRestore())
  assert restored == it.get_state()


def test_set_state_refuses_another_stream(cifar):
  it = data.train_iterator(cifar, 50, 0, 0, 1)
  state = it.get_state()
  with pytest.raises(ValueError, match='global_batch_size=50'):
    data.train_iterator(cifar, 100, 0, 0, 1).set_state(state)
  with pytest.raises(ValueError, match='seed 0'):
    data.train_iterator(cifar, 50, 1, 0, 1).set_state(state)


def test_bad_batch_and_process_arguments(cifar):
  with pytest.raises(ValueError, match='multiple of the number of processes'):
    data.train_iterator(cifar, 100, 0, 0, 8)
  with pytest.raises(ValueError, match='process_index=2'):
    data.eval_iterator(cifar, 100, 2, 2)
  cifar.train_limit = 10
  with pytest.raises(ValueError, match='fewer than one global batch'):
    data.train_iterator(cifar, 16, 0, 0, 1)
  cifar.augment.policy = 'inception'
  with pytest.raises(ValueError, match="'inception' is for streamed"):
    data.train_iterator(cifar, 8, 0, 0, 1)


def test_defaults_to_this_jax_process(cifar):
  it = data.train_iterator(cifar, 32, 0)
  assert it.batch_size == 32 and next(it)['image'].shape[0] == 32
