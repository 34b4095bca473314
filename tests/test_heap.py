"""The heap frozen while programs trace (gzjax.heap): what is frozen, what
is given back, and what is left alone."""

import gc
import os
import signal
import sys
import threading
import weakref

import pytest

from gzjax import heap

# CPython 3.14's incremental collector has no threshold for full collections
# to defer (gzjax.heap: only the freeze applies there).
DEFERS = sys.version_info < (3, 14)


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
  thresholds = gc.get_threshold()
  gc.freeze()  # A program that froze its own start-up heap.
  try:
    frozen = gc.get_freeze_count()
    with heap.frozen():
      assert gc.get_freeze_count() == frozen
      assert gc.get_threshold() == thresholds
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
      assert gc.get_threshold() == thresholds
  finally:
    gc.enable()


def _full_collections(during) -> int:
  """How many full (oldest-generation) collections ran during ``during()``."""
  full = []
  callback = lambda phase, info: full.append(1) if (
      phase == 'start' and info['generation'] == 2) else None
  gc.callbacks.append(callback)
  try:
    during()
  finally:
    gc.callbacks.remove(callback)
  return len(full)


def _trace_like() -> list:
  """What a trace does to the collector: many objects that live on, more
  than half as many as survived the last full collection (CPython runs one
  when those that have survived since exceed a quarter)."""
  return [[n] for n in range(len(gc.get_objects()) // 2 + 100_000)]


@pytest.mark.skipif(not DEFERS, reason='no full collections to defer')
def test_full_collections_wait_for_the_end_of_the_block():
  thresholds = gc.get_threshold()
  gc.collect()
  # Outside a block, as many long-lived objects set off full collections ...
  assert _full_collections(_trace_like) >= 1
  gc.collect()
  with heap.frozen():
    young = gc.get_threshold()
    # ... inside, the young generations are collected as before, the
    # oldest one not until the block ends.
    assert _full_collections(_trace_like) == 0
    assert young[:2] == thresholds[:2] and young[2] > 1000
  assert gc.get_threshold() == thresholds
  gc.collect()


def test_blocks_in_threads_give_the_heap_back_when_the_last_one_ends():
  thresholds = gc.get_threshold()
  first_in, second_in, first_out = (threading.Event() for _ in range(3))
  seen = {}

  def first():
    with heap.frozen():
      first_in.set()
      second_in.wait(10)
    first_out.set()

  def second():
    first_in.wait(10)
    with heap.frozen():
      second_in.set()
      first_out.wait(10)
      # The first block has ended; this one still holds the heap frozen.
      seen['inside'] = gc.get_freeze_count(), gc.get_threshold()

  threads = [threading.Thread(target=first), threading.Thread(target=second)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join(20)
    assert not thread.is_alive()
  assert first_in.is_set() and second_in.is_set() and first_out.is_set()
  count, inside = seen['inside']
  assert count > 1000 and (inside[2] > 1000 or not DEFERS)
  assert gc.get_freeze_count() == 0 and gc.get_threshold() == thresholds


@pytest.mark.filterwarnings('ignore:os.fork')  # JAX's threads: the child
def test_a_process_forked_inside_a_block_does_not_keep_it():  # only exits.
  thresholds = gc.get_threshold()
  holding, release = threading.Event(), threading.Event()

  def hold():  # Another thread inside the module's lock at the fork.
    with heap._LOCK:  # pylint: disable=protected-access
      holding.set()
      release.wait(10)

  holder = threading.Thread(target=hold)
  with heap.frozen():
    holder.start()
    assert holding.wait(10)
    pid = os.fork()
    if not pid:  # The child: a data loader's worker, say.
      signal.alarm(10)  # Were the lock still held, it would hang here.
      given_back = (gc.get_freeze_count() == 0
                    and gc.get_threshold() == thresholds)
    else:
      release.set()
      holder.join(10)
      assert gc.get_freeze_count() > 0  # The parent's block is still open.
  if not pid:
    # The parent's block has ended in the child too; the child's own blocks
    # freeze and give back as anywhere.
    with heap.frozen():
      own = gc.get_freeze_count() > 0
    os._exit(0 if given_back and own and gc.get_freeze_count() == 0
             and gc.get_threshold() == thresholds else 1)
  _, status = os.waitpid(pid, 0)
  assert os.waitstatus_to_exitcode(status) == 0
  assert gc.get_freeze_count() == 0 and gc.get_threshold() == thresholds
