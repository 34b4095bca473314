r"""How fast a training run starts: creation, compile, first step, warm cache.

  python tools/startup_benchmark.py --models=cnn,efficientnet_b0 --batch_size=4
  python tools/startup_benchmark.py --models=efficientnet_b7:300 --batch_size=2
  python tools/startup_benchmark.py --models=efficientnet_b7 --create_only

For each model (``name`` or ``name:side``; default side: the model's native
one), two fresh processes run what ``gzjax.main`` runs before its first step,
with the engine's functions (``experiment.create_experiment``,
``train.make_train_step``) on a random batch, and one persistent compilation
cache directory, empty before the first process:

* create: ``experiment.create_experiment`` and its ``initial_state()``,
  until the state is on the devices;
* compile: lowering and compiling the train step (``TrainStep.compile``);
* first step: from the start of creation to the first step's finished state;
* collector: the seconds Python's garbage collector ran during the creation
  and during the compile (``gzjax.heap`` keeps its full collections off the
  imported heap while the engine traces);
* the second process's compile and creation, with the cache the first one
  filled, the cache hits jax reported in it (0 when the engine has no
  persistent cache), and the traced programs it loaded instead of tracing
  them (``gzjax.programs``; the train step).

Prints a markdown table.  ``--child`` is the subprocess's entry point.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
import jax

import benchmark
from gzjax import experiment as experiments
from gzjax import models
from gzjax import train

FLAGS = flags.FLAGS  # --batch_size and --image_size come from benchmark.py.
_MODELS = flags.DEFINE_list(
    'models', ['cnn', 'efficientnet_b0', 'inception_v3', 'efficientnet_b7'],
    'Models to measure, each NAME or NAME:SIDE (default side: native).')
_CACHE_DIR = flags.DEFINE_string(
    'cache_dir', '', 'Internal (--child): the compilation cache directory.')
_CHILD = flags.DEFINE_bool(
    'child', False, 'Internal: measure one process and print a JSON line.')
_CREATE_ONLY = flags.DEFINE_bool(
    'create_only', False, 'Measure creation only, in one process per model:'
    ' no train step, no warm-cache process.')
_TIMEOUT = flags.DEFINE_integer(
    'timeout', 1800, 'Seconds each process may take before its row reads'
    ' "timed out".')

CACHE_HIT_EVENT = '/jax/compilation_cache/cache_hits'
PROGRAM_HIT_EVENT = '/gzjax/programs/hit'  # gzjax.programs.HIT_EVENT


class _Collector:
  """Seconds Python's garbage collector has run since it was made."""

  def __init__(self):
    self.seconds, self._started = 0.0, []
    gc.callbacks.append(self._callback)

  def _callback(self, phase, _):
    if phase == 'start':
      self._started.append(time.perf_counter())
    elif self._started:
      self.seconds += time.perf_counter() - self._started.pop()


def measure(model: str, size: int, batch_size: int, cache_dir: str) -> dict:
  """One process's start: seconds to create, compile, finish a first step."""
  hits = []
  collector = _Collector()
  jax.monitoring.register_event_listener(
      lambda event, **_: hits.append(event)
      if event in (CACHE_HIT_EVENT, PROGRAM_HIT_EVENT) else None)
  config = benchmark.configure('', model, size, batch_size)
  if 'compilation_cache_dir' in config:  # Engines before issue 12 have none.
    config.compilation_cache_dir = cache_dir
    experiments.use_compilation_cache(config.compilation_cache_dir)
  start, collected = time.perf_counter(), collector.seconds
  experiment = experiments.create_experiment(config)
  state = jax.block_until_ready(experiment.initial_state())
  created = time.perf_counter()
  create_gc = collector.seconds - collected
  if _CREATE_ONLY.value:
    return {'create_s': created - start, 'create_gc_s': create_gc,
            'dtype': config.model.dtype}
  batch = train.to_global(benchmark.random_batch(batch_size, size),
                          experiment.batch_sharding)
  collected = collector.seconds
  step = train.make_train_step(experiment).compile(state, batch)
  compiled = time.perf_counter()
  compile_gc = collector.seconds - collected
  state, _ = step(state, batch)
  jax.block_until_ready(state)
  finished = time.perf_counter()
  return {'create_s': created - start, 'compile_s': compiled - created,
          'first_step_s': finished - start, 'create_gc_s': create_gc,
          'compile_gc_s': compile_gc,
          'cache_hits': hits.count(CACHE_HIT_EVENT),
          'programs_loaded': hits.count(PROGRAM_HIT_EVENT),
          'dtype': config.model.dtype}


def run_child(model: str, size: int, batch_size: int, cache_dir: str) -> dict:
  command = [sys.executable, __file__, '--child', f'--models={model}',
             f'--image_size={size}', f'--batch_size={batch_size}',
             f'--cache_dir={cache_dir}', f'--create_only={_CREATE_ONLY.value}']
  try:
    result = subprocess.run(command, capture_output=True, text=True,
                            timeout=_TIMEOUT.value)
  except subprocess.TimeoutExpired:
    return {'missing': f'timed out after {_TIMEOUT.value} s'}
  if result.returncode:
    lines = result.stderr.strip().splitlines() or [f'exit {result.returncode}']
    return {'missing': lines[-1]}
  return json.loads(result.stdout.strip().splitlines()[-1])


def parse_model(entry: str) -> tuple[str, int]:
  name, _, side = entry.partition(':')
  return name, int(side) if side else (
      FLAGS.image_size or models.native_input_size(name))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if _CHILD.value:
    print(json.dumps(measure(_MODELS.value[0], FLAGS.image_size,
                             FLAGS.batch_size, _CACHE_DIR.value)))
    return
  lines = ['| model | px | batch | create s | compile s | first step s'
           ' | collector s (create / compile) | warm-cache compile s'
           ' | warm-cache create s | cache hits | programs loaded |',
           '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |'
           ' ---: | ---: |']
  for entry in _MODELS.value:
    name, size = parse_model(entry)
    with tempfile.TemporaryDirectory() as cache_dir:
      cold = run_child(name, size, FLAGS.batch_size, cache_dir)
      warm = (run_child(name, size, FLAGS.batch_size, cache_dir)
              if 'missing' not in cold and not _CREATE_ONLY.value else cold)
    if 'missing' in cold or 'missing' in warm:
      reason = cold.get('missing') or warm.get('missing')
      lines.append(f'| {name} | {size} | {FLAGS.batch_size} | missing:'
                   f' {reason} | | | | | | | |')
    elif _CREATE_ONLY.value:
      lines.append(f'| {name} | {size} | {FLAGS.batch_size}'
                   f' | {cold["create_s"]:.1f} | | | {cold["create_gc_s"]:.2f}'
                   ' | | | | |')
    else:
      lines.append(
          f'| {name} | {size} | {FLAGS.batch_size} | {cold["create_s"]:.1f}'
          f' | {cold["compile_s"]:.1f} | {cold["first_step_s"]:.1f}'
          f' | {cold["create_gc_s"]:.2f} / {cold["compile_gc_s"]:.2f}'
          f' | {warm["compile_s"]:.1f} | {warm["create_s"]:.1f}'
          f' | {warm["cache_hits"]} | {warm.get("programs_loaded", 0)} |')
    print(lines[-1], file=sys.stderr, flush=True)
  print('\n'.join(lines))


if __name__ == '__main__':
  benchmark.define_flags()  # --config, --model, --batch_size, …
  app.run(main)
