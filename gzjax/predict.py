"""Survey-scale prediction: streamed, sharded, resumable, one process or many.

``predict_catalog`` labels every row of a :class:`gzjax.data.catalog.Catalog`
with a trained checkpoint and writes the rows as it goes, in memory that does
not grow with the catalogue:

* grain decodes whole batches (in ``num_workers`` processes, with bounded
  prefetch buffers) with the evaluation preprocessing of
  ``gzjax.data.pipeline.eval_image``; the jitted ``evaluate.make_predict_fn``
  (TTA too) runs them; a shard's rows are held until it is written.
* The catalogue is cut into a fixed grid of shards of ``shard_size`` rows
  (the last is shorter).  Each shard is written atomically (a ``.tmp`` file,
  then ``os.replace``) as Parquet or CSV, so a file named ``part-*`` is
  always complete.  Process ``i`` of ``P`` predicts shards ``i, i + P, …``
  on its own devices: nothing is gathered across processes, and the files
  are the same whatever ``P``.
* Rerunning the same command after a kill keeps the finished shards and
  predicts the rest; batches never straddle shards, so every shard is
  computed from the same batches and the result is identical to an
  uninterrupted run.  ``_RUN.json``, written just before the first shard,
  records the run's settings; a rerun with other settings (another
  checkpoint, catalogue, shard size, format, crop…) into a folder holding
  shards is refused instead of mixing outputs, and so is a folder holding
  ``part-*`` files (or a manifest) but no ``_RUN.json``: a shard is
  counted as done only if this run, or the recorded run it resumes, wrote
  it.  A run refused before its first shard (cut-outs smaller than the
  crop, ``strict``'s first unreadable image) leaves the folder as it found
  it (``workdir_rules.claim``), so that the corrected command just runs.
* A crop that does not fit the survey is refused before any work: the
  first readable images (up to ``catalog.SIZE_PROBE_IMAGES``) are all
  smaller than it.  One small cut-out among them is a bad row like any
  other, whatever its row.
* An image that cannot be read or decoded does not stop the run: it is
  listed, with the reason, in ``errors.csv`` (per shard while running) and
  counted at the end.  ``strict`` turns the first one into an error.
* When every shard exists, ``_SUCCESS.json`` lists the shards and their row
  and error counts, the checkpoint and the settings.

Output layout::

  OUTPUT_DIR/
    _RUN.json                 settings of the run (checked on resume)
    part-00000.parquet        rows 0 … shard_size-1 of the catalogue
    part-00001.parquet        (minus unreadable images)
    part-00001.errors.csv     that shard's unreadable images, if any
    errors.csv                all unreadable images: id, path, reason
    _SUCCESS.json             the manifest, written last

Each row: ``id`` (a string, as in the catalogue); for the votes task the 37
vote fractions ``Class1.1`` … ``Class11.6`` (the model's outputs as they
are: tree-consistent from the votes head, not from a sigmoid head) and the
derived labels ``label_3class``/``name_3class``/``p_3class`` and
``label_7class``/``name_7class``/``p_7class`` (``gzjax.taxonomy``'s labels
of the votes projected onto the tree, ``taxonomy.project_to_tree``, so
every ``p`` is in [0, 1]; -1 and an empty name when no class is confident;
``p`` is the leading question-1 fraction, or ``taxonomy.seven_class_scores``
of the class, NaN without a class); for classifiers, one probability per
class, the ``predicted`` class name and its probability ``p_predicted``;
for a label catalogue's task (``gzjax.finetune``), the columns named from
its labels (``<column>_probability`` and ``<column>_predicted`` for
binary, ...).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import math
import os
import pathlib
import sys
from typing import Any, Sequence

import grain
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from gzjax import config_checks
from gzjax import distributed
from gzjax import errors
from gzjax import evaluate
from gzjax import experiment as experiments
from gzjax import finetune
from gzjax import progress
from gzjax import tasks
from gzjax import taxonomy
from gzjax import workdir_rules
from gzjax.data import catalog as catalogs
from gzjax.data import labels as labels_lib
from gzjax.data import pipeline
from gzjax.models import weights

FORMATS = ('parquet', 'csv')
RUN_FILE = '_RUN.json'
SUCCESS_FILE = '_SUCCESS.json'
ERRORS_FILE = 'errors.csv'
ERRORS_HEADER = ('id', 'path', 'reason')


class PredictionError(errors.GzjaxError, ValueError):
  """A survey prediction that cannot go on; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class Options:
  """How a survey prediction runs and writes.

  Attributes:
    output_dir: where the shards, errors and manifest go.
    shard_size: catalogue rows per output shard.
    format: 'parquet' or 'csv'.
    strict: the first unreadable image is an error instead of a listed one.
    num_workers: grain decoding processes (0 decodes in this process);
      None takes ``config.input.num_workers`` (:func:`decoding_workers`).
    checkpoint: 'latest', 'best' or a step number.
    tta: average over the 8 rotations and flips.
    progress_interval: seconds between plain progress lines (not a TTY).
  """

  output_dir: str | pathlib.Path
  shard_size: int = 100_000
  format: str = 'parquet'
  strict: bool = False
  num_workers: int | None = None
  checkpoint: str = 'latest'
  tta: bool = False
  progress_interval: float = progress.DEFAULT_INTERVAL

  def __post_init__(self):
    if self.format not in FORMATS:
      raise PredictionError(
          f'format={self.format!r}: use one of {", ".join(FORMATS)}.')
    if self.shard_size <= 0:
      raise PredictionError(
          f'shard_size={self.shard_size}: give a positive number of rows.')
    if self.num_workers is not None and self.num_workers < 0:
      raise PredictionError(f'num_workers={self.num_workers} is negative.')


@dataclasses.dataclass(frozen=True)
class Summary:
  """What a call did: rows and errors over the whole catalogue if complete."""

  output_dir: pathlib.Path
  complete: bool
  shards_written: int
  rows: int | None = None
  errors: int | None = None


# ------------------------------------------------------------------ files ---


def shard_name(shard: int, num_shards: int, fmt: str) -> str:
  width = max(5, len(str(num_shards - 1)))
  return f'part-{shard:0{width}d}.{fmt}'


def _errors_name(name: str) -> str:
  return name.rsplit('.', 1)[0] + '.errors.csv'


def _why(error: OSError) -> str:
  """An OSError as a few words: its reason and the file it names."""
  reason = error.strerror or type(error).__name__
  return f'{reason} ({error.filename})' if error.filename else reason


def _write_atomically(path: pathlib.Path, data: bytes,
                      fix: str = 'free space or choose an --output_dir you'
                      ' can write to, and rerun (finished shards are'
                      ' kept).') -> None:
  """``data`` as ``path`` via a ``.tmp`` file and ``os.replace``.

  A failure (read-only folder, full disk) is one line naming ``path`` and
  ending with ``fix``; the ``.tmp`` file is removed and whatever was at
  ``path`` is left as it was.
  """
  temporary = path.with_name(path.name + '.tmp')
  try:
    temporary.write_bytes(data)
    os.replace(temporary, path)
  except OSError as error:
    with contextlib.suppress(OSError):  # Never there, or not ours to remove.
      temporary.unlink(missing_ok=True)
    raise PredictionError(f'Cannot write {path}: {_why(error)}; {fix}'
                          ) from None


def check_output(path: str | pathlib.Path, flag: str = '--output', *,
                 table: bool = True) -> pathlib.Path:
  """Refuses an output file that is a folder, device or pipe, or (``table``,
  a prediction file) is named neither .csv nor .parquet; callers check
  before predicting too, so that the refusal does not come after the work.

  ``flag`` names the option in the message (``--out`` of
  ``gzjax.tools.export_encoder``).
  """
  path = pathlib.Path(path)
  if path.exists() and not path.is_file():
    kind = 'a folder' if path.is_dir() else 'not a regular file'
    raise PredictionError(
        f'{flag}={path} is {kind}: name a new file, or a regular file to'
        ' replace.')
  if table:
    table_format(path)
  return path


def write_output(path: str | pathlib.Path, data: bytes,
                 flag: str = '--output') -> None:
  """The user's output file (``flag`` names its option), written atomically.

  A folder, device or pipe of that name is refused before anything is
  written (``os.replace`` would put a regular file in place of a device
  such as /dev/full, and fails on a folder); a folder that cannot be
  created or written is one line.  On failure an existing file is kept.
  """
  path = check_output(path, flag, table=False)
  fix = f'choose an {flag} you can write to (the old file, if any, is kept).'
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
  except OSError as error:
    raise PredictionError(f'Cannot create the folder of {flag}={path}:'
                          f' {_why(error)}; {fix}') from None
  _write_atomically(path, data, fix)


def _csv_bytes(header: Sequence[str], rows) -> bytes:
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator='\n')
  writer.writerow(header)
  writer.writerows(rows)
  return buffer.getvalue().encode()


def read_errors(path: pathlib.Path) -> list[list[str]]:
  with path.open(newline='', encoding='utf-8') as f:
    return list(csv.reader(f))[1:]


# ------------------------------------------------------------------- rows ---


def _float_text(value: float) -> str:
  # 9 significant digits round-trip a float32 exactly; NaN is an empty cell.
  return '' if math.isnan(value) else f'{value:.9g}'


def output_columns(ids: Sequence[str], outputs: np.ndarray,
                   task: tasks.Task) -> dict[str, Any]:
  """The shard's columns, in order, for ``outputs`` of ``task``.

  The width is the task's, not inferred: a shard whose every image was
  unreadable has no rows, and still its columns.
  """
  outputs = np.asarray(outputs, np.float32).reshape(len(ids),
                                                    task.num_outputs)
  columns: dict[str, Any] = {'id': list(ids)}
  if task.columns is not None:  # A label catalogue's (gzjax.finetune).
    columns.update(task.columns(outputs))
    return columns
  if task.is_classification:
    for k, name in enumerate(task.class_names):
      columns[name] = outputs[:, k]
    best = np.argmax(outputs, axis=1)
    columns['predicted'] = [task.class_names[k] for k in best]
    columns['p_predicted'] = outputs[np.arange(len(ids)), best]
    return columns
  for k, name in enumerate(taxonomy.ANSWERS):
    columns[name] = outputs[:, k]
  # The 37 columns are the model's own votes (Kaggle scores those); classes
  # and shares come from them projected onto the tree, since outputs that
  # break it (independent sigmoids) give shares above 1.
  votes = taxonomy.project_to_tree(outputs)
  q1 = votes[:, taxonomy.QUESTIONS[0].slice]
  derived = (
      ('3class', taxonomy.three_class_labels(votes),
       taxonomy.THREE_CLASS_NAMES, q1),
      ('7class', taxonomy.seven_class_labels(votes),
       taxonomy.SEVEN_CLASS_NAMES, taxonomy.seven_class_scores(votes)),
  )
  for suffix, labels, names, scores in derived:
    chosen = np.take_along_axis(scores, np.maximum(labels, 0)[:, None],
                                axis=1)[:, 0]
    columns[f'label_{suffix}'] = labels.astype(np.int64)
    columns[f'name_{suffix}'] = [names[k] if k >= 0 else '' for k in labels]
    columns[f'p_{suffix}'] = np.where(labels >= 0, chosen,
                                      np.nan).astype(np.float32)
  return columns


def _encode_shard(columns: dict[str, Any], fmt: str) -> bytes:
  if fmt == 'parquet':
    # The list columns (id, class names) are text: typed so, an empty
    # shard's have the type of the others' (not Arrow's null).
    table = pa.table({
        name: (pa.array(values, pa.string()) if isinstance(values, list)
               else pa.array(values))
        for name, values in columns.items()
    })
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()
  names = list(columns)
  rows = []
  for i in range(len(columns['id'])):
    row = []
    for name in names:
      value = columns[name][i]
      row.append(_float_text(float(value))
                 if isinstance(value, (float, np.floating)) else str(value))
    rows.append(row)
  return _csv_bytes(names, rows)


def table_format(path: str | pathlib.Path) -> str:
  """'csv' or 'parquet', by a prediction file's suffix."""
  fmt = {'.csv': 'csv', '.parquet': 'parquet', '.pq': 'parquet'}.get(
      pathlib.Path(path).suffix.lower())
  if fmt is None:
    raise PredictionError(f'--output={path}: name a .csv or .parquet file.')
  return fmt


def write_table(path: str | pathlib.Path, columns: dict[str, Any]) -> None:
  """One file of prediction columns, CSV or Parquet by its suffix, written
  atomically (never a partial file by that name)."""
  path = pathlib.Path(path)
  write_output(path, _encode_shard(columns, table_format(path)))


def read_shards(output_dir: str | pathlib.Path) -> pa.Table:
  """All rows of a finished prediction, in catalogue order (for checks)."""
  output_dir = pathlib.Path(output_dir)
  manifest = json.loads((output_dir / SUCCESS_FILE).read_text())
  tables = []
  for shard in manifest['shards']:
    path = output_dir / shard['file']
    if manifest['format'] == 'parquet':
      tables.append(pq.read_table(path))
    else:
      import pyarrow.csv as pa_csv  # pylint: disable=g-import-not-at-top
      tables.append(pa_csv.read_csv(path, convert_options=pa_csv.ConvertOptions(
          column_types={'id': pa.string()})))
  # A CSV shard whose optional cells are all empty reads them as nulls.
  return pa.concat_tables(tables, promote_options='permissive')


# ----------------------------------------------------------------- decode ---


class _DecodeBatch(grain.transforms.Map):
  """(shard, start, stop) to a padded batch of images and the failures."""

  def __init__(self, catalog: catalogs.Catalog,
               config: ml_collections.ConfigDict, batch_size: int):
    self._catalog = catalog
    self._config = config
    self._batch_size = batch_size

  def map(self, element):
    shard, start, stop = element
    size = self._config.image_size
    images = np.zeros((self._batch_size, size, size, 3), np.float32)
    readable = np.zeros(self._batch_size, bool)
    errors = []
    for i, path in enumerate(self._catalog.paths(start, stop)):
      try:
        with open(path, 'rb') as f:
          encoded = f.read()
        images[i] = pipeline.eval_image(encoded, self._config)
        readable[i] = True
      # Any failure of one file (PIL raises many kinds for broken data) is
      # that file's error row, never the run's end.
      except Exception as error:  # pylint: disable=broad-exception-caught
        errors.append((start + i, _reason(error)))
    return {'shard': shard, 'start': start, 'stop': stop, 'image': images,
            'readable': readable, 'errors': errors}


def _reason(error: BaseException) -> str:
  """One line, the same on every run (no object addresses), as the training
  pipeline words a bad image (``pipeline.decode_error_text``)."""
  text = pipeline.decode_error_text(error)
  if isinstance(error, FileNotFoundError):
    return 'no such file'
  if 'crop_size' in text and 'exceeds' in text:
    return f'smaller than the crop: {text}'
  return f'cannot decode the image ({type(error).__name__}: {text})'


# ------------------------------------------------------------------- run ---


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def _local_experiment(
    experiment: experiments.Experiment, state: experiments.TrainState
) -> tuple[experiments.Experiment, experiments.TrainState]:
  """The experiment and its state on this process's devices only: no
  cross-process step."""
  if jax.process_count() == 1:
    return experiment, state
  mesh = distributed.make_mesh(jax.local_devices())
  local = dataclasses.replace(experiment, mesh=mesh)
  # This process's replica (typed PRNG keys too), placed on its devices.
  state = jax.tree.map(lambda x: x.addressable_data(0), state)
  return local, jax.device_put(state, local.replicated)


def _settings(config, workdir, catalog, options, step, task) -> dict[str, Any]:
  return {
      'catalog': {'source': catalog.source, 'rows': len(catalog),
                  'sha256': catalog.fingerprint()},
      'checkpoint': {'workdir': str(pathlib.Path(workdir).resolve()),
                     'which': str(options.checkpoint), 'step': int(step)},
      # What the backbone sees (as an exported encoder records it), the
      # task and TTA.
      'model': {**weights.preprocessing_of(config), 'task': task.name,
                'tta': bool(options.tta)},
      'shard_size': options.shard_size,
      'format': options.format,
  }


def _differences(old: Any, new: Any, prefix: str = '') -> list[str]:
  if isinstance(old, dict) and isinstance(new, dict):
    found = []
    for key in sorted(set(old) | set(new)):
      found += _differences(old.get(key), new.get(key), f'{prefix}{key}.')
    return found
  old = list(old) if isinstance(old, tuple) else old
  new = list(new) if isinstance(new, tuple) else new
  return [] if old == new else [f'{prefix[:-1]}: {old!r} then, {new!r} now']


def _is_run_file(name: str) -> bool:
  """A name this module writes in an output folder (besides _RUN.json)."""
  return name.startswith('part-') or name in (SUCCESS_FILE, ERRORS_FILE)


def _refuse_strays(output_dir: pathlib.Path) -> None:
  """Refuses a folder without _RUN.json that holds shards or a manifest.

  Finished shards are recognised by their names alone, so such files (a
  run whose _RUN.json was deleted, a user's own) would be taken as this
  run's output and counted as done.
  """
  if not output_dir.is_dir():
    return
  strays = sorted(p.name for p in output_dir.iterdir() if _is_run_file(p.name))
  if strays:
    shown = ', '.join(strays[:5]) + (
        f' and {len(strays) - 5} more' if len(strays) > 5 else '')
    raise PredictionError(
        f'--output_dir={output_dir} holds {shown} but no {RUN_FILE}, so'
        ' they are not known to be this run\'s shards: choose an empty or'
        ' new --output_dir, or remove them.')


def _make_output_dir(output_dir: pathlib.Path) -> None:
  """Creates ``output_dir`` (for :func:`workdir_rules.claim`) and checks it
  can be written, before any image is predicted; one line otherwise."""
  try:
    workdir_rules.make_writable(output_dir)
  except OSError as error:
    doing = 'write to' if output_dir.is_dir() else 'create'
    raise PredictionError(
        f'Cannot {doing} --output_dir={output_dir}: {_why(error)}; choose'
        ' a folder you can write to.') from None


def _recorded(output_dir: pathlib.Path) -> dict[str, Any] | None:
  """The settings in ``output_dir``'s _RUN.json; None without one (a
  folder holding run files of no recorded run is refused)."""
  path = output_dir / RUN_FILE
  if not path.exists():
    _refuse_strays(output_dir)
    return None
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError) as error:
    raise PredictionError(
        f'{path} cannot be read as a run\'s settings ({error}): give a new'
        ' --output_dir, or delete that one to start again.') from None


def _holds_run_files(output_dir: pathlib.Path) -> bool:
  return any(_is_run_file(p.name) for p in output_dir.iterdir())


def _refuse_another_run(output_dir: pathlib.Path, recorded: dict[str, Any],
                        settings: dict[str, Any]) -> None:
  differences = _differences(recorded, json.loads(json.dumps(settings)))
  if differences:
    raise PredictionError(
        f'{output_dir} holds predictions of another run ('
        + '; '.join(differences) + '): give a new --output_dir, or delete'
        ' that one to start again.')


def _check_run(claim: workdir_rules.Claim, settings: dict[str, Any]) -> None:
  """Refuses a resume with different settings, or a folder holding run
  files of no recorded run; otherwise has ``claim`` record the settings
  in _RUN.json when the run starts writing (before its first shard), so
  that a run refused before then leaves the folder as it found it.

  A _RUN.json beside no shard (a run killed before its first) protects
  nothing: it is replaced, not taken for another run's predictions.  With
  several processes the record is written at once: the others write their
  shards without waiting for process 0's, and read it to compare.
  """
  output_dir, recorded = claim.workdir, None
  if jax.process_index() == 0:
    recorded = _recorded(output_dir)
    if recorded is None or not _holds_run_files(output_dir):
      claim.record(RUN_FILE, json.dumps(settings, indent=2))
      recorded = None
  if jax.process_count() > 1:  # Every process compares, after the write.
    claim.start()
    _barrier('gzjax_predict_run_file')
    recorded = _recorded(output_dir)
  if recorded is not None:
    _refuse_another_run(output_dir, recorded, settings)


def _check_unique_ids(catalog: catalogs.Catalog) -> None:
  """Refuses a catalogue in which two rows have one id, naming both rows as
  label-catalogue messages do (``labels.Rows``: a CSV's file lines, the
  header being line 1; a Parquet table's rows from 1).

  Each output row is known only by its id.  Vectorised (a hash encoding, and
  on a repeat one sort of integer codes): about a second for 5 million rows.
  """
  encoded = pc.dictionary_encode(catalog._ids)  # pylint: disable=protected-access
  if len(encoded.dictionary) == len(encoded):
    return
  codes = encoded.indices.to_numpy(zero_copy_only=False)
  distinct, first = np.unique(codes, return_index=True)
  first_row = np.empty(len(distinct), np.int64)
  first_row[distinct] = first
  repeat = int(np.argmax(first_row[codes] != np.arange(len(codes))))
  earlier = int(first_row[codes[repeat]])
  where = labels_lib.Rows(pathlib.Path(catalog.source))
  second = where(repeat).removeprefix(f'{catalog.source}, ')
  raise catalogs.CatalogError(
      f'{where(earlier)} and {second} both have the id'
      f' {catalog.id(repeat)!r}; ids must be unique (each names one'
      ' prediction): fix the catalogue.')


def _batch_size(config: ml_collections.ConfigDict) -> int:
  batch = config.eval_batch_size or config.input.batch_size
  devices = jax.local_device_count()
  return -(-batch // devices) * devices


def predict_catalog(config: ml_collections.ConfigDict,
                    workdir: str | pathlib.Path,
                    catalog: catalogs.Catalog, options: Options, *,
                    process_index: int | None = None,
                    process_count: int | None = None,
                    task: tasks.Task | None = None) -> Summary:
  """Predicts this process's shards of ``catalog``; see the module doc.

  Args:
    config: the experiment config of ``workdir``.
    workdir: the training workdir holding the checkpoint.
    catalog: the rows to predict.
    options: output and run settings.
    process_index: this process's share; defaults to ``jax.process_index()``.
    process_count: the number of shares; defaults to ``jax.process_count()``.
      (Given explicitly, one process can play each share in turn.)
    task: the task of ``workdir``'s checkpoint; defaults to the config's
      built-in task, or for a label-catalogue run the one its
      ``labels.json`` records (``gzjax.finetune.recorded_task``).

  Returns:
    A :class:`Summary`; ``complete`` when every shard of every process
    exists and the manifest is written.
  """
  config_checks.check(config)
  _check_unique_ids(catalog)
  process_index = (jax.process_index() if process_index is None
                   else process_index)
  process_count = (jax.process_count() if process_count is None
                   else process_count)
  output_dir = pathlib.Path(options.output_dir)
  if task is None and finetune.is_catalogue_run(config):
    evaluate.check_checkpoint_folder(pathlib.Path(workdir), options.checkpoint)
    task = finetune.recorded_task(config, workdir)
  experiment, state, step = evaluate.restore(config, workdir,
                                             options.checkpoint, task=task)
  task = experiment.task
  settings = _settings(config, workdir, catalog, options, step, task)
  # Until its first shard, a refused run takes back what it made.
  with workdir_rules.claim(output_dir, make=_make_output_dir,
                           lock=workdir_rules.no_lock,
                           situation=None) as claim:
    _check_run(claim, settings)
    total_shards = catalogs.num_shards(len(catalog), options.shard_size)
    mine = catalogs.shards_of_process(len(catalog), options.shard_size,
                                      process_index, process_count)
    names = {k: shard_name(k, total_shards, options.format) for k in mine}
    for name in names.values():  # A killed run's partial files.
      for stale in (name, _errors_name(name)):
        output_dir.joinpath(stale + '.tmp').unlink(missing_ok=True)
    todo = [k for k in mine if not (output_dir / names[k]).exists()]
    done_rows = sum(len(catalogs.shard_rows(k, len(catalog),
                                            options.shard_size))
                    for k in mine if k not in todo)
    if todo:
      _check_crop_fits(catalog, options.shard_size, todo,
                       config.input.crop_size)
      _predict_shards(experiment, state, catalog, options, todo, names,
                      done_rows, process_index, claim)
    _barrier('gzjax_predict_shards')
    summary = Summary(output_dir, False, len(todo))
    if process_index == 0 or process_count == 1 or jax.process_count() == 1:
      summary = finalize(output_dir, catalog, options, settings) or summary
  return dataclasses.replace(summary, shards_written=len(todo))


def _check_crop_fits(catalog: catalogs.Catalog, shard_size: int,
                     todo: Sequence[int], crop_size: int) -> None:
  """:func:`catalogs.check_crop_fits` on the rows of the ``todo`` shards."""
  catalogs.check_crop_fits(
      catalog, (row for shard in todo
                for row in catalogs.shard_rows(shard, len(catalog),
                                               shard_size)), crop_size)


def decoding_workers(config: ml_collections.ConfigDict,
                     options: Options) -> tuple[int, str]:
  """The decoding processes, and the setting they come from: the
  ``--num_workers`` flag (``options.num_workers``) when given, else
  ``config.input.num_workers``."""
  if options.num_workers is None:
    return int(config.input.num_workers), 'config.input.num_workers'
  return int(options.num_workers), '--num_workers'


def _predict_shards(experiment: experiments.Experiment,
                    state: experiments.TrainState,
                    catalog: catalogs.Catalog, options: Options,
                    todo: Sequence[int],
                    names: dict[int, str], done_rows: int,
                    process_index: int, claim: workdir_rules.Claim) -> None:
  """Predicts the ``todo`` shards; ``claim`` starts (writing _RUN.json)
  just before the first is written."""
  config = experiment.config
  output_dir = pathlib.Path(options.output_dir)
  local, local_state = _local_experiment(experiment, state)
  predict_fn = evaluate.make_predict_fn(local, tta=options.tta)
  batch_size = _batch_size(config)
  specs = []
  for shard in todo:
    rows = catalogs.shard_rows(shard, len(catalog), options.shard_size)
    specs += [(shard, start, min(start + batch_size, rows.stop))
              for start in range(rows.start, rows.stop, batch_size)]
  input_config = ml_collections.ConfigDict(config.input.to_dict())
  input_config.num_workers, setting = decoding_workers(config, options)
  if process_index == 0 or jax.process_count() == 1:
    where = (f'{input_config.num_workers} worker processes'
             if input_config.num_workers else 'this process')
    print(f'Decoding images in {where} ({setting}='
          f'{input_config.num_workers}).', file=sys.stderr)
  mapped = None
  if input_config.num_workers:  # Workers then share one mapped copy of the rows.
    mapped = output_dir / f'.catalog-process-{process_index}.arrow'
    catalog.map_to(mapped)
  dataset = grain.MapDataset.source(specs).map(
      _DecodeBatch(catalog, input_config, batch_size))
  batches = pipeline._to_iter_dataset(dataset, input_config)  # pylint: disable=protected-access
  remaining = sum(len(catalogs.shard_rows(k, len(catalog), options.shard_size))
                  for k in todo)
  bar = progress.bar(total=done_rows + remaining, initial=done_rows,
                     desc='predict', unit='images',
                     interval=options.progress_interval)
  pending_ids, pending_outputs, pending_errors = [], [], []
  iterator = iter(batches)
  try:
    for batch in iterator:
      shard, start, stop = batch['shard'], batch['start'], batch['stop']
      count = stop - start
      if batch['errors'] and options.strict:
        row, reason = batch['errors'][0]
        raise PredictionError(
            f'{catalog.path(row)} (id {catalog.id(row)}): {reason}; rerun'
            ' without --strict to list unreadable images in errors.csv and'
            ' go on.')
      # Placed explicitly: with several processes JAX takes no numpy input
      # for a sharded argument, even on this process's own devices.
      images = jax.device_put(batch['image'], local.batch_sharding)
      outputs = np.asarray(predict_fn(local_state, images))[:count]
      readable = np.asarray(batch['readable'][:count])
      ids = catalog.ids(start, stop)
      pending_ids += [i for i, ok in zip(ids, readable) if ok]
      pending_outputs.append(outputs[readable])
      pending_errors += [(catalog.id(r), catalog.path(r), reason)
                         for r, reason in batch['errors']]
      bar.update(count)
      if stop == catalogs.shard_rows(shard, len(catalog),
                                     options.shard_size).stop:
        claim.start()
        _write_shard(output_dir, names[shard], pending_ids,
                     np.concatenate(pending_outputs), pending_errors,
                     local.task, options.format)
        pending_ids, pending_outputs, pending_errors = [], [], []
  finally:
    bar.close()
    if hasattr(iterator, 'close'):
      iterator.close()
    if mapped is not None:
      mapped.unlink(missing_ok=True)


def _write_shard(output_dir: pathlib.Path, name: str, ids: list[str],
                 outputs: np.ndarray, errors: list[tuple[str, str, str]],
                 task: tasks.Task, fmt: str) -> None:
  """The errors first, then the shard: a shard's file means it is done."""
  errors_path = output_dir / _errors_name(name)
  if errors:
    _write_atomically(errors_path, _csv_bytes(ERRORS_HEADER, errors))
  else:
    errors_path.unlink(missing_ok=True)
  columns = output_columns(ids, outputs, task)
  _write_atomically(output_dir / name, _encode_shard(columns, fmt))


def finalize(output_dir: pathlib.Path, catalog: catalogs.Catalog,
             options: Options, settings: dict[str, Any]) -> Summary | None:
  """Writes errors.csv and the manifest once every shard exists.

  Returns:
    The summary, or None while shards of other processes are missing.
  """
  total_shards = catalogs.num_shards(len(catalog), options.shard_size)
  shards, all_errors = [], []
  for k in range(total_shards):
    name = shard_name(k, total_shards, options.format)
    if not (output_dir / name).exists():
      return None
    rows = catalogs.shard_rows(k, len(catalog), options.shard_size)
    errors_path = output_dir / _errors_name(name)
    errors = read_errors(errors_path) if errors_path.exists() else []
    all_errors += errors
    shards.append({'file': name, 'first_row': rows.start,
                   'stop_row': rows.stop, 'rows': len(rows) - len(errors),
                   'errors': len(errors)})
  _write_atomically(output_dir / ERRORS_FILE,
                    _csv_bytes(ERRORS_HEADER, all_errors))
  rows = sum(s['rows'] for s in shards)
  manifest = {
      'rows': rows, 'errors': len(all_errors), 'errors_file': ERRORS_FILE,
      'format': options.format, 'shard_size': options.shard_size,
      'shards': shards, 'checkpoint': settings['checkpoint'],
      'catalog': settings['catalog'], 'model': settings['model'],
  }
  _write_atomically(output_dir / SUCCESS_FILE,
                    json.dumps(manifest, indent=2).encode())
  line = (f'Wrote {progress.counted(rows, "prediction")} in'
          f' {progress.counted(total_shards, "shard")} to {output_dir}')
  if all_errors:
    line += (f'; {progress.counted(len(all_errors), "image")} could not be read'
             f' (listed in {output_dir / ERRORS_FILE})')
  print(line + '.', file=sys.stderr)
  return Summary(output_dir, True, 0, rows, len(all_errors))


def stopped_situation(output_dir: str | pathlib.Path) -> str:
  """What a survey prediction stopped by a signal leaves in ``output_dir``,
  for its one line (``preemption.Interrupted``): the finished shards, whole
  since each is written atomically, which a rerun keeps."""
  output_dir = pathlib.Path(output_dir)
  try:
    settings = json.loads((output_dir / RUN_FILE).read_text())
    total = catalogs.num_shards(settings['catalog']['rows'],
                                settings['shard_size'])
    names = [shard_name(k, total, settings['format']) for k in range(total)]
  except (OSError, ValueError, KeyError, TypeError):  # Stopped before it.
    return (f'while predicting into {output_dir}, before any shard was'
            ' written; run the same command again to start')
  finished = sum((output_dir / name).exists() for name in names)
  if finished == total:
    return (f'while predicting into {output_dir}: all'
            f' {progress.counted(total, "shard")} are finished and kept, but'
            f' not yet {SUCCESS_FILE}; run the same command again to write it')
  return (f'while predicting into {output_dir}: {finished} of'
          f' {progress.counted(total, "shard")} are finished and kept; run the'
          ' same command again to predict the rest')


def run(config: ml_collections.ConfigDict, workdirs: Sequence[str], *,
        images: str | None = None, catalog: str | None = None,
        id_column: str = 'id', path_column: str = 'path',
        **options) -> Summary:
  """The command line's survey prediction (``--output_dir`` and friends)."""
  # Before the catalogue is read (predict_catalog checks it again).
  config_checks.check(config)
  if len(workdirs) != 1:
    raise PredictionError(
        'Survey prediction (--output_dir/--catalog) takes one workdir; an'
        ' --ensemble is only for the Kaggle CSV (--output).')
  if not images and not catalog and finetune.is_catalogue_run(config):
    # A label-catalogue run predicts its own catalogue's rows by default.
    table = labels_lib.read(config.labels)
    opened = catalogs.Catalog(table.ids, table.paths, source=table.source)
  else:
    opened = catalogs.open_catalog(images, catalog, id_column=id_column,
                                   path_column=path_column)
  return predict_catalog(config, workdirs[0], opened, Options(**options))
