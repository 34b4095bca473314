"""The seed paper's small CNN, layer for layer as its model summary lists it.

64×64×3 input; Conv 64, Conv 64, ReLU, MaxPool; Conv 128, Conv 128, ReLU,
MaxPool; Conv 128, Conv 128, ReLU; GlobalMaxPool.  All convolutions are 3×3
'valid' with biases, and there is no activation between the two convolutions
of a pair (the summary has none).  The Dense 128 / Dropout / Dense 37 sigmoid
top is a head (``create('cnn', head='sigmoid', hidden=(128, 128), ...)``):
593,125 parameters in all.
"""

from __future__ import annotations

from flax import nnx
import jax
import jax.numpy as jnp


class SeedCNN(nnx.Module):
  """Backbone: images ``[B, H, W, 3]`` to 128 globally max-pooled features."""

  num_features = 128
  input_size = 64
  # Three valid 3x3 pairs and two 2x2 pools: 32 -> 28 -> 14 -> 10 -> 5 -> 1.
  min_input_size = 32
  num_blocks = 3

  def __init__(self, *, dtype=jnp.float32, rngs: nnx.Rngs):
    widths = ((3, 64), (64, 64), (64, 128), (128, 128), (128, 128), (128, 128))
    self.convs = nnx.List([
        nnx.Conv(a, b, (3, 3), padding='VALID', dtype=dtype, rngs=rngs)
        for a, b in widths
    ])

  def __call__(self, images: jax.Array) -> jax.Array:
    x = images
    for block in range(self.num_blocks):
      x = self.convs[2 * block](x)
      x = jax.nn.relu(self.convs[2 * block + 1](x))
      if block < self.num_blocks - 1:
        x = nnx.max_pool(x, (2, 2), strides=(2, 2))
    return jnp.max(x, axis=(1, 2))

  def block_of(self, path: tuple[str, ...]) -> int:
    """Block index (0-based, input first) of the parameter at ``path``."""
    return int(path[1]) // 2
