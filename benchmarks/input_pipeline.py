r"""Images per second delivered by the input pipeline, as JSON lines.

Run:
  python benchmarks/input_pipeline.py [--cifar_dir=../shared/datasets/cifar10]

Measures, on this machine:
- CIFAR-10 train batches (in memory, uint8, pad-crop-flip per batch);
- an image-folder stream: real CIFAR-10 images written as PNGs to a
  temporary folder, decoded and Inception-cropped to 224 (and the eval
  view), in the main process or in grain worker processes.

Each line: {"pipeline", "batch_size", "workers", "images_per_s", ...}.
The first batches (start-up, worker spawn) are not timed.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import tempfile
import time

from PIL import Image

import cnn_jax.data as data
from cnn_jax.data import catalog, raw

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_CIFAR = REPO.parent / 'shared' / 'datasets' / 'cifar10'


def _rate(batches, steps: int, warmup: int) -> float:
  for _ in range(warmup):
    next(batches)
  start = time.perf_counter()
  images = sum(len(next(batches)['image']) for _ in range(steps))
  return images / (time.perf_counter() - start)


def _report(**fields) -> None:
  print(json.dumps(fields), flush=True)


def bench_cifar(cifar_dir: pathlib.Path, batch: int, steps: int) -> None:
  cfg = data.default_config()
  cfg.name = 'cifar10'
  cfg.data_dir = str(cifar_dir)
  for threads in (0, 2):
    cfg.num_threads = threads
    it = data.train_iterator(cfg, batch, 0, process_index=0, process_count=1)
    with it:
      rate = _rate(it, steps, warmup=5)
    _report(
      pipeline='cifar10_train_in_memory',
      augment='crop_flip',
      batch_size=batch,
      threads=threads,
      workers=0,
      images_per_s=round(rate),
    )


def write_pngs(cifar_dir: pathlib.Path, root: pathlib.Path, count: int):
  """The first `count` CIFAR-10 train images as root/train/<class>/*.png."""
  found = raw.find('cifar10', cifar_dir)
  images, labels, _ = raw.read(found, 'train')
  for split, rows in (('train', range(count)), ('test', range(count // 4))):
    for i in rows:
      folder = root / split / catalog.CIFAR10_CLASSES[labels[i]]
      folder.mkdir(parents=True, exist_ok=True)
      Image.fromarray(images[i]).save(folder / f'{i:05d}.png')


def bench_folder(root: pathlib.Path, batch: int, steps: int, workers) -> None:
  cfg = data.default_config()
  cfg.name = 'cifar10_pngs'
  cfg.data_dir = str(root)
  cfg.source = 'folder'
  for count in workers:
    cfg.worker_count = count
    it = data.train_iterator(cfg, batch, 0, process_index=0, process_count=1)
    with it:
      rate = _rate(it, steps, warmup=max(2, 2 * count))
    _report(
      pipeline='image_folder_train_stream',
      augment='inception_crop_224_flip',
      source='32x32 PNG files',
      batch_size=batch,
      threads=cfg.num_threads,
      workers=count,
      images_per_s=round(rate),
    )
  cfg.worker_count = 0
  it = data.eval_iterator(cfg, batch, process_index=0, process_count=1)
  start = time.perf_counter()
  images = sum(int(b['mask'].sum()) for b in it)
  _report(
    pipeline='image_folder_eval_stream',
    augment='resize_256_center_crop_224',
    batch_size=batch,
    threads=cfg.num_threads,
    workers=0,
    images_per_s=round(images / (time.perf_counter() - start)),
  )


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--cifar_dir', default=str(DEFAULT_CIFAR))
  parser.add_argument('--batch_size', type=int, default=128)
  parser.add_argument('--steps', type=int, default=200)
  parser.add_argument('--stream_batch_size', type=int, default=64)
  parser.add_argument('--stream_steps', type=int, default=20)
  parser.add_argument('--pngs', type=int, default=4000)
  parser.add_argument('--workers', default='0,2')
  args = parser.parse_args()
  cifar_dir = pathlib.Path(args.cifar_dir)
  bench_cifar(cifar_dir, args.batch_size, args.steps)
  with tempfile.TemporaryDirectory(prefix='cnn_jax_pngs_') as tmp:
    write_pngs(cifar_dir, pathlib.Path(tmp), args.pngs)
    workers = [int(w) for w in args.workers.split(',')]
    bench_folder(
      pathlib.Path(tmp), args.stream_batch_size, args.stream_steps, workers
    )


if __name__ == '__main__':
  main()
