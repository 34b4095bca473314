"""The heap frozen while programs trace (gzjax.heap): what is frozen, what
is given back, and what is left alone."""

import gc
import weakref

from gzjax import heap


class _Node:
  pass


def _cycle():
  """Two objects that refer to each other (only the collector frees them),
  and a weak reference to one of them."""
  a, b = _Node(), _Node()
  a.other, b.other = b, a
  return a, weakref.ref(a)


def _tracked(obj) -> bool:
  """Whether the collector would walk ``obj`` (it is in a generation, not
  frozen)."""
  return any(o is obj for o in gc.get_objects())


def test_the_heap_at_entry_is_frozen_and_given_back():
  assert gc.isenabled() and gc.get_freeze_count() == 0
  before, alive = _cycle()
  with heap.frozen():
    made = _Node()
    assert gc.get_freeze_count() > 1000  # The imported heap, at least.
    assert not _tracked(before) and _tracked(made)
    del before
    gc.collect()
    # Frozen: not collected inside the block, even by a full collection ...
    assert alive() is not None
  assert gc.get_freeze_count() == 0
  assert _tracked(made) and _tracked(alive())
  gc.collect()
  # ... and collected by the first one after it: nothing leaks.
  assert alive() is None


def test_cycles_made_inside_the_block_are_collected_inside_it():
  with heap.frozen():
    node, alive = _cycle()
    del node
    gc.collect()
    assert alive() is None


def test_a_frozen_heap_and_a_disabled_collector_are_left_as_they_were():
  gc.freeze()  # A program that froze its own start-up heap.
  try:
    frozen = gc.get_freeze_count()
    with heap.frozen():
      assert gc.get_freeze_count() == frozen
    assert gc.get_freeze_count() == frozen  # Not unfrozen by the block.
  finally:
    gc.unfreeze()

  with heap.frozen():  # Nested: the inner block gives nothing back.
    outer = gc.get_freeze_count()
    with heap.frozen():
      assert gc.get_freeze_count() == outer
    assert gc.get_freeze_count() == outer
  assert gc.get_freeze_count() == 0

  gc.disable()
  try:
    with heap.frozen():
      assert gc.get_freeze_count() == 0
  finally:
    gc.enable()
