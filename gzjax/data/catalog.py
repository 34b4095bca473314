"""Catalogues: which images to predict, and the id of each; tables read.

A :class:`Catalog` is an ordered table of ``(id, path)`` rows, from

* a folder, searched recursively for ``.jpg``/``.jpeg``/``.png`` files (any
  case), id = the file name without its extension, in sorted path order;
* a glob (``'cutouts/**/*.png'``), id = the file name without extension;
* a CSV or Parquet table with an id column and a path column (names
  configurable); relative paths are relative to the table's folder.

Ids are strings and stay exactly as written: ``J123456.78+012345.6``,
``000123`` or a 64-bit object id such as ``9007199254740993`` (which a float
would round to ...992).  CSV columns are read as text, never inferred; a
Parquet id column must hold strings or integers, not floats (dictionary-
encoded ones, pandas' ``category``, are read as their values).

The rows live in two Arrow string arrays rather than Python objects: about
the bytes of the strings, ~100 MB for a million rows with long paths.

The same module reads every table and image folder gzjax is given:
:func:`read_table` the label catalogues of fine-tuning too
(:mod:`gzjax.data.labels`), and :class:`ImageFolder` a folder of
``<GalaxyID>`` images as records for Kaggle-format predictions (strict: every
file must be a complete image named by an integer id).

Prediction splits the catalogue into a fixed grid of shards of ``shard_size``
consecutive rows; :func:`shards_of_process` gives process ``i`` of ``P`` the
shards ``i, i + P, …``, so every process reads its own slice, and the shard
files do not depend on the number of processes.
"""

from __future__ import annotations

import csv
import glob as globlib
import hashlib
import io
import pathlib
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from PIL import Image

from gzjax import errors
from gzjax import progress
from gzjax.data import fields
from gzjax.data import kaggle

# The image files gzjax reads, by suffix (any case), and the format each
# must hold.
IMAGE_SUFFIXES = {'.jpg': 'JPEG', '.jpeg': 'JPEG', '.png': 'PNG'}
TABLE_SUFFIXES = ('.csv', '.parquet', '.pq')


class CatalogError(errors.DataError):
  """A catalogue that cannot be read as asked; the message says why."""


class Catalog:
  """Rows of (id, image path), random access by row number."""

  def __init__(self, ids, paths, *, source: str):
    self._ids = pa.array(ids, pa.string()) if not isinstance(
        ids, pa.Array) else ids
    self._paths = pa.array(paths, pa.string()) if not isinstance(
        paths, pa.Array) else paths
    if len(self._ids) != len(self._paths):
      raise ValueError('ids and paths differ in length.')
    self.source = source
    if not len(self._ids):
      raise CatalogError(f'{source}: no images to predict.')

  def __len__(self) -> int:
    return len(self._ids)

  def id(self, row: int) -> str:
    return self._ids[row].as_py()

  def path(self, row: int) -> str:
    return self._paths[row].as_py()

  def ids(self, start: int, stop: int) -> list[str]:
    return self._ids[start:stop].to_pylist()

  def paths(self, start: int, stop: int) -> list[str]:
    return self._paths[start:stop].to_pylist()

  def map_to(self, path: str | pathlib.Path) -> None:
    """Moves the rows into an uncompressed Arrow file and memory-maps it.

    Grain pickles the dataset, catalogue included, into every worker
    process; a mapped catalogue pickles as its file's path, and the workers
    share its pages through the page cache instead of each holding a copy.
    """
    path = pathlib.Path(path)
    batch = pa.record_batch([self._ids, self._paths], names=['id', 'path'])
    temporary = path.with_name(path.name + '.tmp')
    with pa.OSFile(str(temporary), 'wb') as sink:
      with pa.ipc.new_file(sink, batch.schema) as writer:
        writer.write_batch(batch)
    temporary.replace(path)
    self._open_mapped(str(path))

  def _open_mapped(self, path: str) -> None:
    table = pa.ipc.open_file(pa.memory_map(path)).read_all()
    self._ids = table.column('id').chunk(0)
    self._paths = table.column('path').chunk(0)
    self._mapped = path

  def __getstate__(self):
    if getattr(self, '_mapped', None):
      return {'mapped': self._mapped, 'source': self.source}
    return self.__dict__

  def __setstate__(self, state):
    if 'mapped' in state:
      self.source = state['source']
      self._open_mapped(state['mapped'])
    else:
      self.__dict__.update(state)

  def fingerprint(self) -> str:
    """SHA-256 of every id and path in order: is it the same catalogue?"""
    digest = hashlib.sha256()
    for array in (self._ids, self._paths):
      for chunk in range(0, len(array), 65536):
        for value in array[chunk:chunk + 65536].to_pylist():
          digest.update(value.encode())
          digest.update(b'\0')
    return digest.hexdigest()


def _stem_rows(files: list[pathlib.Path], source: str) -> Catalog:
  seen = {}
  for path in files:
    if path.stem in seen:
      raise CatalogError(
          f'{source}: two images have the id {path.stem!r}: {seen[path.stem]}'
          f' and {path}; give a catalogue with an id column instead.')
    seen[path.stem] = path
  return Catalog([p.stem for p in files], [str(p) for p in files],
                 source=source)


def from_folder(folder: str | pathlib.Path) -> Catalog:
  """Every JPEG/PNG under ``folder`` (recursively), sorted by path."""
  folder = pathlib.Path(folder)
  if not folder.is_dir():
    raise CatalogError(f'{folder}: no such folder.')
  files = sorted(p for p in folder.rglob('*')
                 if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
  if not files:
    raise CatalogError(
        f'{folder}: no .jpg, .jpeg or .png files in it or its subfolders.')
  return _stem_rows(files, str(folder))


def from_glob(pattern: str) -> Catalog:
  """The files matching ``pattern`` (``**`` recurses), sorted by path."""
  files = sorted(pathlib.Path(p) for p in globlib.glob(pattern, recursive=True)
                 if pathlib.Path(p).is_file())
  if not files:
    raise CatalogError(f'{pattern}: the pattern matches no files.')
  return _stem_rows(files, pattern)


def _table_column(table: pa.Table, name: str, path: pathlib.Path,
                  role: str) -> pa.Array:
  if name not in table.column_names:
    raise CatalogError(
        f'{path}: no column {name!r} for the {role}s (columns:'
        f' {", ".join(table.column_names)}); set --{role}_column.')
  column = table.column(name).combine_chunks()
  if pa.types.is_integer(column.type):
    column = column.cast(pa.string())  # Exact, unlike a float.
  elif not (pa.types.is_string(column.type) or
            pa.types.is_large_string(column.type)):
    raise CatalogError(
        f'{path}: column {name!r} holds {column.type}, not strings or'
        f' integers{"; ids stored as floats may have lost digits" if pa.types.is_floating(column.type) else ""}.'
        ' Write it as strings.')
  column = column.cast(pa.string())
  if column.null_count:
    row = column.is_null().to_pylist().index(True)
    raise CatalogError(
        f'{path}: row {row + 1} has no {role} (column {name!r} is empty).')
  return column


def read_table(path: pathlib.Path, what: str = 'catalogue', *,
               error: type[errors.DataError] = CatalogError) -> pa.Table:
  """A CSV or Parquet table (a survey catalogue, a label catalogue).

  CSV columns are read as text, never inferred (ids such as ``000123`` or
  2**53 + 1 stay as written), empty cells as ``''``; Parquet's
  dictionary-encoded columns as plain ones.

  Args:
    path: the ``.csv`` or ``.parquet``/``.pq`` file.
    what: what the table is, for the messages.
    error: the error raised, naming the file: not a table's suffix, no such
      file, or unreadable.
  """
  if path.suffix.lower() not in TABLE_SUFFIXES:
    raise error(f'{path}: a {what} is a .csv or .parquet file.')
  if not path.is_file():
    raise error(f'{path}: no such {what} file.')
  try:
    if path.suffix.lower() == '.csv':
      header = next(csv.reader(io.StringIO(
          path.open(encoding='utf-8').readline())), [])
      return pa_csv.read_csv(
          path,
          convert_options=pa_csv.ConvertOptions(
              column_types={c: pa.string() for c in header},
              strings_can_be_null=False))
    return _decoded(pq.read_table(path))
  except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as problem:
    raise error(f'{path}: cannot read the {what} ({problem}).') from None


def _decoded(table: pa.Table) -> pa.Table:
  """``table`` with its dictionary-encoded columns (what pandas writes for
  a ``category`` column) as plain columns of their values: ids, paths and
  labels then read exactly as a plain string column's would, and a
  catalogue is not refused for how its writer chose to store it."""
  for index, field in enumerate(table.schema):
    if pa.types.is_dictionary(field.type):
      table = table.set_column(
          index, field.name,
          table.column(index).cast(field.type.value_type))
  return table


def from_table(table_path: str | pathlib.Path, *, id_column: str = 'id',
               path_column: str = 'path') -> Catalog:
  """A CSV or Parquet catalogue; relative paths are from its folder."""
  table_path = pathlib.Path(table_path)
  table = read_table(table_path)
  ids = _table_column(table, id_column, table_path, 'id')
  paths = _table_column(table, path_column, table_path, 'path')
  empty = pc.equal(pc.utf8_length(paths), 0)
  if pc.any(empty).as_py():
    row = empty.to_pylist().index(True)
    raise CatalogError(f'{table_path}: row {row + 1} has an empty path.')
  base = str(table_path.parent.resolve())
  relative = pc.invert(pc.starts_with(paths, '/'))
  joined = pc.binary_join_element_wise(base, paths, '/')
  paths = pc.if_else(relative, joined, paths)
  return Catalog(ids, paths, source=str(table_path))


def open_catalog(images: str | None = None, catalog: str | None = None, *,
                 id_column: str = 'id', path_column: str = 'path') -> Catalog:
  """``catalog`` (a table) or ``images`` (a folder or a glob)."""
  if bool(images) == bool(catalog):
    raise CatalogError('Give exactly one of --images (a folder or a glob) and'
                       ' --catalog (a CSV or Parquet table).')
  if catalog:
    return from_table(catalog, id_column=id_column, path_column=path_column)
  if pathlib.Path(images).is_dir():
    return from_folder(images)
  if globlib.has_magic(images):
    return from_glob(images)
  raise CatalogError(f'{images}: neither a folder nor a glob pattern.')


class ImageFolder:
  """Unlabelled records from a folder of ``<GalaxyID>.jpg|.jpeg|.png`` files.

  The suffix may be in any case.  Every file is checked before predicting,
  by its content: a ``.jpg``/``.jpeg`` must be a complete JPEG (the
  builder's rule, so a PNG named ``.jpg`` is refused here as there) and a
  ``.png`` a complete PNG.  Anything else in the folder (another suffix, a
  name that is not a GalaxyID, two files for one galaxy, an undecodable
  file) is listed in the error; nothing is skipped.  Hidden files
  (``.DS_Store``) are ignored.
  """

  def __init__(self, folder: str | pathlib.Path):
    self._folder = pathlib.Path(folder)
    if not self._folder.is_dir():
      raise errors.MissingFileError(f'No image folder at {self._folder}.')
    paths, problems = {}, []
    for path in sorted(self._folder.iterdir()):
      if path.name.startswith('.'):
        continue
      kind = IMAGE_SUFFIXES.get(path.suffix.lower())
      if kind is None or not path.is_file():
        problems.append(f'{path}: not a .jpg, .jpeg or .png file')
        continue
      if not path.stem.isdigit():
        problems.append(f'{path}: not named <GalaxyID>{path.suffix} with an'
                        ' integer GalaxyID')
        continue
      galaxy_id = int(path.stem)
      if galaxy_id >= 2**63:
        problems.append(f'{path}: GalaxyID {path.stem} is past the signed'
                        ' 64-bit integers of the Kaggle CSV (predict with'
                        ' --output_dir, which keeps ids as text)')
        continue
      if galaxy_id in paths:  # 42.jpg and 042.jpg too: one integer.
        problems.append(f'{path}: GalaxyID {galaxy_id} also has'
                        f' {paths[galaxy_id].name}')
        continue
      problem = image_problem(path.read_bytes(), kind)
      if problem is not None:
        problems.append(f'{path}: {problem}')
        continue
      paths[galaxy_id] = path
    refuse_unpredictable(problems, 'file', self._folder,
                         'Fix, rename or move them out of the folder.')
    if not paths:
      raise errors.DataError(
          f'{self._folder} holds no .jpg, .jpeg or .png images.')
    self._ids = np.asarray(sorted(paths), np.int64)
    self._paths = paths

  def __len__(self) -> int:
    return len(self._ids)

  def written_id(self, galaxy_id: int) -> str:
    """The GalaxyID as its file names it (``000042`` for ``000042.jpg``):
    what a prediction file writes, since ``42`` would name another file."""
    return self._paths[galaxy_id].stem

  def __getitem__(self, index: int) -> dict[str, Any]:
    galaxy_id = int(self._ids[index])
    path = self._paths[galaxy_id]
    return {
        'image': path.read_bytes(),
        'galaxy_id': galaxy_id,
        fields.IMAGE_SOURCE: f'{path} (GalaxyID {galaxy_id})',
        **fields.no_labels(votes_fill=np.nan),
    }


def refuse_unpredictable(problems: Sequence[str], noun: str, where,
                         fix: str) -> None:
  """One error listing every file that cannot be predicted (the first 20,
  then how many more), before anything is written; nothing when none."""
  if not problems:
    return
  shown = '\n'.join(f'  {p}' for p in problems[:20])
  more = f'\n  … and {len(problems) - 20} more' if len(problems) > 20 else ''
  raise errors.DataError(
      f'{progress.counted(len(problems), noun)} of {where} cannot be'
      ' predicted (no prediction was'
      f' written):\n{shown}{more}\n{fix}')


def image_problem(data: bytes, kind: str) -> str | None:
  """Why ``data`` is not a complete image of ``kind``, or None."""
  if kind == 'JPEG':
    return kaggle.image_problem(data)  # The builder's own check.
  try:
    with Image.open(io.BytesIO(data)) as image:
      if image.format != kind:
        return f'not a {kind} (Pillow reads it as {image.format})'
      image.load()
  except Exception as e:  # Pillow raises many types for bad files.  pylint: disable=broad-except
    return f'{type(e).__name__}: {e}'
  return None


# The crop-size probe reads the headers of at most this many readable
# images, and of at most SIZE_PROBE_ROWS rows.
SIZE_PROBE_IMAGES = 16
SIZE_PROBE_ROWS = 256


def _header_size(path: str) -> tuple[int, int] | None:
  """The image's width and height from its header; None when it cannot be
  read (left to the prediction's errors report)."""
  try:
    with Image.open(path) as image:
      return image.size
  except (OSError, SyntaxError, ValueError):
    return None


def check_crop_fits(catalog: Catalog, rows: Iterable[int],
                    crop_size: int) -> None:
  """Refuses, before any work, a crop larger than the survey's cut-outs:
  every readable image probed from ``rows`` (the first to predict, in
  order) is smaller.  Reads only headers.

  The first image alone decided before, so one small cut-out blocked the
  whole survey when it was the first row and was one errors.csv row
  anywhere else.  Now a small first image has the next rows probed (up to
  ``SIZE_PROBE_IMAGES`` readable ones); if any fits, the run goes on and
  the small ones are listed in errors.csv (``strict``: the first stops it).
  """
  first_small, probed, small = None, 0, 0
  for count, row in enumerate(rows):
    if count >= SIZE_PROBE_ROWS or probed >= SIZE_PROBE_IMAGES:
      break
    path = catalog.path(row)
    size = _header_size(path)
    if size is None:
      continue
    probed += 1
    if min(size) >= crop_size:
      return
    small += 1
    first_small = first_small or (path, size)
  if first_small is None:  # Nothing readable: errors.csv says why.
    return
  path, (width, height) = first_small
  raise CatalogError(
      f'{path}: the image is {width}x{height}, smaller than the {crop_size} px'
      f' centre crop ({small} of {probed} images probed from the first rows'
      ' are too small); predict with a config whose input.crop_size fits the'
      ' survey\'s cutouts.')


def num_shards(num_rows: int, shard_size: int) -> int:
  if shard_size <= 0:
    raise errors.ConfigError(
        f'--shard_size={shard_size}: rows per shard must be positive.')
  return -(-num_rows // shard_size)


def shard_rows(shard: int, num_rows: int, shard_size: int) -> range:
  """The catalogue rows of shard ``shard``."""
  return range(shard * shard_size, min((shard + 1) * shard_size, num_rows))


def shards_of_process(num_rows: int, shard_size: int, process_index: int,
                      process_count: int) -> range:
  """Shards ``i, i + P, …`` of the grid: process ``i``'s share."""
  if not 0 <= process_index < process_count:
    raise ValueError(
        f'process_index={process_index} is not in [0, {process_count}).')
  return range(process_index, num_shards(num_rows, shard_size), process_count)


def iter_rows(catalog: Catalog, rows: range) -> Iterator[tuple[str, str]]:
  ids = catalog.ids(rows.start, rows.stop)
  paths = catalog.paths(rows.start, rows.stop)
  return zip(ids, paths)
