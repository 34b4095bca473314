"""A training run asked to stop: it saves a checkpoint and says so in a line.

A scheduler pre-empting a job sends SIGTERM (SLURM, Kubernetes, a cloud's
spot VM) and kills the process a grace period later; a user presses Ctrl-C.
Without help either ends the run wherever Python happens to be (a
``KeyboardInterrupt`` traceback from inside jax, or a silent exit -15 with
a half-written checkpoint) and loses up to ``checkpoint_every_steps`` of
work.  Inside :func:`watch`, the first SIGTERM or SIGINT only asks for a
stop: the training loop finishes its step, saves a checkpoint there and
raises :class:`Stopped`, which ``gzjax.main`` prints as one line (the step
saved, and that the same command resumes).  A second Ctrl-C stops at once
(``KeyboardInterrupt``, as Python's default would).

In a multi-process run JAX's preemption service, started with
``jax.distributed``, owns SIGTERM and tells every process at the same step
(:func:`jax.experimental.multihost_utils.reached_preemption_sync_point`),
so that all of them save the same step; a Ctrl-C there keeps Python's
default.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from typing import Iterator

import jax
from jax.experimental import multihost_utils

from gzjax import errors


class Stopped(errors.GzjaxError, RuntimeError):
  """Training stopped at a signal's request, after saving a checkpoint."""

  def __init__(self, message: str, signal_number: int):
    super().__init__(message)
    # 128 + the signal, as a shell reports a process the signal ended.
    self.exit_code = 128 + signal_number


class Watch:
  """The stop asked for so far, if any (:func:`watch`)."""

  def __init__(self):
    self.signal_number: int | None = None

  def requested(self, step: int) -> bool:
    """Whether to save and stop after ``step``; every process of a
    multi-process run gets the same answer at the same step."""
    if jax.process_count() > 1:
      try:
        return multihost_utils.reached_preemption_sync_point(step)
      except RuntimeError:  # The preemption service is off: no notices.
        return False
    return self.signal_number is not None

  def stopped(self, step: int, checkpoint: str) -> Stopped:
    """The error that ends the run after ``step`` was saved."""
    number = self.signal_number or signal.SIGTERM
    name = signal.Signals(number).name
    return Stopped(
        f'Stopped by {name} after step {step}: its checkpoint is in'
        f' {checkpoint}; run the same command to resume.', number)

  def _ask(self, number: int, frame) -> None:
    del frame
    if self.signal_number is not None and number == signal.SIGINT:
      raise KeyboardInterrupt  # A second Ctrl-C: at once.
    self.signal_number = number
    print(f'gzjax: {signal.Signals(number).name}: saving a checkpoint after'
          ' this step, then stopping'
          + (' (Ctrl-C again stops at once, unsaved).'
             if number == signal.SIGINT else '.'),
          file=sys.stderr, flush=True)


@contextlib.contextmanager
def watch() -> Iterator[Watch]:
  """SIGTERM and SIGINT ask the :class:`Watch` for a stop while inside;
  the previous handlers come back on leaving.  Handlers are Python's to
  set from the main thread of a single-process run only; elsewhere the
  watch hears only JAX's preemption notices."""
  stop = Watch()
  if (jax.process_count() > 1
      or threading.current_thread() is not threading.main_thread()):
    yield stop
    return
  previous = {number: signal.signal(number, stop._ask)  # pylint: disable=protected-access
              for number in (signal.SIGTERM, signal.SIGINT)}
  try:
    yield stop
  finally:
    for number, handler in previous.items():
      # None: a handler not set from Python, which cannot be put back.
      signal.signal(number, signal.SIG_DFL if handler is None else handler)
