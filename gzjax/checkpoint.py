"""Orbax checkpoints of the training state and the data iterator.

Two managers under the workdir:

* ``checkpoints/``: the latest ``keep`` steps, saved every N steps and at the
  end; a restart resumes from the newest.
* ``best/``: the single step with the best value of the configured metric.

Each checkpoint holds the train state and, beside it as JSON, the input
iterator's state, so a resumed run reads exactly the batches the
uninterrupted run would have read.  Orbax writes a step into a temporary
directory and renames it when complete, so a run killed during a save resumes
from the previous checkpoint.

A step that cannot be restored (a file missing or truncated, say) raises
:class:`gzjax.errors.CheckpointError` naming the step and the file;
:meth:`Checkpointer.restore_newest_intact` (what training uses) then moves it
to ``WORKDIR/damaged_checkpoints/`` and falls back to the next older step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import pathlib
import re
import shutil
import time
from typing import Any

import jax
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp

from gzjax import errors


# What every complete step holds; Orbax's own messages for a missing one do
# not name it ("pytree structure error").
REQUIRED_FILES = ('state/_METADATA', 'state/manifest.ocdbt', 'data/metadata')
DAMAGED = 'damaged_checkpoints'
# Fields of the saved state renamed since: {name now: name in older
# checkpoints}, which still restore (TrainState.rest became model_state).
RENAMED_FIELDS = {'model_state': 'rest'}


def _manager(directory: pathlib.Path, **options) -> ocp.CheckpointManager:
  # With several processes, every save meets at barriers named by the step;
  # the latest and best managers save the same step at once, so each needs
  # its own names (else: "Barrier _async_write_complete.N is already
  # ongoing" and the save times out).
  return ocp.CheckpointManager(
      directory.resolve(),
      options=ocp.CheckpointManagerOptions(
          create=True,
          multiprocessing_options=ocp.options.MultiprocessingOptions(
              barrier_sync_key_prefix=directory.name),
          **options),
      item_names=('state', 'data'),
  )


class Checkpointer:
  """Saves and restores (train state, data-iterator state) pairs."""

  def __init__(self, workdir: str | pathlib.Path, *, keep: int = 2,
               best_metric: str | None = None, best_mode: str = 'min'):
    workdir = pathlib.Path(workdir)
    self.latest = _manager(workdir / 'checkpoints', max_to_keep=keep)
    self.best_metric = best_metric
    self.best = None
    if best_metric:
      self.best = _manager(
          workdir / 'best', max_to_keep=1,
          best_fn=lambda metrics: metrics[best_metric], best_mode=best_mode)

  @staticmethod
  def _args(state: Any, data: Any) -> ocp.args.Composite:
    return ocp.args.Composite(state=ocp.args.StandardSave(state),
                              data=ocp.args.JsonSave(data))

  def save(self, step: int, state: Any, data: Any) -> None:
    """Saves ``step`` to the latest checkpoints (in the background: a
    failed write is raised by the next save or :meth:`wait`)."""
    _check_room(self.latest, state)
    with _writing(self.latest):
      self.latest.save(step, args=self._args(state, data))

  def save_if_best(self, step: int, state: Any, data: Any,
                   metrics: dict[str, float], warn=print) -> None:
    """Offers ``step`` to the best-checkpoint manager, which keeps one.

    A NaN or infinite metric is not offered (a line through ``warn`` says
    so): a NaN compares false both ways, and Orbax would keep or drop the
    step by accident, so "best" would mean nothing.
    """
    if self.best is not None and self.best_metric in metrics:
      value = float(metrics[self.best_metric])
      if not math.isfinite(value):
        kept = self.best.best_step()
        warn(f'gzjax: WARNING: {self.best_metric} is {value} at step {step},'
             ' so the step is not a candidate for the best checkpoint ('
             + (f'step {kept} stays best' if kept is not None else
                'none is kept yet') + ').')
        return
      _check_room(self.best, state)
      with _writing(self.best):
        self.best.save(step, args=self._args(state, data),
                       metrics={self.best_metric: metrics[self.best_metric]})

  def latest_step(self) -> int | None:
    return self.latest.latest_step()

  def steps(self, which: str = 'latest') -> list[int]:
    manager = self.best if which == 'best' else self.latest
    return [] if manager is None else sorted(manager.all_steps())

  def kept_in(self, step: int) -> str:
    """``'latest'`` or ``'best'``: which manager keeps ``step``.

    A step number names a step wherever it is kept: the best one is often
    older than every step ``checkpoints/`` still holds (it kept the newest
    few), and then lives only in ``best/``.

    Raises:
      MissingCheckpointError: neither keeps it; the steps of both are named.
    """
    for which in ('latest', 'best'):
      if step in self.steps(which):
        return which
    workdir = pathlib.Path(self.latest.directory).parent
    raise errors.MissingCheckpointError(
        f'No checkpoint at step {step} in {workdir}: checkpoints/ holds steps'
        f' {self.steps()} and best/ {self.steps("best")}; pass one of them'
        ' (or latest or best) as --checkpoint.')

  def restore_newest_intact(
      self, template: Any, warn=print) -> tuple[Any, Any, int] | None:
    """The newest latest-checkpoint that restores, or None when none exist.

    A damaged step is moved to ``damaged_checkpoints/`` beside
    ``checkpoints/`` (kept for inspection, out of the way of the steps
    training will save again) with a warning through ``warn``; so are best
    checkpoints newer than the step restored, which training will redo.

    Raises:
      CheckpointError: every step is damaged.
    """
    problems = []
    for step in reversed(self.steps()):
      try:
        restored = self.restore(template, step=step)
      except errors.CheckpointError as error:
        problems.append(str(error))
        moved = self._set_aside(self.latest, step)
        warn(f'gzjax: WARNING: {error} Moved it to {moved}; falling back to'
             ' the previous checkpoint.')
        continue
      for newer in self.steps('best'):
        if newer > step:
          moved = self._set_aside(self.best, newer)
          warn(f'gzjax: WARNING: the best checkpoint (step {newer}) is newer'
               f' than step {step}, where training resumes; moved it to'
               f' {moved}.')
      return restored
    if problems:
      raise errors.CheckpointError(
          f'No checkpoint in {self.latest.directory} can be restored (the'
          f' damaged ones are now in {self._damaged}): {problems[-1]}')
    return None

  @property
  def _damaged(self) -> pathlib.Path:
    return pathlib.Path(self.latest.directory).parent / DAMAGED

  def _set_aside(self, manager: ocp.CheckpointManager, step: int
                 ) -> pathlib.Path:
    source = pathlib.Path(manager.directory) / str(step)
    target = (self._damaged /
              f'{source.parent.name}-{step}-{time.strftime("%Y%m%d-%H%M%S")}')
    if jax.process_index() == 0:  # One process moves; all then re-list.
      target.parent.mkdir(parents=True, exist_ok=True)
      shutil.move(str(source), str(target))
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f'gzjax_set_aside_{step}')
    manager.reload()
    return target

  def restore(self, template: Any, *, step: int | None = None,
              which: str = 'latest') -> tuple[Any, Any, int]:
    """Restores (state, data state, step) into ``template``'s structure.

    Args:
      template: a state with the right structure, shapes and shardings.
      step: a specific step; default the newest (``latest``) or the best.
      which: ``'latest'`` or ``'best'``.
    """
    manager = self.best if which == 'best' else self.latest
    if manager is None:
      raise errors.MissingCheckpointError(
          'No best checkpoints: set config.best_metric.')
    if step is None:
      step = (manager.best_step() if which == 'best'
              else manager.latest_step())
    if step is None or step not in manager.all_steps():
      raise errors.MissingCheckpointError(
          f'No {which} checkpoint{"" if step is None else f" at step {step}"}'
          f' in {manager.directory}; steps there: {manager.all_steps()}.')
    folder = pathlib.Path(manager.directory) / str(step)
    for name in REQUIRED_FILES:
      if not (folder / name).is_file():
        raise errors.CheckpointError(
            f'Checkpoint step {step} is damaged: {folder / name} is missing.')
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    renamed = _renamed_fields(abstract, folder)
    if renamed:  # An older checkpoint: restore by the names it was saved by.
      abstract = {renamed.get(f.name, f.name): getattr(abstract, f.name)
                  for f in dataclasses.fields(abstract)}
    try:
      restored = manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract),
          data=ocp.args.JsonRestore()))
    except Exception as error:  # Orbax and TensorStore raise many types.  pylint: disable=broad-except
      raise errors.CheckpointError(
          f'Checkpoint step {step} in {folder} cannot be restored:'
          f' {_innermost(error)}') from error
    state = restored.state
    if renamed:
      state = type(template)(**{
          f.name: state[renamed.get(f.name, f.name)]
          for f in dataclasses.fields(template)})
    return state, restored.data, step

  def wait(self) -> None:
    """Blocks until asynchronous saves are on disk."""
    for manager in (self.latest, self.best):
      if manager is not None:
        with _writing(manager):
          manager.wait_until_finished()

  def close(self) -> None:
    """Waits for the saves and closes both managers, both even when a save
    failed (whose error, one line, is raised after)."""
    failures = []
    for manager in (self.latest, self.best):
      if manager is not None:
        try:
          with _writing(manager):
            manager.close()
        except errors.CheckpointError as error:
          failures.append(error)
    if failures:
      raise failures[0]


def _check_room(manager: ocp.CheckpointManager, state: Any) -> None:
  """Refuses, in one line, a save the filesystem has no room for, before
  Orbax starts one that would fail in each of its writing threads (a
  traceback apiece) and leave a partial step behind."""
  needed = sum(leaf.nbytes for leaf in jax.tree.leaves(state)
               if hasattr(leaf, 'nbytes'))
  free = shutil.disk_usage(manager.directory).free
  if free < needed:
    raise errors.CheckpointError(
        f'Cannot save a checkpoint in {manager.directory}: it needs'
        f' {needed / 1e6:,.1f} MB and the filesystem has'
        f' {free / 1e6:,.1f} MB free. Free space there (or choose another'
        ' --workdir) and run the same command again: it resumes from the'
        ' newest complete checkpoint.')


# TensorStore's text for a failed write: the file, and the OS's error code.
_FAILED_FILE = re.compile(r'Failed writing: "([^"]+)"')
_OS_ERROR = re.compile(r"os_error_code='?(\d+)")


@contextlib.contextmanager
def _writing(manager: ocp.CheckpointManager):
  """A save that the filesystem refused (full, read-only, a file-size limit)
  as one line naming the folder, the file and the OS's reason; Orbax's own
  is a traceback per writing thread.  Other errors pass unchanged."""
  try:
    yield
  except (OSError, ValueError, RuntimeError) as error:
    text = '\n'.join(str(e) for e in _chain(error))
    code = _OS_ERROR.search(text)
    if isinstance(error, OSError) and error.errno:
      reason = os.strerror(error.errno)
    elif code:
      reason = os.strerror(int(code.group(1)))
    else:
      raise
    where = _FAILED_FILE.search(text)
    raise errors.CheckpointError(
        f'Cannot save a checkpoint in {manager.directory}: {reason}'
        + (f' (writing {where.group(1)})' if where else '')
        + '. Free space there (or choose another --workdir) and run the'
        ' same command again: it resumes from the newest complete'
        ' checkpoint.') from None


class _ReportedWrites(logging.Filter):
  """Drops asyncio's "exception was never retrieved" for Orbax's failed
  writes, logged as their tasks are collected (at exit, after the run's one
  line): :func:`_writing` reports them."""

  def filter(self, record: logging.LogRecord) -> bool:
    error = record.exc_info[1] if record.exc_info else None
    return not (error is not None and 'never retrieved' in record.getMessage()
                and 'OCDBT' in str(error))


logging.getLogger('asyncio').addFilter(_ReportedWrites())


def _chain(error: BaseException):
  """The error and its causes, outermost first."""
  while error is not None:
    yield error
    error = error.__cause__ or error.__context__


def _renamed_fields(template: Any, folder: pathlib.Path) -> dict[str, str]:
  """{field: its name in the checkpoint} of ``template``'s renamed fields
  that the checkpoint in ``folder`` holds under their old name."""
  if not dataclasses.is_dataclass(template):
    return {}
  fields = {f.name for f in dataclasses.fields(template)}
  candidates = {new: old for new, old in RENAMED_FIELDS.items()
                if new in fields}
  if not candidates:
    return {}
  try:  # The saved tree's paths, e.g. "('rest', 'bn', 'mean')".
    paths = json.loads((folder / 'state' / '_METADATA').read_text())[
        'tree_metadata']
    saved = {entry['key_metadata'][0]['key'] for entry in paths.values()}
  except (OSError, ValueError, KeyError, IndexError, TypeError):
    return {}  # Unreadable: the restore itself names what is wrong.
  return {new: old for new, old in candidates.items()
          if old in saved and new not in saved}


def _innermost(error: BaseException) -> str:
  """The first line of the deepest cause: TensorStore's names the file."""
  *_, error = _chain(error)
  line = str(error).strip().splitlines()[0] if str(error).strip() else ''
  return (line[:400] or type(error).__name__).rstrip('.') + '.'
