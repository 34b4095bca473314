"""Layers the backbones share where flax's own would cost them: a batch norm
whose running statistics update cheaply under a trace."""

from __future__ import annotations

from typing import Any

from flax import nnx
import jax


class RunningStat(nnx.BatchStat):
  """A batch norm's running mean or variance, updated by plain assignment
  when flax would only reach the same assignment the slow way.

  ``nnx.BatchNorm`` updates its statistics with ``stat[...] = new``.  For a
  whole-array replace, ``Variable.set_value`` first compares the new and old
  values' ``sharding``; on a tracer that attribute raises an AttributeError
  whose message walks the whole trace so far (``find_progenitors``), so
  tracing a training step is quadratic in the number of batch norms:
  EfficientNet-B7's train step spent 22 of its 35 s of tracing there
  (profiled, 2 CPU cores).  When both values are tracers of one shape and
  dtype, flax's comparison finds both shardings missing and assigns the new
  value; this assigns it directly.  Every other update is flax's.
  """

  def __setitem__(self, key, value) -> None:
    old = self.get_value()
    if (key is Ellipsis and isinstance(value, jax.core.Tracer)
        and isinstance(old, jax.core.Tracer)
        and value.shape == old.shape and value.dtype == old.dtype):
      self.set_value(value)
    else:
      super().__setitem__(key, value)


class BatchNorm(nnx.BatchNorm):
  """``nnx.BatchNorm`` (same arguments, variables and paths) whose running
  statistics are :class:`RunningStat`\\ s."""

  def __init__(self, num_features: int, **kwargs: Any):
    super().__init__(num_features, **kwargs)
    self.mean = RunningStat(self.mean.get_value())
    self.var = RunningStat(self.var.get_value())
