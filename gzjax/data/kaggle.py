"""Reading the Kaggle "Galaxy Zoo – The Galaxy Challenge" download, strictly.

The builder trusts nothing it reads: a solutions CSV with a wrong header, a
non-numeric cell, a value outside [0, 1] or a repeated GalaxyID fails with the
file, line and column; a missing or undecodable JPEG is reported by GalaxyID.
An empty cell is an unknown answer and becomes NaN, never 0.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import pathlib

import numpy as np
from PIL import Image

from gzjax import errors
from gzjax import taxonomy

SOLUTIONS_CSV = 'training_solutions_rev1.csv'
TRAIN_IMAGES = 'images_training_rev1'
TEST_IMAGES = 'images_test_rev1'
HEADER = ('GalaxyID',) + taxonomy.ANSWERS

DOWNLOAD_INSTRUCTIONS = f"""\
Download the data of the Kaggle competition "Galaxy Zoo - The Galaxy Challenge"
(https://www.kaggle.com/c/galaxy-zoo-the-galaxy-challenge/data; accept the
competition rules first, then e.g.
`kaggle competitions download -c galaxy-zoo-the-galaxy-challenge`) and unzip
into one directory, the manual directory, so that it holds:

  {SOLUTIONS_CSV}      (or exactly one other *solutions*.csv)
  {TRAIN_IMAGES}/<GalaxyID>.jpg   (61,578 JPEGs, 424x424)
  {TEST_IMAGES}/<GalaxyID>.jpg       (79,975 JPEGs; optional: the test split)

Then build with:
  python -m gzjax.data.build --config=kaggle --manual_dir=DIR --data_dir=DATA_DIR
"""


# Defined in gzjax.errors (the pipeline raises it too); kept here by name.
DataError = errors.DataError


@dataclasses.dataclass(frozen=True)
class KaggleFiles:
  """Where the pieces of a Kaggle download are."""

  solutions_csv: pathlib.Path
  train_images: pathlib.Path
  test_images: pathlib.Path | None


def locate_files(manual_dir: str | pathlib.Path) -> KaggleFiles:
  """Finds the solutions CSV and image folders, or says what is missing."""
  manual_dir = pathlib.Path(manual_dir)
  if not manual_dir.is_dir():
    raise DataError(
        f'Manual directory {manual_dir} does not exist.\n'
        + DOWNLOAD_INSTRUCTIONS
    )
  solutions = manual_dir / SOLUTIONS_CSV
  if not solutions.is_file():
    candidates = sorted(manual_dir.glob('*solutions*.csv'))
    if len(candidates) != 1:
      found = (
          'none' if not candidates
          else ', '.join(c.name for c in candidates)
      )
      raise DataError(
          f'{manual_dir} needs {SOLUTIONS_CSV} (or exactly one'
          f' *solutions*.csv); found {found}.\n' + DOWNLOAD_INSTRUCTIONS
      )
    solutions = candidates[0]
  train_images = manual_dir / TRAIN_IMAGES
  if not train_images.is_dir():
    raise DataError(
        f'{manual_dir} has no {TRAIN_IMAGES}/ folder of training JPEGs.\n'
        + DOWNLOAD_INSTRUCTIONS
    )
  test_images = manual_dir / TEST_IMAGES
  return KaggleFiles(
      solutions, train_images, test_images if test_images.is_dir() else None
  )


@dataclasses.dataclass(frozen=True)
class Solutions:
  """The parsed solutions CSV.

  Attributes:
    galaxy_ids: int64[N] in file order.
    votes: float32[N, 37] cumulative vote fractions; NaN where the cell is
      empty (unknown).
  """

  galaxy_ids: np.ndarray
  votes: np.ndarray

  @property
  def known(self) -> np.ndarray:
    return taxonomy.known_mask(self.votes)


def read_solutions(path: str | pathlib.Path) -> Solutions:
  """Parses a Kaggle solutions CSV, failing on the first bad cell.

  Errors name the file, the 1-based line number (the header is line 1) and the
  column.
  """
  path = pathlib.Path(path)
  ids, rows, first_line_of = [], [], {}
  with path.open(newline='') as f:
    reader = csv.reader(f)
    header = tuple(h.strip() for h in next(reader, ()))
    if header != HEADER:
      raise DataError(_header_error(path, header))
    for row in reader:
      line = reader.line_num
      if not row:
        continue
      if len(row) != len(HEADER):
        raise DataError(
            f'{path}, line {line}: expected {len(HEADER)} comma-separated'
            f' fields (GalaxyID and 37 answers), got {len(row)}.'
        )
      galaxy_id = _parse_id(path, line, row[0])
      if galaxy_id in first_line_of:
        raise DataError(
            f'{path}, line {line}, column GalaxyID: GalaxyID {galaxy_id}'
            f' already appears on line {first_line_of[galaxy_id]}; each galaxy'
            ' must appear once.'
        )
      first_line_of[galaxy_id] = line
      ids.append(galaxy_id)
      rows.append([
          _parse_fraction(path, line, column, cell)
          for column, cell in zip(taxonomy.ANSWERS, row[1:])
      ])
  if not ids:
    raise DataError(f'{path} has a header but no rows.')
  return Solutions(
      np.asarray(ids, np.int64), np.asarray(rows, np.float32)
  )


def _header_error(path: pathlib.Path, header: tuple[str, ...]) -> str:
  if not header:
    return f'{path} is empty; expected the header {",".join(HEADER[:3])},….'
  for position, (got, want) in enumerate(zip(header, HEADER), start=1):
    if got != want:
      return (
          f'{path}, line 1: column {position} of the header is {got!r}, '
          f'expected {want!r}. The header must be GalaxyID,Class1.1,…,'
          'Class11.6 in the Kaggle order.'
      )
  return (
      f'{path}, line 1: the header has {len(header)} columns, expected'
      f' {len(HEADER)} (GalaxyID,Class1.1,…,Class11.6).'
  )


def _parse_id(path: pathlib.Path, line: int, cell: str) -> int:
  try:
    galaxy_id = int(cell.strip())
  except ValueError:
    raise DataError(
        f'{path}, line {line}, column GalaxyID: {cell!r} is not an integer.'
    ) from None
  if galaxy_id < 0:
    raise DataError(
        f'{path}, line {line}, column GalaxyID: {galaxy_id} is negative.'
    )
  return galaxy_id


def _parse_fraction(
    path: pathlib.Path, line: int, column: str, cell: str
) -> float:
  cell = cell.strip()
  if not cell:
    return math.nan  # Unknown answer.
  try:
    value = float(cell)
  except ValueError:
    value = math.nan
  if not math.isfinite(value):
    raise DataError(
        f'{path}, line {line}, column {column}: {cell!r} is not a number'
        ' (leave the cell empty for an unknown answer).'
    )
  if not 0.0 <= value <= 1.0:
    raise DataError(
        f'{path}, line {line}, column {column}: {value} is outside [0, 1];'
        ' vote fractions must be probabilities.'
    )
  return value


def image_problem(data: bytes) -> str | None:
  """Why ``data`` is not a usable JPEG, or None when it decodes completely.

  Decodes at 1/8 scale (``Image.draft``): the entropy-coded data is still read
  to its end, so truncation and corruption show, at a fraction of the cost.
  """
  try:
    with Image.open(io.BytesIO(data)) as image:
      if image.format != 'JPEG':
        return f'not a JPEG (Pillow reads it as {image.format})'
      image.draft('RGB', (image.width // 8, image.height // 8))
      image.load()
  except Exception as e:  # Pillow raises many types for bad files.  pylint: disable=broad-except
    return f'{type(e).__name__}: {e}'
  return None


def image_ids_in(folder: pathlib.Path) -> np.ndarray:
  """GalaxyIDs of the ``<GalaxyID>.jpg`` files in ``folder``, sorted."""
  ids = []
  for path in sorted(folder.glob('*.jpg')):
    try:
      ids.append(int(path.stem))
    except ValueError:
      raise DataError(
          f'{path}: images must be named <GalaxyID>.jpg with an integer'
          ' GalaxyID.'
      ) from None
  if not ids:
    raise DataError(f'{folder} holds no .jpg files.')
  return np.asarray(ids, np.int64)
