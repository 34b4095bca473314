"""A tiny label catalogue for the fine-tuning tests, written into a folder."""

import pathlib

import numpy as np
from PIL import Image

NUM_ROWS = 36
SHAPES = ('ring', 'bar', 'merger')


def write_catalogue(folder: pathlib.Path, *, split_column: bool = False
                    ) -> pathlib.Path:
  """36 galaxies of 40 px: bright blobs whose size is the regression target,
  brightness the binary label; a few cells left empty (missing)."""
  rng = np.random.default_rng(0)
  (folder / 'img').mkdir(parents=True, exist_ok=True)
  lines = ['id,path,spiral,shape,size,smooth,featured,artifact,split']
  yy, xx = np.mgrid[:40, :40] - 19.5
  for row in range(NUM_ROWS):
    size = 3.0 + row % 6
    bright = row % 2
    image = np.exp(-(xx ** 2 + yy ** 2) / (2 * size ** 2)) * (
        120 + 120 * bright)
    image = np.clip(image[..., None] + rng.normal(0, 4, (40, 40, 3)), 0, 255)
    name = f'g{row:03d}'
    Image.fromarray(image.astype(np.uint8)).save(folder / 'img' / f'{name}.jpg')
    spiral = '' if row % 7 == 3 else str(bright)
    shape = '' if row % 5 == 4 else SHAPES[row % 3]
    votes = ('', '', '') if row % 9 == 8 else (str(row % 4), str(5 - row % 4),
                                               '1')
    split = 'validation' if row % 3 == 0 else 'train'
    lines.append(','.join([name, f'img/{name}.jpg', spiral, shape,
                           f'{size:.1f}', *votes, split]))
  path = folder / 'labels.csv'
  path.write_text('\n'.join(lines) + '\n')
  return path


def labels_config(catalogue: pathlib.Path, **overrides):
  from gzjax.data import labels  # pylint: disable=g-import-not-at-top
  config = labels.default_config()
  config.catalog = str(catalogue)
  config.path_column = 'path'
  config.columns = {'spiral': 'binary', 'shape': 'multiclass',
                    'size': 'regression',
                    'morphology': 'votes:smooth,featured,artifact'}
  config.update(overrides)
  return config
