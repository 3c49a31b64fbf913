"""Image folders laid out root/split/class/*.jpg|png (the ImageNet layout)."""

from __future__ import annotations

import dataclasses
import os
import pathlib

from cnn_jax.data.errors import CorruptDataError, SplitMismatchError

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png')


@dataclasses.dataclass(frozen=True)
class Folder:
  """A scanned image folder.

  Attributes:
    root: the folder holding one subfolder per split.
    class_names: the class folder names, sorted; label i is class_names[i].
    splits: split -> [(file path, label)], sorted by class, then file name.
  """

  root: pathlib.Path
  class_names: tuple[str, ...]
  splits: dict[str, list[tuple[str, int]]]


def looks_like(root: pathlib.Path) -> bool:
  """Whether `root` has a split folder (e.g. train/) of class folders."""
  train = root / 'train'
  return train.is_dir() and any(p.is_dir() for p in train.iterdir())


def _split_dirs(root: pathlib.Path) -> list[pathlib.Path]:
  return sorted(
    p
    for p in root.iterdir()
    if p.is_dir()
    and not p.name.startswith('.')
    and any(c.is_dir() for c in p.iterdir())
  )


def _classes(split_dir: pathlib.Path) -> list[str]:
  return sorted(
    p.name
    for p in split_dir.iterdir()
    if p.is_dir() and not p.name.startswith('.')
  )


def scan(root: pathlib.Path) -> Folder:
  """Lists every image of every split of `root`.

  Raises:
    SplitMismatchError: the splits do not have the same class folders.
    CorruptDataError: a split holds no image at all.
  """
  split_dirs = _split_dirs(root)
  classes = {d.name: _classes(d) for d in split_dirs}
  reference = classes.get('train') or next(iter(classes.values()), [])
  differing = {s: c for s, c in classes.items() if c != reference}
  if differing:
    lines = []
    for split, names in classes.items():
      others = set().union(*(set(c) for s, c in classes.items() if s != split))
      only = sorted(set(names) - others)
      missing = sorted(others - set(names))
      if only or missing:
        lines.append(
          f'  {split}/: {len(names)} classes; only here: '
          f'{_short(only)}; missing here: {_short(missing)}'
        )
    raise SplitMismatchError(
      f'The splits of {root} have different class folders, so labels would '
      'not mean the same in each:\n'
      + '\n'.join(lines)
      + '\nGive every split the same class folders (an empty folder will do).'
    )
  label = {name: i for i, name in enumerate(reference)}
  splits = {}
  for split_dir in split_dirs:
    files = []
    for name in reference:
      with os.scandir(split_dir / name) as entries:
        names = sorted(
          e.name
          for e in entries
          if e.is_file() and e.name.lower().endswith(IMAGE_SUFFIXES)
        )
      files.extend((str(split_dir / name / f), label[name]) for f in names)
    if not files:
      raise CorruptDataError(
        f'{split_dir}: no image files ({", ".join(IMAGE_SUFFIXES)}) in its '
        'class folders.'
      )
    splits[split_dir.name] = files
  return Folder(root, tuple(reference), splits)


def _short(names: list[str], limit: int = 10) -> str:
  if not names:
    return 'none'
  more = f' and {len(names) - limit} more' if len(names) > limit else ''
  return ', '.join(names[:limit]) + more
