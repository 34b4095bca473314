"""Python's garbage collector kept off the long-lived heap while programs trace.

Tracing a model allocates millions of Python objects (tracers, equations,
flax's module fields, MLIR builders), many of which live until the trace
ends, so CPython's full (oldest-generation) collection runs again and again
during a start-up, and each one walks every object the process holds: the
~240,000 of the imported libraries and all that the trace has made so far,
to free next to nothing.  On two CPU cores those walks were 0.6-0.9 s of
EfficientNet-B7's creation and 0.7 / 1.0 / 2.9-3.7 s of EfficientNet-B0's /
InceptionV3's / B7's train-step lowering (BUILD.md, start-up: "The collector
off the long-lived heap").

:func:`frozen` moves the objects that exist when a trace begins into the
collector's permanent generation (``gc.freeze``) and defers full collections
until the block ends, then gives both back (``gc.unfreeze``, the thresholds
as they were).  The young generations are collected as before, so cycles
among the trace's short-lived objects are freed as they were (B7's peak
memory is the same); what the deferred full collections would have found is
left to the next one after the block.  The engine uses it where it traces
(model creation, a kept program's first call or lowering), never around a
step's call.  On CPython 3.14 and later, whose collector is incremental and
has no threshold for full collections, only the freeze applies.
"""

from __future__ import annotations

import contextlib
import gc
import os
import threading
from typing import Iterator

# The oldest generation's threshold inside a block: a full collection waits
# for this many collections of the middle one (CPython's default is 10).
_DEFERRED = 1_000_000

# Blocks may overlap in threads: the first to enter freezes, the last to
# leave gives the heap back.
_LOCK = threading.Lock()
_open = {'blocks': 0, 'thresholds': None}


def _give_back() -> None:
  gc.set_threshold(*_open['thresholds'])
  gc.unfreeze()
  _open['thresholds'] = None


@contextlib.contextmanager
def frozen() -> Iterator[None]:
  """The heap as it is at entry, frozen, and full collections deferred, for
  the block.

  Does nothing when the collector is off or the heap is frozen already (by
  an enclosing block, or by a program that froze its own start-up heap with
  ``gc.freeze()``: that freeze is left as it was).  A ``gc.freeze()`` or
  ``gc.set_threshold()`` of your own inside a block is undone when it ends.
  """
  entered = None  # The process that opened the block.
  try:
    with _LOCK:
      if (not _open['blocks'] and gc.isenabled()
          and not gc.get_freeze_count()):
        _open['thresholds'] = gc.get_threshold()
        gc.freeze()
        gc.set_threshold(*_open['thresholds'][:2], _DEFERRED)
      _open['blocks'] += 1
      entered = os.getpid()
    yield
  finally:
    # A block open when its process forked ends in the child too; it was
    # closed there by the fork (below).
    if entered == os.getpid():
      with _LOCK:
        _open['blocks'] -= 1
        if not _open['blocks'] and _open['thresholds'] is not None:
          _give_back()


def _after_fork_in_child() -> None:
  # A process forked inside a block (a data loader's worker) has no block
  # open: it must not keep the heap frozen and full collections deferred
  # for its whole life, nor a lock another thread held at the fork.
  global _LOCK
  _LOCK = threading.Lock()
  _open['blocks'] = 0
  if _open['thresholds'] is not None:
    _give_back()


os.register_at_fork(after_in_child=_after_fork_in_child)
