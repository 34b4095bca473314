"""Galaxy Zoo data: the TFDS builder, synthetic galaxies and the grain pipeline."""
