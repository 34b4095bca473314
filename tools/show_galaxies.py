r"""Writes a PNG grid of galaxies from a built galaxy_zoo dataset.

  python tools/show_galaxies.py --config=synthetic --data_dir=demo_workdir/data \
      --out=demo_workdir/galaxies.png

Picks ``--count`` galaxies of a split at random (``--seed``), preferring one of
each 7-class label first so the grid shows the range of morphologies.
"""

from __future__ import annotations

from absl import app
from absl import flags
from absl import logging
import numpy as np

from gzjax import errors
from gzjax import path_flags
from gzjax import plots
from gzjax import predict
from gzjax.data import galaxy_zoo

_CONFIG = flags.DEFINE_enum(
    'config', 'synthetic', ['synthetic', 'kaggle'], 'Which dataset.')
_DATA_DIR = path_flags.DEFINE_path(
    'data_dir', '~/tensorflow_datasets', 'Where the dataset was built.')
_SPLIT = flags.DEFINE_string('split', 'train', 'Which split.')
_COUNT = flags.DEFINE_integer('count', 16, 'How many galaxies.',
                              lower_bound=1)
_SEED = flags.DEFINE_integer('seed', 0, 'Which galaxies.')
_OUT = path_flags.DEFINE_path('out', 'galaxies.png', 'The PNG to write.')


def pick(labels: np.ndarray, count: int, seed: int) -> list[int]:
  """Indices: one galaxy of each 7-class label present, then random others."""
  rng = np.random.default_rng(seed)
  order = rng.permutation(len(labels))
  chosen = []
  for label in range(7):
    hits = order[labels[order] == label]
    if len(hits):
      chosen.append(int(hits[0]))
  chosen += [int(i) for i in order if i not in chosen]
  return chosen[:count]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)  # TFDS's "Load dataset info" lines.
  try:
    if not _OUT.value.lower().endswith('.png'):
      raise errors.ConfigError(f'--out={_OUT.value}: name a .png file.')
    predict.check_output(_OUT.value, '--out', table=False)
    source = galaxy_zoo.data_source(
        _CONFIG.value, _DATA_DIR.value, _SPLIT.value)
  except (galaxy_zoo.DatasetNotBuiltError, KeyError,
          errors.GzjaxError) as e:
    raise app.UsageError(str(e)) from None
  # Choose among at most 2,000 galaxies: reading a record reads its JPEG.
  candidates = np.random.default_rng(_SEED.value).permutation(len(source))
  candidates = [source[int(i)] for i in candidates[:2000]]
  labels = np.array([r['label_7class'] for r in candidates])
  records = [candidates[i] for i in pick(labels, _COUNT.value, _SEED.value)]
  path = plots.galaxy_grid(
      records, _OUT.value,
      title=f'galaxy_zoo/{_CONFIG.value} {_SPLIT.value}: {len(source):,}'
      ' galaxies')
  print(f'Wrote {path}')


if __name__ == '__main__':
  app.run(main)
