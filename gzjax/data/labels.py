"""Your own labels: a catalogue of galaxies and label columns to fine-tune on.

A CSV or Parquet table with an id column, the image of each row (a path
column, relative to the table's folder, or ``<image_folder>/<id><suffix>``)
and label columns, each declared in ``config.labels.columns`` with a kind:

* ``binary``: 0/1 (or true/false);
* ``multiclass``: class names as strings, mapped to indices in sorted order
  (the order is recorded in the run, ``labels.json``);
* ``regression``: floats;
* ``votes:col_a,col_b,...``: vote counts for the answers of one question.

An empty cell (or NaN) is *missing*: masked out of the loss and the metrics,
never read as 0 or as a class.  A cell that is neither a valid value nor
empty is an error naming its file, line, column and value.  A CSV's rows are
named by their line in the file (the header is line 1), as the Kaggle
builder names them; a Parquet table's, which has no lines, as ``row N``
(the first is row 1).

The split is the ``split_column`` (``train``/``validation``) when set, else
the Kaggle builder's stable hash of the id
(:func:`gzjax.data.galaxy_zoo.is_validation`).

Records for the existing grain pipelines: the image bytes, ``galaxy_id`` =
the row number (the string ids stay in the table), ``image_source`` naming
the table, row, id and image path for messages about a bad image, empty
Kaggle fields, and ``targets``: per column its value(s) and mask.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import pathlib
from typing import Any, Mapping, Sequence

import ml_collections
import numpy as np
import pyarrow as pa

from gzjax import errors
from gzjax.data import catalog as catalogs
from gzjax.data import fields
from gzjax.data import galaxy_zoo

KINDS = ('binary', 'multiclass', 'regression', 'votes')
SPLITS = ('train', 'validation')


class LabelError(errors.DataError):
  """A label table or declaration that cannot be used; the message says why."""


def default_config() -> ml_collections.ConfigDict:
  """``config.labels``: empty catalogue means the built-in Kaggle tasks."""
  config = ml_collections.ConfigDict()
  # CSV or Parquet table of galaxies and labels.
  config.catalog = ''
  config.id_column = 'id'
  # Column of image paths (relative to the table's folder) ...
  config.path_column = ''
  # ... or a folder holding <id><image_suffix> (relative to the table's).
  config.image_folder = ''
  config.image_suffix = '.jpg'
  # {column name: kind}; kind is binary, multiclass, regression or
  # votes:<answer column>,<answer column>,... (the name is then free).
  config.columns = ml_collections.ConfigDict()
  # A column of train/validation; '' splits by the hash of the id.
  config.split_column = ''
  config.validation_percent = 20.0
  # Train on only N labelled training rows, those with the smallest id
  # hashes (0: all): the few-label curve.
  config.max_train_labels = 0
  return config


@dataclasses.dataclass(frozen=True)
class Column:
  """One declared label: its kind, answer columns (votes), class names."""

  name: str
  kind: str
  answers: tuple[str, ...] = ()
  classes: tuple[str, ...] = ()

  @property
  def num_outputs(self) -> int:
    if self.kind == 'multiclass':
      return len(self.classes)
    if self.kind == 'votes':
      return len(self.answers)
    return 1


def parse_columns(columns: Mapping[str, str]) -> list[Column]:
  """The declarations of ``config.labels.columns``."""
  parsed = []
  for name, kind in dict(columns).items():
    base, _, answers = str(kind).partition(':')
    if base not in KINDS:
      raise LabelError(
          f'config.labels.columns.{name}={kind!r}: the kind must be one of'
          f' {", ".join(KINDS)} (votes as votes:<col>,<col>,...).')
    if base == 'votes':
      names = tuple(a.strip() for a in answers.split(',') if a.strip())
      if len(names) < 2:
        raise LabelError(
            f'config.labels.columns.{name}={kind!r}: votes need at least two'
            ' answer columns, e.g. votes:smooth,features,artifact.')
      parsed.append(Column(name, 'votes', names))
    else:
      parsed.append(Column(name, base))
  if not parsed:
    raise LabelError('config.labels.columns is empty: declare at least one'
                     ' label column and its kind.')
  return parsed


class Rows:
  """Where a catalogue's data row is, for messages: ``<file>, line N`` for a
  CSV (the header is line 1, as the Kaggle builder counts, so the number
  is the one an editor shows) or ``<file>, row N`` for Parquet.

  The lines are counted once, on first use, by the csv module rather than
  taken as row + 2: blank lines, which the table reader skips, would shift
  every number after them.
  """

  def __init__(self, path: pathlib.Path):
    self._path = path
    self._lines: list[int] | None = None

  def __call__(self, row: int) -> str:
    if self._path.suffix.lower() != '.csv':
      return f'{self._path}, row {row + 1}'
    if self._lines is None:
      with self._path.open(encoding='utf-8', errors='replace',
                           newline='') as f:
        reader = csv.reader(f)
        next(reader, None)  # The header.
        self._lines = [reader.line_num for cells in reader if cells]
    if row < len(self._lines):
      return f'{self._path}, line {self._lines[row]}'
    return f'{self._path}, data row {row + 1}'  # Read otherwise than csv.


def _cells(table: pa.Table, name: str, path: pathlib.Path, what: str) -> list:
  if name not in table.column_names:
    raise LabelError(
        f'{path}: no column {name!r} ({what}); the columns are'
        f' {", ".join(table.column_names)}.')
  return table.column(name).to_pylist()


def _is_missing(value: Any) -> bool:
  if value is None:
    return True
  if isinstance(value, float) and math.isnan(value):
    return True
  return isinstance(value, str) and value.strip().lower() in ('', 'nan')


def _float(value: Any, where: str, hint: str) -> float:
  try:
    number = float(value)
  except (TypeError, ValueError):
    raise LabelError(f'{where}: {value!r} is not a number; {hint}.') from None
  if not math.isfinite(number):
    raise LabelError(f'{where}: {value!r} is not finite; {hint}.')
  return number


def _binary(values: list, where) -> tuple[np.ndarray, np.ndarray]:
  target = np.zeros(len(values), np.float32)
  mask = np.zeros(len(values), bool)
  for row, value in enumerate(values):
    if _is_missing(value):
      continue
    text = str(value).strip().lower()
    if text in ('1', '1.0', 'true'):
      target[row] = 1.0
    elif text not in ('0', '0.0', 'false'):
      raise LabelError(f'{where(row)}: {value!r} is not a binary label; write'
                       ' 0 or 1 (or leave it empty when unknown).')
    mask[row] = True
  return target, mask


def _regression(values: list, where) -> tuple[np.ndarray, np.ndarray]:
  target = np.zeros(len(values), np.float32)
  mask = np.zeros(len(values), bool)
  for row, value in enumerate(values):
    if not _is_missing(value):
      target[row] = _float(value, where(row),
                           'write a number or leave it empty when unknown')
      mask[row] = True
  return target, mask


def _multiclass(values: list) -> tuple[np.ndarray, tuple[str, ...]]:
  names = [None if _is_missing(v) else str(v).strip() for v in values]
  classes = tuple(sorted({n for n in names if n is not None}))
  index = {name: i for i, name in enumerate(classes)}
  return np.array([-1 if n is None else index[n] for n in names],
                  np.int32), classes


# What to do about a classification column that holds one class throughout.
_CHECK_THE_COLUMN = (
    '; a classification label needs at least two classes to learn from:'
    ' check the column (and whatever filter made the table), or declare'
    ' another column in config.labels.columns.')


def _too_few_classes(source, column: Column, classes: Sequence[str],
                     count: int, part: str) -> str:
  """The start of a line saying that ``column``'s ``count`` labelled rows in
  ``part`` hold ``classes``, fewer than two (named as the table has them)."""
  rows = ('its one labelled row' if count == 1 else
          f'all {count} labelled rows')
  held = (f'no label in {part}' if not classes else
          f'one class, {classes[0]}, in {rows} of {part}')
  return f'{source}: column {column.name!r} ({column.kind}) holds {held}'


@dataclasses.dataclass
class LabelTable:
  """The parsed catalogue: ids, image paths, split and every target."""

  source: str
  ids: list[str]
  paths: list[str]
  is_validation: np.ndarray
  columns: list[Column]
  # name -> {'value': [N] or [N, answers], 'mask': [N]}
  targets: dict[str, dict[str, np.ndarray]]
  # A row's place in the file, for messages.
  where: Rows

  def __len__(self) -> int:
    return len(self.ids)

  def rows(self, split: str) -> np.ndarray:
    if split not in SPLITS:
      raise LabelError(f'split={split!r}: use one of {", ".join(SPLITS)}.')
    return np.flatnonzero(self.is_validation == (split == 'validation'))

  def labelled(self) -> np.ndarray:
    """Which rows have at least one known label."""
    known = np.zeros(len(self), bool)
    for parts in self.targets.values():
      known |= parts['mask']
    return known

  def record_targets(self, row: int) -> dict[str, np.ndarray]:
    return {f'{name}/{key}': value[row] for name, parts in self.targets.items()
            for key, value in parts.items()}

  def manifest(self) -> dict[str, Any]:
    """What a run records: the columns, kinds, answers and class order."""
    return {'source': self.source,
            'columns': [dataclasses.asdict(c) for c in self.columns]}


def read(config: ml_collections.ConfigDict,
         base: str | pathlib.Path = '.') -> LabelTable:
  """Reads and validates ``config.labels``' catalogue (relative to ``base``)."""
  path = pathlib.Path(base) / pathlib.Path(config.catalog).expanduser()
  table = catalogs.read_table(path, 'label catalogue', error=LabelError)
  rows = Rows(path)
  where_of = lambda column: (lambda row: f'{rows(row)}, column {column!r}')
  ids = [None if _is_missing(i) else str(i).strip()
         for i in _cells(table, config.id_column, path, 'the id column')]
  if None in ids:
    raise LabelError(f'{where_of(config.id_column)(ids.index(None))}: the id'
                     ' is empty; every row needs an id.')
  if len(set(ids)) != len(ids):
    seen = set()
    for row, i in enumerate(ids):
      if i in seen:
        raise LabelError(f'{where_of(config.id_column)(row)}: the id {i!r} is'
                         ' repeated; ids must be unique.')
      seen.add(i)
  folder = path.parent.resolve()
  if config.path_column:
    cells = _cells(table, config.path_column, path, 'the image paths')
    paths = []
    for row, cell in enumerate(cells):
      if _is_missing(cell):
        raise LabelError(f'{where_of(config.path_column)(row)}: no image'
                         ' path.')
      paths.append(str(folder / str(cell).strip()))
  elif config.image_folder:
    images = folder / config.image_folder
    paths = [str(images / f'{i}{config.image_suffix}') for i in ids]
  else:
    raise LabelError('config.labels: set path_column (a column of image'
                     ' paths) or image_folder (holding <id><image_suffix>).')
  missing = next((r for r, p in enumerate(paths)
                  if not pathlib.Path(p).is_file()), None)
  if missing is not None:
    raise LabelError(f'{rows(missing)} (id {ids[missing]!r}): no image at'
                     f' {paths[missing]}.')
  columns, targets = [], {}
  for column in parse_columns(config.columns):
    if column.kind == 'binary':
      value, mask = _binary(_cells(table, column.name, path, 'binary'),
                            where_of(column.name))
    elif column.kind == 'regression':
      value, mask = _regression(
          _cells(table, column.name, path, 'regression'),
          where_of(column.name))
    elif column.kind == 'multiclass':
      value, classes = _multiclass(
          _cells(table, column.name, path, 'multiclass'))
      if len(classes) < 2:
        raise LabelError(
            _too_few_classes(path, column, [repr(c) for c in classes],
                             int((value >= 0).sum()), 'the catalogue')
            + _CHECK_THE_COLUMN)
      column = dataclasses.replace(column, classes=classes)
      mask = value >= 0
      value = np.maximum(value, 0)
    else:
      counts = np.zeros((len(ids), len(column.answers)), np.float32)
      known = np.ones((len(ids), len(column.answers)), bool)
      for a, answer in enumerate(column.answers):
        counts[:, a], known[:, a] = _regression(
            _cells(table, answer, path, f'votes of {column.name}'),
            where_of(answer))
        negative = np.flatnonzero(counts[:, a] < 0)
        if len(negative):
          raise LabelError(f'{where_of(answer)(negative[0])}: a vote count of'
                           f' {counts[negative[0], a]:g} is negative.')
        # Counts of volunteers: the Dirichlet-multinomial loss would take a
        # fraction, and silently weigh a question by it.
        fractional = np.flatnonzero(counts[:, a] % 1)
        if len(fractional):
          raise LabelError(
              f'{where_of(answer)(fractional[0])}: a vote count of'
              f' {counts[fractional[0], a]:g} is not a whole number; write'
              ' how many volunteers gave the answer (or leave it empty when'
              ' unknown).')
      # A question is known when every answer's count is, with some votes.
      value, mask = counts, known.all(1) & (counts.sum(1) > 0)
      counts[~mask] = 0
    columns.append(column)
    targets[column.name] = {'value': value, 'mask': mask}
  is_validation = _split(table, config, ids, path, where_of)
  table_ = LabelTable(str(path), ids, paths, is_validation, columns, targets,
                      rows)
  if config.max_train_labels:
    # The labelled training rows with the smallest id hashes: a subset as
    # good as random, the same on every machine whatever the file's order
    # (a catalogue sorted by id or by class would otherwise bias it), and
    # each budget's rows within every larger budget's.
    train = table_.rows('train')
    train = train[table_.labelled()[train]]
    order = np.argsort(galaxy_zoo.id_hashes(
        np.array([ids[r] for r in train], object)), kind='stable')
    keep = np.zeros(len(ids), bool)
    keep[train[order[:config.max_train_labels]]] = True
    # Rows beyond the budget leave training (and never join validation).
    table_.targets = {
        name: {'value': parts['value'], 'mask': parts['mask'] &
               (keep | table_.is_validation)}
        for name, parts in table_.targets.items()}
  return table_


def _classes_in(column: Column, parts: Mapping[str, np.ndarray],
                rows: np.ndarray) -> tuple[list[str], int]:
  """The classes of a classification column's known labels among ``rows``
  (binary as 0/1, multiclass by name) and how many rows are known."""
  known = rows[parts['mask'][rows]]
  values = np.unique(parts['value'][known])
  if column.kind == 'binary':
    return [f'{v:g}' for v in values], len(known)
  return [repr(column.classes[int(v)]) for v in values], len(known)


def split_advice(config: ml_collections.ConfigDict, budget: bool) -> str:
  """How the user moves galaxies between the splits (or, with ``budget``,
  trains on more of them)."""
  advice = (f'change the {config.split_column!r} column\'s values'
            if config.split_column else
            'change labels.validation_percent or set labels.split_column')
  if budget and config.max_train_labels:
    advice += (', or raise labels.max_train_labels (now'
               f' {config.max_train_labels})')
  return advice


def check_classes(table: LabelTable,
                  config: ml_collections.ConfigDict) -> dict[str, str]:
  """Refuses a classification column whose labels hold one class (or none)
  in the catalogue or in the training split: the model would learn a
  constant and a binary column's ROC AUC would be NaN, yet training would
  run and keep a "best" checkpoint.  Called before fine-tuning only:
  predicting a catalogue's rows needs no labels.

  Args:
    table: the catalogue as read.
    config: ``config.labels``, for the advice (split column, budget).

  Returns:
    Per binary column whose validation split holds one class (so its ROC
    AUC is NaN at every evaluation), a line saying so.

  Raises:
    LabelError: naming the file, the column and its one class.
  """
  warnings = {}
  for column in table.columns:
    if column.kind not in ('binary', 'multiclass'):
      continue
    parts = table.targets[column.name]
    # With a budget the masks hold only the budget's training rows: the
    # training split's line below is then the true one.
    classes, count = _classes_in(column, parts, np.arange(len(table)))
    if len(classes) < 2 and not config.max_train_labels:
      raise LabelError(_too_few_classes(table.source, column, classes, count,
                                        'the catalogue') + _CHECK_THE_COLUMN)
    for split in SPLITS:
      if split == 'validation' and not len(table.rows(split)):
        continue  # Nothing evaluates (gzjax.finetune refuses what would).
      held, count = _classes_in(column, parts, table.rows(split))
      if len(held) >= 2:
        continue
      line = _too_few_classes(table.source, column, held, count,
                              f'the {split} split')
      if split == 'train':
        raise LabelError(
            f'{line}; a label needs at least two classes to train on:'
            f' {split_advice(config, True)}.')
      if column.kind == 'binary':
        warnings[column.name] = (
            f'{line}, so its ROC AUC is NaN at every evaluation; put'
            ' galaxies of both classes in validation:'
            f' {split_advice(config, False)}.')
  return warnings


def _split(table, config, ids, path, where_of) -> np.ndarray:
  if config.split_column:
    cells = _cells(table, config.split_column, path, 'the split')
    result = np.zeros(len(ids), bool)
    for row, cell in enumerate(cells):
      text = '' if cell is None else str(cell).strip().lower()
      if text not in SPLITS:
        raise LabelError(f'{where_of(config.split_column)(row)}: {cell!r} is'
                         ' not a split; write train or validation.')
      result[row] = text == 'validation'
    return result
  return galaxy_zoo.is_validation(np.array(ids, dtype=object),
                                  config.validation_percent)


class LabelSource(Sequence):
  """Random access to one split's records for the grain pipelines."""

  def __init__(self, table: LabelTable, split: str,
               rows: np.ndarray | None = None):
    self._table = table
    self.split = split
    self._rows = table.rows(split) if rows is None else np.asarray(rows)
    if split == 'train':  # Rows with no known label teach nothing.
      self._rows = self._rows[table.labelled()[self._rows]]
    if not len(self._rows):
      advice = ('evaluate --split=train, or give the catalogue validation rows'
                ' (labels.validation_percent, labels.split_column)'
                if split == 'validation' else
                'check the label columns and the split')
      raise LabelError(f'{table.source}: the {split} split has no labelled'
                       f' rows: {advice}.')

  def __len__(self) -> int:
    return len(self._rows)

  def row(self, index: int) -> int:
    return int(self._rows[index])

  def __getitem__(self, index) -> dict[str, Any]:
    row = int(self._rows[index])
    path = self._table.paths[row]
    # galaxy_id is the row: the pipeline's messages name the image by this.
    where = (f'{self._table.where(row)} (id {self._table.ids[row]!r}),'
             f' image {path}')
    try:
      image = pathlib.Path(path).read_bytes()
    except OSError as error:
      raise LabelError(f'{where}: cannot read it'
                       f' ({error.strerror or error}).') from None
    return {
        'image': image,
        'galaxy_id': row,
        fields.IMAGE_SOURCE: where,
        **fields.no_labels(),
        'targets': self._table.record_targets(row),
    }

