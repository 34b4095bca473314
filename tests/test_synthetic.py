"""Tests of the synthetic galaxy generator: votes, determinism, and pixels."""

import dataclasses

import numpy as np
import pytest

from gzjax import taxonomy
from gzjax.data import synthetic

SMALL = 64


def _column(answer: str) -> int:
  return taxonomy.index(answer)


def _votes_for(morphology, draws: int = 20) -> np.ndarray:
  """Votes of ``draws`` independent crowds looking at the same galaxy."""
  return np.stack([
      synthetic.simulate_votes(morphology, np.random.default_rng([7, i]))
      for i in range(draws)
  ])


def _render(morphology, size: int = 96, seed: int = 0) -> np.ndarray:
  image = synthetic.render_image(morphology, np.random.default_rng(seed), size)
  return image.astype(np.float64)


BRIGHT = dict(radius=35.0, brightness=30.0, position_angle=0.3)
BARRED_SPIRAL = synthetic.Morphology(
    kind='spiral', axis_ratio=0.9, bulge_fraction=0.3, n_arms=2,
    winding='medium', bar=True, **BRIGHT,
)
ROUND_ELLIPTICAL = synthetic.Morphology(
    kind='elliptical', axis_ratio=1.0, bulge_fraction=1.0, **BRIGHT
)
CIGAR_ELLIPTICAL = dataclasses.replace(ROUND_ELLIPTICAL, axis_ratio=0.25)
EDGE_ON = synthetic.Morphology(
    kind='edge_on', axis_ratio=0.12, bulge_fraction=0.4, **BRIGHT
)
STAR = synthetic.Morphology(
    kind='star', axis_ratio=1.0, artifact='star', **BRIGHT
)


@pytest.fixture(scope='module')
def described():
  """Morphologies and votes of 1000 galaxies of seed 0 (no images)."""
  pairs = [synthetic.describe_galaxy(0, i) for i in range(1000)]
  return [m for m, _ in pairs], np.stack([v for _, v in pairs])


# ------------------------------------------------------------------- votes ---


def test_votes_satisfy_the_tree_exactly(described):
  _, votes = described
  report = taxonomy.consistency_report(votes, tolerance=1e-6)
  assert [r.inconsistent for r in report] == [0] * taxonomy.NUM_QUESTIONS
  assert all(r.checked == len(votes) for r in report)
  assert votes.dtype == np.float32 and votes.shape == (1000, 37)
  assert votes.min() >= 0.0 and votes.max() <= 1.0
  for root in (taxonomy.QUESTIONS[0], taxonomy.QUESTIONS[5]):
    np.testing.assert_allclose(votes[:, root.slice].sum(axis=1), 1.0, atol=1e-6)


def test_votes_are_counts_of_30_to_50_volunteers(described):
  _, votes = described
  for row in votes[:200].astype(np.float64):
    crowd_sizes = [
        n for n in range(30, 51)
        if np.allclose(row * n, np.round(row * n), atol=1e-4)
    ]
    assert crowd_sizes, row


def test_unreached_questions_are_all_zero(described):
  morphologies, votes = described
  # Stars are almost never called "features", so Q2 … Q5 and their children
  # are rarely reached; where Class1.2 is 0 every descendant must be 0 too.
  unreached = votes[:, _column('Class1.2')] == 0
  assert unreached.sum() > 50
  descendants = [q for q in taxonomy.QUESTIONS if q.number in (2, 3, 4, 5, 9,
                                                               10, 11)]
  for question in descendants:
    assert not votes[unreached, question.slice].any()


def test_labels_cover_every_class(described):
  morphologies, votes = described
  three = np.bincount(taxonomy.three_class_labels(votes) + 1, minlength=4)
  seven = np.bincount(taxonomy.seven_class_labels(votes) + 1, minlength=8)
  assert (three[1:] >= 20).all(), three
  assert (seven[1:] >= 30).all(), seven
  stars = three[3] / len(votes)
  assert 0.02 <= stars <= 0.08, stars
  kinds = {m.kind for m in morphologies}
  assert kinds == set(synthetic.KINDS)


def test_morphology_drives_the_votes():
  def mean(morphology, answer):
    return _votes_for(morphology)[:, _column(answer)].mean()

  conditional = lambda m: taxonomy.cumulative_to_conditional(_votes_for(m))
  barred = conditional(BARRED_SPIRAL).mean(axis=0)
  assert barred[_column('Class1.2')] > 0.85
  assert barred[_column('Class3.1')] > 0.8
  assert barred[_column('Class4.1')] > 0.8
  assert barred[_column('Class11.2')] > 0.6  # two arms
  unbarred = dataclasses.replace(BARRED_SPIRAL, bar=False)
  assert conditional(unbarred).mean(axis=0)[_column('Class3.1')] < 0.1
  assert mean(ROUND_ELLIPTICAL, 'Class1.1') > 0.85
  assert mean(ROUND_ELLIPTICAL, 'Class7.1') > 0.75
  assert mean(CIGAR_ELLIPTICAL, 'Class7.3') > 0.75
  assert mean(EDGE_ON, 'Class2.1') > 0.8
  assert mean(STAR, 'Class1.3') > 0.85


def test_confusion_grows_with_faintness_and_smallness():
  faint = dataclasses.replace(BARRED_SPIRAL, radius=9.0, brightness=2.0)
  truth = np.zeros(3)
  truth[1] = 1.0  # features or disk
  q1 = taxonomy.QUESTIONS[0].slice
  bright_error = np.abs(_votes_for(BARRED_SPIRAL)[:, q1] - truth).mean()
  faint_error = np.abs(_votes_for(faint)[:, q1] - truth).mean()
  assert faint_error > bright_error + 0.2
  # A faint small spiral is mostly answered "smooth".
  assert _votes_for(faint)[:, _column('Class1.1')].mean() > 0.5
  assert faint.clarity < BARRED_SPIRAL.clarity


# ----------------------------------------------------------- determinism ---


def test_same_seed_and_id_give_identical_galaxies():
  first = synthetic.render_galaxy(0, 5, SMALL)
  again = synthetic.render_galaxy(0, 5, SMALL)
  assert first.jpeg == again.jpeg
  np.testing.assert_array_equal(first.votes, again.votes)
  assert first.morphology == again.morphology
  other_seed = synthetic.render_galaxy(1, 5, SMALL)
  assert other_seed.jpeg != first.jpeg
  assert not np.array_equal(other_seed.votes, first.votes)


def test_workers_do_not_change_the_result():
  ids = [11, 3, 40, 7, 25, 0, 19, 33, 2, 8]
  serial = list(synthetic.generate_galaxies(0, ids, 32, num_workers=1))
  parallel = list(
      synthetic.generate_galaxies(0, ids, 32, num_workers=2, chunk_size=3)
  )
  assert [g.galaxy_id for g in serial] == ids
  assert [g.galaxy_id for g in parallel] == ids
  for a, b in zip(serial, parallel):
    assert a.jpeg == b.jpeg
    np.testing.assert_array_equal(a.votes, b.votes)


# Computed once; guards "the same dataset on every machine".  Votes must match
# exactly (integer counts over the crowd size); pixels may differ by an ULP
# before JPEG, so only the mean colour is pinned, loosely.
GOLDEN = {
    3: (
        49,
        [10, 39, 0, 3, 36, 4, 32, 12, 24, 2, 0, 9, 25, 35, 14, 0, 10, 0, 1, 2,
         1, 0, 2, 26, 3, 0, 2, 1, 3, 5, 4, 1, 4, 1, 0, 1, 5],
        [12.74, 13.35, 13.71],
    ),
    17: (
        32,
        [3, 29, 0, 2, 27, 0, 27, 24, 3, 0, 26, 1, 0, 0, 32, 0, 3, 0, 0, 0, 0,
         0, 0, 0, 0, 1, 0, 1, 21, 2, 1, 0, 0, 22, 1, 0, 1],
        [14.86, 19.39, 26.78],
    ),
}


@pytest.mark.parametrize('galaxy_id', sorted(GOLDEN))
def test_golden_galaxies(galaxy_id):
  crowd, counts, mean_rgb = GOLDEN[galaxy_id]
  galaxy = synthetic.render_galaxy(0, galaxy_id, SMALL)
  expected = (np.array(counts) / crowd).astype(np.float32)
  np.testing.assert_array_equal(galaxy.votes, expected)
  measured = galaxy.decode().reshape(-1, 3).mean(axis=0)
  np.testing.assert_allclose(measured, mean_rgb, atol=1.0)


# ----------------------------------------------------------------- pixels ---


def _light(image: np.ndarray) -> np.ndarray:
  """Luminance above the (dark) sky, the weight of the moments below."""
  luminance = image.mean(axis=-1)
  return np.maximum(luminance - 20.0, 0.0)


def _centre_and_axis_ratio(image: np.ndarray) -> tuple[np.ndarray, float]:
  """Flux-weighted centroid offset and second-moment axis ratio.

  Only the central disk of radius 0.4 × size counts, so that field stars near
  the edges do not pull the moments.
  """
  size = image.shape[0]
  ys, xs = np.indices(image.shape[:2])
  middle = (size - 1) / 2
  central = np.hypot(xs - middle, ys - middle) < 0.4 * size
  weight = _light(image) * central
  total = weight.sum()
  cx, cy = (weight * xs).sum() / total, (weight * ys).sum() / total
  dx, dy = xs - cx, ys - cy
  covariance = np.array([
      [(weight * dx * dx).sum(), (weight * dx * dy).sum()],
      [(weight * dx * dy).sum(), (weight * dy * dy).sum()],
  ]) / total
  low, high = np.linalg.eigvalsh(covariance)
  return np.array([cx, cy]) - middle, float(np.sqrt(low / high))


def test_images_are_rgb_of_the_requested_size():
  for size in (32, 96):
    image = synthetic.render_galaxy(0, 1, size).decode()
    assert image.shape == (size, size, 3) and image.dtype == np.uint8


def test_galaxies_are_centred():
  offsets = []
  for galaxy_id in range(40):
    galaxy = synthetic.render_galaxy(0, galaxy_id, 96)
    if galaxy.morphology.kind in ('elliptical', 'spiral', 'edge_on'):
      centre, _ = _centre_and_axis_ratio(galaxy.decode().astype(np.float64))
      offsets.append(np.hypot(*centre))
  assert len(offsets) > 20
  assert np.median(offsets) < 2.0, offsets


def test_elongation_shows_in_the_pixels():
  _, round_ratio = _centre_and_axis_ratio(_render(ROUND_ELLIPTICAL))
  _, cigar_ratio = _centre_and_axis_ratio(_render(CIGAR_ELLIPTICAL))
  _, edge_on_ratio = _centre_and_axis_ratio(_render(EDGE_ON))
  assert round_ratio > 0.9
  assert cigar_ratio < 0.45
  assert edge_on_ratio < 0.45


def test_a_star_is_more_concentrated_than_a_galaxy():
  def concentration(image):
    light = _light(image)
    centre = image.shape[0] // 2
    core = light[centre - 3:centre + 3, centre - 3:centre + 3].sum()
    return core / light.sum()

  star = concentration(_render(STAR))
  galaxy = concentration(_render(BARRED_SPIRAL))
  assert star > 2 * galaxy


def test_ellipticals_are_redder_than_spirals():
  def red_minus_blue(image):
    light = _light(image) > 10
    return (image[..., 0] - image[..., 2])[light].mean()

  assert red_minus_blue(_render(ROUND_ELLIPTICAL)) > 10
  assert red_minus_blue(_render(BARRED_SPIRAL)) < 0
