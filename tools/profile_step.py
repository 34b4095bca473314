r"""Where one train step's time goes: forward, backward, optimizer; XLA's
cost and memory analysis; optionally a jax.profiler trace.

  python tools/profile_step.py --model=cnn --image_size=64 --batch_size=64
  python tools/profile_step.py --model=efficientnet_b0 --batch_size=16 \
      --trace_dir=/tmp/trace   # then: tensorboard --logdir /tmp/trace

Times three jitted programs on the same fixed batch, each the median of
``--repeats`` runs of ``--steps`` calls: the forward pass (inference mode),
forward + backward (the loss's value and gradient, training mode), and the
whole train step (which adds the optimizer update and the donated state).
The differences are the backward pass and the optimizer.  Then the compiled
step's FLOPs and bytes accessed (XLA cost analysis: their ratio says whether
the step is bound by compute or by memory traffic) and its memory (XLA
memory analysis: arguments, outputs, temporaries).
"""

from __future__ import annotations

from absl import app
from absl import flags
import jax

import benchmark
from gzjax import evaluate
from gzjax import experiment as experiments
from gzjax import train

# --config, --model, --image_size, --batch_size, --steps and --repeats are
# tools/benchmark.py's flags, defined when it is imported.
FLAGS = flags.FLAGS
_TRACE_DIR = flags.DEFINE_string(
    'trace_dir', '', 'Write a jax.profiler trace of a few steps here.')


def _seconds_per_call(function, *args) -> float:
  """Median seconds of one call of the jitted ``function``, compiled first."""
  jax.block_until_ready(function(*args))

  def run():
    for _ in range(FLAGS.steps):
      out = function(*args)
    jax.block_until_ready(out)

  return 1 / benchmark.timed_rate(run, FLAGS.steps, FLAGS.repeats)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = benchmark.configure(FLAGS.config, FLAGS.model, FLAGS.image_size,
                               FLAGS.batch_size)
  size = config.input.image_size
  experiment = experiments.create_experiment(config)
  batch = train.to_global(benchmark.random_batch(FLAGS.batch_size, size),
                          experiment.batch_sharding)
  forward = evaluate.make_predict_fn(experiment)
  gradient = jax.jit(jax.value_and_grad(train.make_loss_fn(experiment),
                                        has_aux=True))
  step = train.make_train_step(experiment)
  state = experiment.initial_state()
  timings = {
      'forward': _seconds_per_call(forward, state, batch['image']),
      'forward + backward': _seconds_per_call(gradient, state.params,
                                              state.model_state, batch),
  }

  def one_step(batch):
    nonlocal state
    state, metrics = step(state, batch)
    return metrics

  timings['train step'] = _seconds_per_call(one_step, batch)
  compiled = step.lower(state, batch).compile()
  cost = compiled.cost_analysis()
  memory = compiled.memory_analysis()
  print(f'{config.model.name} at {size} px, batch {FLAGS.batch_size},'
        f' {len(jax.devices())}x {jax.devices()[0].device_kind}\n')
  print('| part | ms per step | share of the step |\n| --- | ---: | ---: |')
  total = timings['train step']
  for name, seconds in timings.items():
    print(f'| {name} | {seconds * 1e3:.1f} | {seconds / total:.0%} |')
  backward = timings['forward + backward'] - timings['forward']
  optimizer = total - timings['forward + backward']
  print(f'| (backward alone) | {backward * 1e3:.1f} | {backward / total:.0%} |')
  print(f'| (optimizer and state) | {optimizer * 1e3:.1f} |'
        f' {optimizer / total:.0%} |')
  # FLOPs as the CPU lowers the step (a GPU program's analysis leaves out
  # the cuDNN convolutions); bytes as this device's program moves them.
  flops = benchmark.step_flops(experiment, FLAGS.batch_size)
  traffic = cost.get('bytes accessed', float('nan'))
  print(f'\nXLA cost analysis: {flops / 1e9:.2f} GFLOP per step,'
        f' {traffic / 1e9:.2f} GB accessed ({flops / traffic:.1f} FLOP/byte);'
        f' achieved {flops / total / 1e9:.1f} GFLOP/s')
  if memory is not None:
    print(f'XLA memory analysis: arguments'
          f' {memory.argument_size_in_bytes / 1e6:.1f} MB, outputs'
          f' {memory.output_size_in_bytes / 1e6:.1f} MB, temporaries'
          f' {memory.temp_size_in_bytes / 1e6:.1f} MB')
  if _TRACE_DIR.value:
    with jax.profiler.trace(_TRACE_DIR.value):
      for _ in range(3):
        jax.block_until_ready(one_step(batch))
    print(f'Trace of 3 steps in {_TRACE_DIR.value}')


if __name__ == '__main__':
  benchmark.define_flags()  # --config, --model, --batch_size, …
  app.run(main)
