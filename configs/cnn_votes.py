r"""The seed paper's CNN on the 37 votes: 64x64 input, Adam at 0.002.

  python -m gzjax.main --config=configs/cnn_votes.py --workdir=/tmp/cnn_votes \
      --config.manual_dir=/path/to/galaxy-zoo-the-galaxy-challenge

The network exactly as the seed paper's summary lists it (593,125 parameters
with its Dense 128 / Dropout / Dense 128 / Dropout / Dense 37 sigmoid top),
trained with binary cross-entropy on the vote fractions as the seed did, on
the centre 207 px of the Kaggle images resized to 64 px, with the full
rotation/flip/zoom augmentation.

Runtime: 20 epochs of 55k galaxies at batch 64 is 17k steps; on 2 CPU cores
the step takes ~1 s (hours), on one H100 a few minutes.  Expected: the seed
paper reports a Kaggle RMSE near 0.10 for this network; Dieleman's winning
ensemble reached 0.0749.  Not yet measured on the full set here (the Kaggle
download is not reachable from the project's machines).

Precision (inherited, ``model.dtype='auto'``): bfloat16 compute on GPUs
and TPUs, float32 on CPUs; weights, optimizer state, batch-norm statistics
and the loss stay float32.
"""

from gzjax import config as base


def get_config():
  config = base.base_config()
  config.model.name = 'cnn'
  config.model.head = 'sigmoid'
  config.model.hidden = (128, 128)
  config.model.dropout = 0.5
  config.loss = 'bce'
  config.input.crop_size = 207
  config.input.image_size = 64
  config.input.batch_size = 64
  config.optimizer.name = 'adam'
  config.optimizer.learning_rate = 0.002
  config.optimizer.schedule = 'cosine'
  config.optimizer.warmup_steps = 500
  config.num_train_steps = 17_000
  config.eval_every_steps = 1000
  config.checkpoint_every_steps = 1000
  return config
