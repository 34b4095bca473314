"""The keys of a Galaxy Zoo record and of the batches made from it.

Every split (the TFDS builder's, an image folder's, a label catalogue's)
yields records with these keys; the input pipelines add ``example_mask`` (and
the cached modes ``stream_position``) to the batches.
"""

from __future__ import annotations

import numpy as np

from gzjax import taxonomy

IMAGE = 'image'  # Encoded JPEG/PNG bytes in a record; pixels in a batch.
GALAXY_ID = 'galaxy_id'
VOTES = 'votes'  # Vote fractions of the 37 answers (NaN: not asked).
VOTES_MASK = 'votes_mask'  # Which of the votes are known.
LABEL_3CLASS = 'label_3class'  # -1: no confident class.
LABEL_7CLASS = 'label_7class'
EXAMPLE_MASK = 'example_mask'  # False: a padding example of the last batch.
STREAM_POSITION = 'stream_position'  # (epoch, index): seeds augmentation.
TARGETS = 'targets'  # A label catalogue's columns (gzjax.finetune), a dict.
# Optional, a string: where the image comes from (a catalogue's file, row, id
# and image path), for messages about it; records of a built dataset have
# none, their galaxy_id is the GalaxyID.  Never batched.
IMAGE_SOURCE = 'image_source'

NUM_VOTES = taxonomy.NUM_ANSWERS

# The labels of every record: what `tasks.scan_labels` reads.
LABELS = (VOTES, VOTES_MASK, LABEL_3CLASS, LABEL_7CLASS)
# Batch fields that go to the devices; galaxy_id stays on the host.
DEVICE = (IMAGE, *LABELS, EXAMPLE_MASK, STREAM_POSITION, TARGETS)
# The per-example fields prediction gathers on the host beside the outputs.
GATHERED = (GALAXY_ID, *LABELS, EXAMPLE_MASK)


def no_labels(votes_fill: float = 0.0) -> dict[str, np.ndarray | int]:
  """The label fields of a record that has none: no known vote, no class."""
  return {
      VOTES: np.full(NUM_VOTES, votes_fill, np.float32),
      VOTES_MASK: np.zeros(NUM_VOTES, bool),
      LABEL_3CLASS: -1,
      LABEL_7CLASS: -1,
  }
