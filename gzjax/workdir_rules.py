"""The rules of a run's workdir: writable, resumable only by the same model,
its files replaced atomically and its metrics cut back to a restored step."""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import math
import os
import pathlib
import socket

import jax
import ml_collections

from gzjax import errors


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


def writable_workdir(workdir: str | pathlib.Path) -> pathlib.Path:
  """Creates ``workdir`` and checks it can be written, in one clear line."""
  workdir = pathlib.Path(workdir)
  if jax.process_index() != 0:
    return workdir
  probe = workdir / '.gzjax_write_test'
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    probe.write_text('')
    probe.unlink()
  except OSError as error:
    raise errors.WorkdirError(
        f'Cannot write to the workdir {workdir}: {error.strerror}'
        f'{f" ({error.filename})" if error.filename else ""}. Choose a'
        ' --workdir you can write to.') from None
  return workdir


LOCK_FILE = '.gzjax_training.lock'


@contextlib.contextmanager
def training_lock(workdir: pathlib.Path):
  """Holds ``workdir``'s lock while a run trains into it; a second run
  (another process, here or on a host sharing the folder) is refused in one
  line naming the holder, instead of both writing the same checkpoints,
  metrics and config.json.  The lock (``flock``) ends with its process,
  however that ends, so a killed run never leaves the workdir locked.
  Evaluating and predicting take no lock: they only read."""
  if jax.process_index() != 0:  # The other processes are the same run.
    yield
    return
  handle = open(workdir / LOCK_FILE, 'a+')  # pylint: disable=consider-using-with
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
    yield
  finally:
    handle.close()  # Also releases the lock.


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
