"""Dieleman, Willett & Dambre 2015's rotation-invariant network (Kaggle winner).

"Rotation-invariant convolutional neural networks for galaxy morphology
prediction", MNRAS 450, 1441.  A galaxy has no preferred orientation, so the
network sees it in the 16 orientations of the dihedral group of order 16
(rotations by multiples of 45°, with and without mirroring) through one
shared convnet, and the dense layers combine the 16 feature vectors:

1. :func:`views_and_parts` turns the 69×69 input into four views (as is,
   rotated 45°, and both mirrored) and cuts each view into four overlapping
   45×45 parts, rotated by 0/90/180/270° so that the galaxy centre sits
   towards the bottom-right corner of every part;
2. each of the 16 parts goes through the same convnet: conv 32@6×6 ReLU,
   2×2 max-pool; conv 64@5×5 ReLU, 2×2 max-pool; conv 128@3×3 ReLU;
   conv 128@3×3 ReLU, 2×2 max-pool.  Convolutions are 'valid' as in the
   paper: 45 → 40 → 20 → 16 → 8 → 6 → 4 → 2, so 128×2×2 = 512 features per
   part;
3. the 16 × 512 = 8,192 features are concatenated and go through two maxout
   layers of 2,048 units (a Dense 4,096 then the max over consecutive pairs,
   as Lasagne's FeaturePoolLayer pairs them), with dropout (p = 0.5) on the
   input of every dense layer, the head's output layer included.

The backbone ends after the second maxout layer (2,048 features) and the
registry's head follows (``votes``: the paper's decision-tree output layer).

Parameters, worked out (kernel + bias):

=================  ===========================  ==========
conv 1             6·6·3·32 + 32                     3,488
conv 2             5·5·32·64 + 64                   51,264
conv 3             3·3·64·128 + 128                 73,856
conv 4             3·3·128·128 + 128               147,584
maxout 1           8,192·4,096 + 4,096          33,558,528
maxout 2           2,048·4,096 + 4,096           8,392,704
votes head         2,048·37 + 37                    75,813
total                                           42,303,237
=================  ===========================  ==========

The 45° view: the paper cut its rotated views from the larger original
image, so no corner was ever missing.  Here the input is the 69×69 image
itself, so the rotated view is resampled from it around its centre with an
exact bilinear interpolation (fixed source indices and weights computed once
in float64, then one gather: linear in the image, hence differentiable), and
the parts of the view that fall outside the 69×69 image (towards its corners,
beyond 34 px from the centre) read 0, the dark sky background.  That choice
keeps the set of 16 parts closed under 90° rotations and mirroring of the
input (see :func:`views_and_parts`), which is the property the architecture
relies on.
"""

from __future__ import annotations

import functools

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

PART_SIZE = 45
NUM_PARTS = 16


@functools.lru_cache(maxsize=None)
def _rotation_45_gather(size: int) -> tuple[np.ndarray, np.ndarray]:
  """Flat source indices and bilinear weights ``[size*size, 4]`` each.

  Output pixel ``p`` of the rotated view reads the input at
  ``c + S (p - c)`` with ``S = [[cos 45°, sin 45°], [-sin 45°, cos 45°]]``
  acting on (row, column) and ``c`` the image centre; applied twice, ``S``
  is exactly the source map of ``np.rot90`` (``out[i, j] = in[j, n-1-i]``),
  so the 45° view turns the same way as the 90° part rotations.  Neighbours
  outside the image get weight 0.
  """
  centre = (size - 1) / 2
  rows, cols = np.meshgrid(
      np.arange(size, dtype=np.float64) - centre,
      np.arange(size, dtype=np.float64) - centre,
      indexing='ij',
  )
  half = np.sqrt(0.5)
  source_rows = (centre + half * (rows + cols)).ravel()
  source_cols = (centre + half * (cols - rows)).ravel()
  top, left = np.floor(source_rows), np.floor(source_cols)
  down, right = source_rows - top, source_cols - left
  indices, weights = [], []
  for row, row_weight in ((top, 1 - down), (top + 1, down)):
    for col, col_weight in ((left, 1 - right), (left + 1, right)):
      inside = (row >= 0) & (row < size) & (col >= 0) & (col < size)
      flat = np.clip(row, 0, size - 1) * size + np.clip(col, 0, size - 1)
      indices.append(flat.astype(np.int32))
      weights.append(np.where(inside, row_weight * col_weight, 0.0))
  return np.stack(indices, axis=-1), np.stack(weights, axis=-1)


def rotate_45(images: jax.Array) -> jax.Array:
  """Square images ``[B, N, N, C]`` rotated by 45° about their centre.

  Counter-clockwise as displayed (row 0 at the top), like ``np.rot90``.
  """
  batch, size, _, channels = images.shape
  indices, weights = _rotation_45_gather(size)
  flat = images.reshape(batch, size * size, channels)
  gathered = flat[:, indices, :]  # [B, N*N, 4, C]
  weights = jnp.asarray(weights, images.dtype)[None, :, :, None]
  return (gathered * weights).sum(axis=2).reshape(images.shape)


def views_and_parts(images: jax.Array) -> jax.Array:
  """The 16 aligned 45×45 parts of square images ``[B, N, N, C]`` (N ≥ 45).

  Order: part ``4 * v + r`` is the top-left 45×45 crop of view ``v`` turned
  ``r`` times by ``np.rot90`` (counter-clockwise), where the views are
  ``v = 0``: the image as is; ``1``: rotated 45° counter-clockwise
  (:func:`rotate_45`); ``2``: view 0 mirrored (columns reversed); ``3``: view
  1 mirrored.  The image centre thus sits towards the bottom-right corner of
  every part.

  Part ``4 * v + r`` is the fixed crop of the image transformed by
  ``R^r T_v`` with ``T_0 = 1``, ``T_1 = ρ``, ``T_2 = μ``, ``T_3 = μ ρ``, where
  ``ρ`` is the 45° rotation, ``R = ρ²`` the 90° one and ``μ`` the mirror: the
  16 elements of the dihedral group.  Since ``μ ρ = ρ⁻¹ μ``, a rotated or
  mirrored input permutes the parts (exactly up to the float rounding of the
  bilinear weights):

  * input turned by ``np.rot90``: new part ``(v, r)`` is old ``(v, r + 1)``
    for ``v`` in {0, 1} and old ``(v, r - 1)`` for ``v`` in {2, 3}
    (``r`` mod 4);
  * input mirrored: new ``(0, r)`` = old ``(2, r)``, new ``(1, r)`` = old
    ``(3, r + 1)``, new ``(2, r)`` = old ``(0, r)``, new ``(3, r)`` = old
    ``(1, r - 1)``.

  Returns:
    ``[B, 16, 45, 45, C]``, in the dtype of ``images``.
  """
  if images.ndim != 4 or images.shape[1] != images.shape[2]:
    raise ValueError(
        f'views_and_parts takes square images [B, N, N, C]; got shape'
        f' {images.shape}.'
    )
  if images.shape[1] < PART_SIZE:
    raise ValueError(
        f'views_and_parts needs images of at least {PART_SIZE} px; got'
        f' {images.shape[1]}.'
    )
  rotated = rotate_45(images)
  views = (images, rotated, images[:, :, ::-1], rotated[:, :, ::-1])
  parts = [
      jnp.rot90(view, k=turns, axes=(1, 2))[:, :PART_SIZE, :PART_SIZE]
      for view in views
      for turns in range(4)
  ]
  return jnp.stack(parts, axis=1)


class ViewpointNet(nnx.Module):
  """Backbone: 69×69 images ``[B, 69, 69, 3]`` to 2,048 maxout features."""

  num_features = 2048
  input_size = 69
  min_input_size = 69
  fixed_input_size = True
  # Four convolutions, then two maxout layers.
  num_blocks = 6

  def __init__(self, *, dropout: float = 0.5, dtype=jnp.float32,
               rngs: nnx.Rngs):
    """Builds the layers.

    Args:
      dropout: rate on the input of each dense layer (the paper's 0.5); the
        backbone's output is dropped out too, so the head's output layer gets
        it as in the paper.
      dtype: compute dtype.
      rngs: parameter and dropout streams.
    """
    convs = ((3, 32, 6), (32, 64, 5), (64, 128, 3), (128, 128, 3))
    self.convs = nnx.List([
        nnx.Conv(a, b, (k, k), padding='VALID', dtype=dtype, rngs=rngs)
        for a, b, k in convs
    ])
    part_features = 128 * 2 * 2
    widths = (NUM_PARTS * part_features, self.num_features)
    self.maxouts = nnx.List([
        nnx.Linear(width, 2 * self.num_features, dtype=dtype, rngs=rngs)
        for width in widths
    ])
    self.dropout = nnx.Dropout(dropout, rngs=rngs)

  def __call__(self, images: jax.Array) -> jax.Array:
    batch = images.shape[0]
    x = views_and_parts(images).reshape(batch * NUM_PARTS, PART_SIZE,
                                        PART_SIZE, images.shape[-1])
    for index, conv in enumerate(self.convs):
      x = jax.nn.relu(conv(x))
      if index != 2:  # The paper pools after convolutions 1, 2 and 4.
        x = nnx.max_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape(batch, -1)
    for maxout in self.maxouts:
      x = maxout(self.dropout(x))
      x = x.reshape(batch, self.num_features, 2).max(axis=-1)
    return self.dropout(x)

  def block_of(self, path: tuple[str, ...]) -> int:
    """Block index (0-based, input first) of the parameter at ``path``."""
    offset = 0 if path[0] == 'convs' else len(self.convs)
    return offset + int(path[1])
