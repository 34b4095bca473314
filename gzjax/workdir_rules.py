"""The rules of a run's workdir: writable, resumable only by the same model,
its files replaced atomically and its metrics cut back to a restored step."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import json
import math
import os
import pathlib
import socket
from typing import Any, Callable, Iterator

import jax
import ml_collections

from gzjax import errors
from gzjax import preemption


# Config keys that change the saved state's structure, as (key, what of its
# value matters): a checkpoint restores only under the same values.
STATE_KEYS = (
    ('task', None), ('model.name', None), ('model.head', None),
    ('model.hidden', None), ('ema_decay', bool),
    ('optimizer.name', None), ('optimizer.freeze_backbone', None),
    ('optimizer.schedule', lambda s: s == 'plateau'),
    ('optimizer.grad_clip_norm', bool),
    ('optimizer.layer_decay', lambda d: d != 1.0),
    ('optimizer.trainable_blocks', None),
)

# Config keys of what the model sees (gzjax.models.weights.preprocessing_of):
# a checkpoint resumed, evaluated or asked to predict under other values is
# shown images unlike those it learned from, and scores silently worse.  Not
# input.crop_size: it counts the source's pixels, so that cutouts of another
# pixel scale (Kaggle's 424 px against a survey's) need another crop for the
# same field of view.
PREPROCESSING_KEYS = ('input.image_size', 'input.normalization.mean',
                      'input.normalization.std')


def make_writable(folder: pathlib.Path) -> None:
  """Creates ``folder`` (and its parents) and writes a file there, so that
  a folder no run could write into fails here, before any work; raises the
  OSError for the caller to word."""
  probe = folder / '.gzjax_write_test'
  folder.mkdir(parents=True, exist_ok=True)
  probe.write_text('')
  probe.unlink()


def writable_workdir(workdir: str | pathlib.Path) -> pathlib.Path:
  """Creates ``workdir`` and checks it can be written, in one clear line."""
  workdir = pathlib.Path(workdir)
  if jax.process_index() != 0:
    return workdir
  try:
    make_writable(workdir)
  except OSError as error:
    raise errors.WorkdirError(
        f'Cannot write to the workdir {workdir}: {error.strerror}'
        f'{f" ({error.filename})" if error.filename else ""}. Choose a'
        ' --workdir you can write to.') from None
  return workdir


LOCK_FILE = '.gzjax_training.lock'


@dataclasses.dataclass(frozen=True)
class Lock:
  """A held :func:`training_lock`; ``made``: this run created its file."""
  path: pathlib.Path | None = None
  made: bool = False

  def remove_if_made(self) -> None:
    """Deletes the lock file if this run created it.  Called while the lock
    is held, so that no other run holds it."""
    if self.made:
      self.path.unlink(missing_ok=True)


def _open_lock_file(path: pathlib.Path):
  """The lock file opened for reading and writing, and whether this call
  created it (exclusively: another run's file is never taken for ours)."""
  try:
    return open(path, 'x+'), True  # pylint: disable=consider-using-with
  except FileExistsError:
    return open(path, 'a+'), False  # pylint: disable=consider-using-with


@contextlib.contextmanager
def training_lock(workdir: pathlib.Path) -> Iterator[Lock]:
  """Holds ``workdir``'s lock while a run trains into it; a second run
  (another process, here or on a host sharing the folder) is refused in one
  line naming the holder, instead of both writing the same checkpoints,
  metrics and config.json.  The lock (``flock``) ends with its process,
  however that ends, so a killed run never leaves the workdir locked.
  Evaluating and predicting take no lock: they only read."""
  if jax.process_index() != 0:  # The other processes are the same run.
    yield Lock()
    return
  path = workdir / LOCK_FILE
  handle, made = _open_lock_file(path)
  try:
    try:
      fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      handle.seek(0)
      holder = handle.read().strip() or 'a process that has not said which'
      raise errors.WorkdirError(
          f'Another run is training into {workdir} ({holder}): wait for it'
          ' to end, or train into another --workdir.') from None
    handle.seek(0)
    handle.truncate()
    handle.write(f'pid {os.getpid()} on {socket.gethostname()}, since'
                 f' {datetime.datetime.now().isoformat(timespec="seconds")}')
    handle.flush()
    yield Lock(path, made)
  finally:
    handle.close()  # Also releases the lock.


def _missing_folders(folder: pathlib.Path) -> list[pathlib.Path]:
  """``folder`` and those of its parents that do not exist yet, innermost
  first: what making it creates."""
  missing = []
  for path in (folder, *folder.parents):
    if os.path.lexists(path):
      break
    missing.append(path)
  return missing


def _names(folder: pathlib.Path) -> set[str]:
  try:
    return set(os.listdir(folder))
  except OSError:  # Gone, or no longer a folder: nothing to take back.
    return set()


def _remove_empty(folders) -> None:
  """Removes each of ``folders`` that is empty, in turn: rmdir refuses any
  other, so nothing in one is ever lost."""
  for folder in folders:
    try:
      folder.rmdir()
    except OSError:  # Not empty (files that are not this run's), or gone.
      pass


class Claim:
  """A run's hold on its workdir (:func:`claim`)."""

  def __init__(self, workdir: pathlib.Path, records=None):
    self.workdir = workdir
    self.started = False
    self._records = dict(records or {})

  def record(self, name: str, text: str) -> None:
    """Has :meth:`start` write ``text`` as the file ``name``: a record of
    the run (a fine-tune's labels.json, a survey prediction's _RUN.json)
    that a run refused before it starts does not leave behind, to change
    what a corrected rerun does."""
    self._records[name] = text

  def start(self) -> None:
    """The run writes into the workdir from now on, its records first; what
    it writes stays, however the run ends.  Once only: later calls do
    nothing."""
    if self.started:
      return
    self.started = True
    for name, text in self._records.items():
      write_atomically(self.workdir / name, text)


def _interrupted_start(workdir: pathlib.Path) -> str:
  """What a signal before the first step leaves (:func:`claim` took back
  what the run made), and what rerunning does."""
  if has_checkpoints(workdir):
    return ('while starting to train, before any step: nothing was trained'
            f' or saved, and the checkpoints in {workdir} are as they were;'
            ' run the same command again to resume')
  return ('while starting to train, before any step: nothing was trained or'
          ' saved; run the same command again to start')


def no_lock(workdir: pathlib.Path):
  """In place of :func:`training_lock` for a run that takes none."""
  del workdir
  return contextlib.nullcontext(Lock())


@contextlib.contextmanager
def claim(workdir: str | pathlib.Path, *,
          records: dict[str, str] | None = None,
          make: Callable[[pathlib.Path], Any] = writable_workdir,
          lock: Callable = training_lock,
          situation: Callable[[pathlib.Path], str] | None = _interrupted_start
          ) -> Iterator[Claim]:
  """Makes ``workdir`` and holds its lock for a run: by default a training
  run's (:func:`writable_workdir`, :func:`training_lock`, a signal's line
  about training); a survey prediction passes its own ``make``, no lock
  (:func:`no_lock`: it only adds shards) and no ``situation`` (it words its
  own).

  A run that ends before :meth:`Claim.start` (refused: no dataset, a batch
  larger than the split, a checkpoint of another model; or interrupted)
  leaves the filesystem as it found it: the folders it made (the workdir
  and its missing parents), the empty ones Orbax made inside and a lock
  file it created are removed again, and its ``records`` ({file name:
  text}: a fine-tune's labels.json, which :meth:`Claim.start` writes; and
  those of :meth:`Claim.record`) are never written; anything else stays,
  since it is not this run's.  A signal there says so
  (:class:`preemption.Interrupted`).
  """
  held = Claim(pathlib.Path(workdir), records)
  if jax.process_index() != 0:  # Process 0 makes, locks and takes back.
    yield held
    return
  made = _missing_folders(held.workdir)
  try:
    make(held.workdir)
    with lock(held.workdir) as taken:
      found = _names(held.workdir)  # Under the lock: no run writes there.
      try:
        yield held
      except preemption.Interrupted as stop:
        if not held.started and situation is not None:
          stop.situation = situation(held.workdir)
        raise
      finally:
        if not held.started:
          new = sorted(_names(held.workdir) - found)
          _remove_empty([held.workdir / name for name in new])
          taken.remove_if_made()
  finally:
    if not held.started:
      _remove_empty(made)


def _value(config, key: str):
  node = config
  for part in key.split('.'):
    node = node[part] if part in node else None
    if node is None:
      return None
  return node


def _differences(saved, config, keys) -> list[str]:
  """``key: checkpoint has A, config has B`` for each of ``keys`` (key, how
  its value compares) whose saved value differs; a key the saved config
  lacks (an older run) is not compared."""
  differences = []
  for key, meaning in keys:
    old, new = _value(saved, key), _value(config, key)
    if old is None:
      continue
    if isinstance(old, list):
      old = tuple(old)
    if isinstance(new, list):
      new = tuple(new)
    if (meaning or (lambda v: v))(old) != (meaning or (lambda v: v))(new):
      differences.append(f'{key}: checkpoint has {old!r}, config has {new!r}')
  return differences


def has_checkpoints(workdir: pathlib.Path) -> bool:
  """Whether ``workdir`` holds a completed checkpoint step (a failed save
  leaves only a temporary folder)."""
  folder = workdir / 'checkpoints'
  return folder.is_dir() and any(p.name.isdigit() for p in folder.iterdir())


def saved_config(workdir: pathlib.Path) -> dict | None:
  """The config a run wrote to ``workdir/config.json``; None without one.
  A file that is not a JSON object is one line naming it."""
  path = workdir / 'config.json'
  if not path.is_file():
    return None
  try:
    saved = json.loads(path.read_text())
    if not isinstance(saved, dict):
      raise ValueError('not a JSON object')
  except (ValueError, UnicodeDecodeError) as error:
    raise errors.CheckpointError(
        f'{path} is not the JSON config a run writes ({error}), so it'
        ' cannot say which model the checkpoints in'
        f' {workdir} are of. Restore it from a copy, or train into a new'
        ' --workdir.') from None
  return saved


def check_resumable(config: ml_collections.ConfigDict,
                    workdir: pathlib.Path) -> None:
  """Raises CheckpointError, naming each difference, when the workdir's
  checkpoints were saved under a config that gives another state, or that
  shows the model other images (size, normalisation)."""
  saved = saved_config(workdir)
  if saved is None:
    if has_checkpoints(workdir):
      # Checkpoints copied without it (or it deleted): nothing says what
      # they were trained with, so nothing could be checked.
      raise errors.CheckpointError(
          f'{workdir} holds checkpoints but no config.json, which records'
          ' the model and preprocessing they were trained with: copy the'
          " run's config.json beside them, or train into a new --workdir.")
    return
  differences = _differences(saved, config, STATE_KEYS)
  if differences:
    raise errors.CheckpointError(
        f'The checkpoints in {workdir} are of another model ('
        + '; '.join(differences) + '). Train into a new --workdir, or set'
        ' these values back to resume.')
  differences = _differences(saved, config,
                             [(key, None) for key in PREPROCESSING_KEYS])
  if differences:
    raise errors.CheckpointError(
        f'The checkpoints in {workdir} were trained on images prepared'
        ' otherwise (' + '; '.join(differences) + '). Set these values back'
        ' to resume, evaluate or predict with them, or train into a new'
        ' --workdir.')


def write_atomically(path: pathlib.Path, text: str) -> None:
  if jax.process_index() != 0:
    return
  temporary = path.with_name(path.name + '.tmp')
  temporary.write_text(text)
  os.replace(temporary, path)


def truncate_metrics(path: pathlib.Path, step: int) -> None:
  """Drops the lines after ``step``: a resumed run writes them again."""
  if jax.process_index() != 0 or not path.is_file():
    return
  lines = path.read_text().splitlines(keepends=True)
  kept = [line for line in lines if _logged_step(line) <= step]
  if len(kept) != len(lines):
    write_atomically(path, ''.join(kept))


def _logged_step(line: str) -> float:
  """A metrics line's step; inf (dropped) for a line a kill cut short."""
  try:
    return json.loads(line)['step']
  except (ValueError, KeyError, TypeError):
    return math.inf
