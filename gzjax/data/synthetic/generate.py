"""Whole synthetic galaxies, determined by ``(seed, galaxy_id)``, in parallel.

Each galaxy's morphology, votes and image draw from their own random streams
of ``(seed, galaxy_id)``, so results do not depend on the number of worker
processes or the order of work.
"""

from __future__ import annotations

import dataclasses
import io
import multiprocessing
import os
from typing import Iterator, Sequence

import numpy as np
from PIL import Image

from gzjax.data.synthetic.morphology import Morphology
from gzjax.data.synthetic.morphology import REFERENCE_SIZE
from gzjax.data.synthetic.morphology import sample_morphology
from gzjax.data.synthetic.render import encode_jpeg
from gzjax.data.synthetic.render import render_image
from gzjax.data.synthetic.volunteers import simulate_votes

@dataclasses.dataclass(frozen=True)
class SyntheticGalaxy:
  """One generated galaxy.

  Attributes:
    galaxy_id: the id it was generated from (with the seed).
    jpeg: encoded JPEG, ``image_size × image_size`` RGB.
    votes: float32[37] Kaggle cumulative vote fractions, tree-consistent.
    morphology: the generating parameters, for tests and debugging.
  """

  galaxy_id: int
  jpeg: bytes
  votes: np.ndarray
  morphology: Morphology

  def decode(self) -> np.ndarray:
    """The image as uint8 ``[H, W, 3]``."""
    return np.asarray(Image.open(io.BytesIO(self.jpeg)).convert('RGB'))


# -------------------------------------------------------------- generation ---

_MORPHOLOGY_STREAM, _VOTES_STREAM, _RENDER_STREAM = 0, 1, 2


def _stream(seed: int, galaxy_id: int, purpose: int) -> np.random.Generator:
  return np.random.default_rng([seed, galaxy_id, purpose])


def describe_galaxy(seed: int, galaxy_id: int) -> tuple[Morphology, np.ndarray]:
  """A galaxy's morphology and votes without its image: cheap label studies."""
  morphology = sample_morphology(_stream(seed, galaxy_id, _MORPHOLOGY_STREAM))
  votes = simulate_votes(morphology, _stream(seed, galaxy_id, _VOTES_STREAM))
  return morphology, votes


def render_galaxy(
    seed: int, galaxy_id: int, image_size: int = REFERENCE_SIZE
) -> SyntheticGalaxy:
  """Generates one galaxy, determined by ``(seed, galaxy_id)`` alone."""
  morphology, votes = describe_galaxy(seed, galaxy_id)
  image = render_image(
      morphology, _stream(seed, galaxy_id, _RENDER_STREAM), image_size
  )
  return SyntheticGalaxy(galaxy_id, encode_jpeg(image), votes, morphology)


def _render_chunk(
    args: tuple[int, Sequence[int], int],
) -> list[SyntheticGalaxy]:
  seed, galaxy_ids, image_size = args
  return [render_galaxy(seed, i, image_size) for i in galaxy_ids]


def generate_galaxies(
    seed: int,
    galaxy_ids: Sequence[int],
    image_size: int = REFERENCE_SIZE,
    num_workers: int | None = None,
    chunk_size: int = 16,
) -> Iterator[SyntheticGalaxy]:
  """Generates galaxies in ``galaxy_ids`` order, in parallel processes.

  Args:
    seed: dataset seed.
    galaxy_ids: which galaxies; each depends only on ``(seed, id)``.
    image_size: side of the square images.
    num_workers: processes; ``None`` for one per CPU, 1 to stay in-process.
    chunk_size: galaxies per task, to amortise inter-process transfer.

  Yields:
    :class:`SyntheticGalaxy`, in the order of ``galaxy_ids``.
  """
  galaxy_ids = [int(i) for i in galaxy_ids]
  if num_workers is None:
    num_workers = os.cpu_count() or 1
  chunks = [
      (seed, galaxy_ids[start:start + chunk_size], image_size)
      for start in range(0, len(galaxy_ids), chunk_size)
  ]
  if num_workers <= 1 or len(chunks) <= 1:
    for chunk in chunks:
      yield from _render_chunk(chunk)
    return
  # 'spawn' is safe next to JAX's threads, which a forked child would inherit
  # in an undefined state.
  context = multiprocessing.get_context('spawn')
  with context.Pool(min(num_workers, len(chunks))) as pool:
    for galaxies in pool.imap(_render_chunk, chunks):
      yield from galaxies

