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
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp


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
    """Saves ``step`` to the latest checkpoints."""
    self.latest.save(step, args=self._args(state, data))

  def save_if_best(self, step: int, state: Any, data: Any,
                   metrics: dict[str, float]) -> None:
    """Offers ``step`` to the best-checkpoint manager, which keeps one."""
    if self.best is not None and self.best_metric in metrics:
      self.best.save(step, args=self._args(state, data),
                     metrics={self.best_metric: metrics[self.best_metric]})

  def latest_step(self) -> int | None:
    return self.latest.latest_step()

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
      raise FileNotFoundError('No best checkpoints: set config.best_metric.')
    if step is None:
      step = (manager.best_step() if which == 'best'
              else manager.latest_step())
    if step is None or step not in manager.all_steps():
      raise FileNotFoundError(
          f'No {which} checkpoint{"" if step is None else f" at step {step}"}'
          f' in {manager.directory}; steps there: {manager.all_steps()}.')
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()))
    return restored.state, restored.data, step

  def wait(self) -> None:
    """Blocks until asynchronous saves are on disk."""
    self.latest.wait_until_finished()
    if self.best is not None:
      self.best.wait_until_finished()

  def close(self) -> None:
    self.latest.close()
    if self.best is not None:
      self.best.close()
