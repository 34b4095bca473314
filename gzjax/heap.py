"""Python's garbage collector kept off the imported heap while programs trace.

Tracing a model allocates hundreds of thousands of short-lived Python objects
(tracers, equations, flax's module fields, MLIR builders), so CPython's
collector runs its full (oldest-generation) collection several times during a
start-up, and each one walks every object the process holds: after importing
jax, flax, optax and the data libraries, some 240,000 that will never be
garbage.  On two CPU cores those walks were 0.55 s of EfficientNet-B7's 5 s
creation and 0.55 / 0.84 s of EfficientNet-B0's / InceptionV3's train-step
lowering, collecting almost nothing (BUILD.md, start-up).

:func:`frozen` moves the objects that exist when a trace begins into the
collector's permanent generation (``gc.freeze``) and back when it ends
(``gc.unfreeze``), so that the collections during the trace walk only what
the trace made.  Nothing is collected less: cycles among the trace's own
objects are found as before, and a frozen object that became garbage
meanwhile is found by the first full collection after the block.  The
engine uses it where it traces (model creation, a kept program's first call
or lowering), never around a step's call.
"""

from __future__ import annotations

import contextlib
import gc
from typing import Iterator


@contextlib.contextmanager
def frozen() -> Iterator[None]:
  """The heap as it is at entry, frozen for the block.

  Does nothing when the collector is off or the heap is frozen already (by
  an enclosing block, or by a program that froze its own start-up heap with
  ``gc.freeze()``: that freeze is left as it was).
  """
  if not gc.isenabled() or gc.get_freeze_count():
    yield
    return
  gc.freeze()
  try:
    yield
  finally:
    gc.unfreeze()
