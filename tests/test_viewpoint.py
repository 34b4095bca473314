"""Dieleman et al. 2015's viewpoint network: parts, parameters, outputs."""

import numpy as np
import pytest

from gzjax import models
from gzjax import taxonomy
from gzjax.models import viewpoint

# Part 4 * v + r: view v (as is, 45°, mirrored, 45° mirrored) turned r times.
# After np.rot90 of the input, new part i is old part ROT90_PERMUTATION[i]:
# (v, r) <- (v, r + 1) for the unmirrored views, (v, r - 1) for the mirrored.
ROT90_PERMUTATION = [1, 2, 3, 0, 5, 6, 7, 4, 11, 8, 9, 10, 15, 12, 13, 14]
# After mirroring the input: (0, r) <- (2, r), (1, r) <- (3, r + 1),
# (2, r) <- (0, r), (3, r) <- (1, r - 1).
MIRROR_PERMUTATION = [8, 9, 10, 11, 13, 14, 15, 12, 0, 1, 2, 3, 7, 4, 5, 6]


@pytest.fixture(scope='module')
def images() -> np.ndarray:
  return np.random.default_rng(0).uniform(size=(2, 69, 69, 3)).astype(
      np.float32
  )


@pytest.fixture(scope='module')
def model() -> models.GalaxyModel:
  galaxy_model = models.create('viewpoint')
  galaxy_model.eval()
  return galaxy_model


def test_parts_are_aligned_crops_of_the_four_views(images):
  parts = np.asarray(viewpoint.views_and_parts(images))
  assert parts.shape == (2, 16, 45, 45, 3)
  np.testing.assert_array_equal(parts[:, 0], images[:, :45, :45])
  # Turned once counter-clockwise, the top-left crop is the top-right corner.
  np.testing.assert_array_equal(
      parts[:, 1], np.rot90(images[:, :45, -45:], axes=(1, 2))
  )
  np.testing.assert_array_equal(parts[:, 8], images[:, :45, ::-1][:, :, :45])
  # The 45° view keeps the centre pixel.
  np.testing.assert_allclose(parts[:, 4, 34, 34], images[:, 34, 34], atol=1e-6)


def test_rotated_input_permutes_the_parts(images):
  parts = np.asarray(viewpoint.views_and_parts(images))
  turned = np.asarray(
      viewpoint.views_and_parts(np.rot90(images, axes=(1, 2)).copy())
  )
  np.testing.assert_allclose(turned, parts[:, ROT90_PERMUTATION], atol=1e-5)


def test_mirrored_input_permutes_the_parts(images):
  parts = np.asarray(viewpoint.views_and_parts(images))
  mirrored = np.asarray(viewpoint.views_and_parts(images[:, :, ::-1].copy()))
  np.testing.assert_allclose(mirrored, parts[:, MIRROR_PERMUTATION], atol=1e-5)


def test_parameter_count_is_worked_out_in_the_docstring():
  conv = 3_488 + 51_264 + 73_856 + 147_584
  maxout = (8192 * 4096 + 4096) + (2048 * 4096 + 4096)
  head = 2048 * 37 + 37
  assert conv + maxout + head == 42_303_237
  counts = models.count_params(models.abstract('viewpoint'))
  assert counts == {
      'params': 42_303_237, 'batch_stats': 0, 'total': 42_303_237
  }


def test_each_layer_has_the_papers_parameter_count():
  """Layer by layer, the created model against a count written from the
  paper's architecture (Dieleman et al. 2015, section 4 and figure 4)."""
  # 45x45x3 parts; convolutions (kernel, filters), 'valid', with 2x2 max
  # pooling after the first, second and fourth.
  paper_convs = [(6, 32, True), (5, 64, True), (3, 128, False),
                 (3, 128, True)]
  side, channels, by_hand = 45, 3, []
  for kernel, filters, pool in paper_convs:
    by_hand.append(kernel * kernel * channels * filters + filters)
    side, channels = side - kernel + 1, filters
    if pool:
      side //= 2
  assert side == 2  # 45 -> 40 -> 20 -> 16 -> 8 -> 6 -> 4 -> 2.
  # 16 parts' features, then two maxout layers of 2048 units, each a dense
  # layer of 2 x 2048 pooled in pairs; then the 37 answers.
  features = 16 * channels * side * side
  for units in (2048, 2048):
    by_hand.append(features * 2 * units + 2 * units)
    features = units
  by_hand.append(features * 37 + 37)

  model = models.abstract('viewpoint')
  layers = [*model.backbone.convs, *model.backbone.maxouts,
            model.head.output]
  in_code = [models.count_params(layer)['params'] for layer in layers]
  assert in_code == by_hand
  assert sum(by_hand) == models.count_params(model)['total'] == 42_303_237


def test_blocks_are_the_four_convolutions_then_the_two_maxouts():
  labels = models.parameter_labels(models.abstract('viewpoint'))
  backbone = labels['backbone']
  assert backbone['convs'][0]['kernel'].get_value() == 'backbone/0'
  assert backbone['convs'][3]['bias'].get_value() == 'backbone/3'
  assert backbone['maxouts'][0]['kernel'].get_value() == 'backbone/4'
  assert backbone['maxouts'][1]['bias'].get_value() == 'backbone/5'
  assert labels['head']['output']['kernel'].get_value() == 'head'


def test_votes_are_tree_consistent(model, images):
  votes = np.asarray(model(images), np.float64)
  assert votes.shape == (2, 37)
  assert ((votes >= 0) & (votes <= 1)).all()
  report = taxonomy.consistency_report(votes, tolerance=1e-5)
  assert all(question.inconsistent == 0 for question in report)


def test_wrong_size_is_a_clear_error(model):
  with pytest.raises(ValueError, match='needs 69x69 inputs; got 64x64'):
    model(np.zeros((1, 64, 64, 3), np.float32))
