"""Augmentation: whole-batch numpy for in-memory data, per image for streams.

Everything here returns uint8 images. Normalisation is not done on the
host: `normalize` below is the one place it happens, and the train and eval
steps call it on device, inside jit, so the host never builds float32
batches (four times the bytes to move).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from cnn_jax.data.errors import CorruptDataError


def normalize(images: Any, mean: Sequence[float], std: Sequence[float]):
  """Converts uint8 images to float32 and standardises each channel.

  This is the ONLY place in cnn_jax where images are normalised. The input
  pipeline emits uint8 (see `train_iterator`); the jitted train and eval
  steps call this on device.

  Args:
    images: uint8 (or any numeric) array (..., C), a jax or numpy array.
    mean: per-channel mean on the 0..255 scale, length C.
    std: per-channel standard deviation on the 0..255 scale, length C.

  Returns:
    A float32 jax array of the same shape, (images - mean) / std.
  """
  # Imported here: the host pipeline and grain workers never need jax.
  import jax.numpy as jnp

  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)
  return (jnp.asarray(images).astype(jnp.float32) - mean) / std


# In-memory datasets: one vectorised gather per batch.


def sample_crop_flip(
  rng: np.random.Generator, n: int, pad: int, flip: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Draws crop offsets in [0, 2 * pad] and flip decisions for n images."""
  offsets = rng.integers(0, 2 * pad + 1, size=(2, n))
  flips = rng.random(n) < 0.5
  if not flip:
    flips[:] = False
  return offsets[0], offsets[1], flips


def crop_flip(
  images: np.ndarray,
  offset_y: np.ndarray,
  offset_x: np.ndarray,
  flips: np.ndarray,
  pad: int,
  pad_mode: str = 'constant',
) -> np.ndarray:
  """Pads, crops back to the input size and mirrors a batch in one gather.

  The CIFAR recipe of He et al. 2016 (sec. 4.2): pad 4 pixels on each side,
  take a random crop of the original size, flip half of the images.

  Args:
    images: uint8 (B, H, W, C).
    offset_y: int (B,), the crop's top row in the padded image, 0..2*pad.
    offset_x: int (B,), the crop's left column in the padded image.
    flips: bool (B,), mirror left-right where True.
    pad: pixels added on each side before cropping.
    pad_mode: 'constant' (zeros) or 'reflect'.

  Returns:
    uint8 (B, H, W, C).
  """
  n, h, w, _ = images.shape
  if pad:
    width = ((0, 0), (pad, pad), (pad, pad), (0, 0))
    images = np.pad(images, width, mode=pad_mode)
  rows = offset_y[:, None] + np.arange(h)
  cols = np.arange(w)
  cols = offset_x[:, None] + np.where(flips[:, None], w - 1 - cols, cols)
  batch = np.arange(n)[:, None, None]
  return images[batch, rows[:, :, None], cols[:, None, :]]


# Streamed datasets: one image at a time, in grain workers.


def decode(data: bytes, where: str) -> Image.Image:
  """Decodes an encoded image to RGB; names `where` if it cannot."""
  try:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image.convert('RGB')
  except Exception as e:  # PIL raises several unrelated types
    raise CorruptDataError(
      f'{where}: not a decodable image ({type(e).__name__}: {e}). Replace '
      'or delete the file; training stops here.'
    ) from e


def inception_crop_box(
  width: int,
  height: int,
  rng: np.random.Generator,
  area_range: tuple[float, float] = (0.08, 1.0),
  aspect_range: tuple[float, float] = (3 / 4, 4 / 3),
  attempts: int = 10,
) -> tuple[float, float, float, float]:
  """Samples a random-resized-crop box (left, top, right, bottom).

  Szegedy et al. 2015 ("Going deeper with convolutions", sec. 6): a crop
  covering 8%..100% of the image area with aspect ratio 3/4..4/3 drawn
  log-uniformly. After `attempts` misses it falls back to the largest
  centred crop whose aspect ratio is in range.
  """
  area = width * height
  log_lo, log_hi = math.log(aspect_range[0]), math.log(aspect_range[1])
  for _ in range(attempts):
    target = area * rng.uniform(*area_range)
    ratio = math.exp(rng.uniform(log_lo, log_hi))
    w = math.sqrt(target * ratio)
    h = math.sqrt(target / ratio)
    if 0 < w <= width and 0 < h <= height:
      left = rng.uniform(0, width - w)
      top = rng.uniform(0, height - h)
      return left, top, left + w, top + h
  w, h = width, height
  if width / height < aspect_range[0]:
    h = width / aspect_range[0]
  elif width / height > aspect_range[1]:
    w = height * aspect_range[1]
  left, top = (width - w) / 2, (height - h) / 2
  return left, top, left + w, top + h


def inception_crop_flip(
  image: Image.Image,
  rng: np.random.Generator,
  size: int,
  area_range: tuple[float, float],
  aspect_range: tuple[float, float],
  flip: bool = True,
) -> np.ndarray:
  """Random-resized crop to (size, size), then a random mirror; uint8 HWC."""
  box = inception_crop_box(*image.size, rng, area_range, aspect_range)
  out = image.resize((size, size), Image.Resampling.BILINEAR, box=box)
  array = np.asarray(out, np.uint8)
  if flip and rng.random() < 0.5:
    array = array[:, ::-1]
  return np.ascontiguousarray(array)


def center_crop(image: Image.Image, size: int, resize_size: int) -> np.ndarray:
  """Eval view: resize the shorter side to `resize_size`, crop the centre.

  Done as one resample of the matching box of the original image (the
  centred size/resize_size fraction of its shorter side), which is what
  resize-then-crop computes without the intermediate image.
  """
  width, height = image.size
  side = min(width, height) * size / resize_size
  left, top = (width - side) / 2, (height - side) / 2
  box = (left, top, left + side, top + side)
  out = image.resize((size, size), Image.Resampling.BILINEAR, box=box)
  return np.asarray(out, np.uint8)
