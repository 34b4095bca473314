"""Mixed precision: what ``config.model.dtype='auto'`` picks, what stays
float32, and a bfloat16 step on the real sample against the float32 one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gzjax import config as base
from gzjax import evaluate
from gzjax import experiment as experiments
from gzjax import train


def test_auto_is_float32_on_cpu_and_every_config_inherits_it():
  config = base.base_config()
  assert config.model.dtype == 'auto'
  assert jax.default_backend() == 'cpu'
  assert experiments.compute_dtype(config) == jnp.float32
  config.model.dtype = 'bfloat16'
  assert experiments.compute_dtype(config) == jnp.bfloat16
  config.model.dtype = 'bf16'
  with pytest.raises(ValueError, match=r"config.model.dtype='bf16'.*auto"):
    experiments.compute_dtype(config)


def test_bfloat16_keeps_weights_statistics_and_optimizer_in_float32():
  config = base.base_config()
  config.model.name = 'efficientnet_b0'  # Batch norm; shapes only, no init.
  config.model.dtype = 'bfloat16'
  state = experiments.create_experiment(config).abstract_state()
  dtypes = {jnp.dtype(leaf.dtype).name for leaf in jax.tree.leaves(
      (state.params, state.opt_state))}
  assert dtypes == {'float32', 'int32'}  # int32: Adam's step count.
  # 49 batch norms' running means and variances, and nothing else that is
  # a float (the rest is dropout's random streams).
  floats = [jnp.dtype(leaf.dtype).name for leaf in jax.tree.leaves(state.model_state)
            if jnp.issubdtype(leaf.dtype, jnp.floating)]
  assert floats == ['float32'] * 98


def _real_batch(data_dir, experiment):
  iterator, _ = experiments.create_train_input(
      experiment.config, experiment.task, experiment)
  try:
    return next(iterator)
  finally:
    if hasattr(iterator, 'close'):
      iterator.close()


def test_a_bfloat16_step_on_the_real_sample_is_close_to_float32(
    kaggle_sample_data_dir):
  results = {}
  batch = None
  for dtype in ('float32', 'bfloat16'):
    config = base.base_config()
    config.data_dir = str(kaggle_sample_data_dir)
    config.input.batch_size = 32
    config.input.read_threads = 1
    config.input.image_size = 64
    config.model.dtype = dtype
    experiment = experiments.create_experiment(config)
    state = experiment.initial_state()
    batch = batch or _real_batch(kaggle_sample_data_dir, experiment)
    device_batch = train.to_global(batch, experiment.batch_sharding)
    # The same float32 weights in both: the forward pass's rounding alone.
    outputs = evaluate.make_predict_fn(experiment)(state,
                                                   device_batch['image'])
    state, metrics = train.make_train_step(experiment)(state,
                                                       device_batch)
    results[dtype] = (jax.device_get(metrics), np.asarray(outputs),
                      jax.device_get(state.params))
  (m32, out32, p32), (m16, out16, p16) = results['float32'], \
      results['bfloat16']
  assert out16.dtype == np.float32  # The votes head normalises in float32.
  for value in (m16['loss'], m16['grad_norm'], *jax.tree.leaves(p16)):
    assert np.all(np.isfinite(value))
  assert {x.dtype for x in jax.tree.leaves(p16)} == {np.dtype('float32')}
  # bfloat16 keeps 8 significant bits: each product is off by up to 2^-9
  # (0.2%) relative, and the rounding errors of a few hundred terms per
  # output, summed in float32, largely cancel.  Through the CNN's six convs
  # that leaves the loss and the gradient's norm within a few percent (seen:
  # well under 1%); 3% is twice a whole bfloat16 ulp's worth (2 * 2^-8 * 4
  # layers deep) and still catches a step that, say, drops the head's
  # normalisation or computes the loss in bfloat16 on 37 x 32 terms.
  assert abs(m16['loss'] - m32['loss']) <= 0.03 * m32['loss'], (m16, m32)
  assert abs(m16['grad_norm'] - m32['grad_norm']) <= 0.03 * m32['grad_norm']
  # Predicted vote fractions (in [0, 1]) from the same weights: one
  # bfloat16 rounding is 2^-9 (0.002) relative; the head's float32
  # normalisation and cancellation across layers keep the largest
  # difference near one rounding (seen: 0.0010 on this batch), so 0.005
  # allows 2.5 roundings and fails if, e.g., the votes head normalised in
  # bfloat16 (each fraction then rounded to 2^-9 of itself per question).
  assert np.abs(out16 - out32).max() < 0.005
