r"""Kalvankar et al. 2020's 7-class task with EfficientNet-B0.

  python -m gzjax.tools.convert_weights --model=efficientnet_b0 \
      --source=efficientnetb0_notop.h5 --out=~/gzjax_weights/efficientnet_b0.msgpack
  python -m gzjax.main --config=configs/effnet_7class.py --workdir=/tmp/effnet7 \
      --config.manual_dir=/path/to/galaxy-zoo-the-galaxy-challenge \
      --config.model.pretrained=~/gzjax_weights/efficientnet_b0.msgpack

Round, in-between, cigar, lenticular, barred spiral, unbarred spiral,
irregular: the galaxies whose votes pass the published thresholds
(gzjax.taxonomy.SevenClassThresholds; a galaxy that passes none or two is
left out), a 7-way softmax on EfficientNet-B0, cross-entropy, Adam at 1.5e-4
with the learning rate halved on plateaus, crop 212 -> 224, ImageNet
normalisation for the Keras weights.  The best checkpoint is the one with the
highest validation accuracy.

Runtime: roughly a third of the galaxies pass the thresholds, so 30 epochs at
batch 64 is ~9k steps: a GPU job (minutes to an hour on one H100).  Expected:
accuracy near 0.94 (Kalvankar et al. report 93.7% with their best network).
Not yet measured on the full set here.

Precision (inherited, ``model.dtype='auto'``): bfloat16 compute on GPUs
and TPUs, float32 on CPUs; weights, optimizer state, batch-norm statistics
and the loss stay float32.
"""

from configs import common
from gzjax import config as base


def get_config():
  config = common.kalvankar_efficientnet(base.base_config(), 9_000)
  config.task = '7class'
  config.model.head = 'classes'
  config.loss = 'softmax'
  config.eval_every_steps = 500
  config.checkpoint_every_steps = 500
  config.best_metric = 'validation/accuracy'
  config.best_mode = 'max'
  return config
