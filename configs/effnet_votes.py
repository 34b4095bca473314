r"""Kalvankar et al. 2020: EfficientNet-B0 on the 37 votes, crop 212 -> 224.

  python -m gzjax.tools.convert_weights --model=efficientnet_b0 \
      --source=efficientnetb0_notop.h5 --out=~/gzjax_weights/efficientnet_b0.msgpack
  python -m gzjax.main --config=configs/effnet_votes.py --workdir=/tmp/effnet \
      --config.manual_dir=/path/to/galaxy-zoo-the-galaxy-challenge \
      --config.model.pretrained=~/gzjax_weights/efficientnet_b0.msgpack

EfficientNet-B0 (4,096,961 parameters: the 4,049,564 of the backbone, from Keras's
ImageNet weights when --config.model.pretrained is given, and a 47,397-parameter
votes head; fine-tuned throughout), the decision-tree votes head, masked MSE, Adam at 1.5e-4 with
the learning rate halved when the training loss plateaus, as Kalvankar et al.
The centre 212 px of each image resized to 224 px, the full rotation/flip/zoom
augmentation, and the ImageNet normalisation the Keras weights expect
(configs/common.py, kalvankar_efficientnet).  Other sizes:
--config.model.name=efficientnet_b3 (and --config.input.image_size=300).

Runtime: 30 epochs of 55k galaxies at batch 64 is 26k steps; ~1.2 GFLOPs per
training image makes it a GPU job (tens of minutes on one H100; days on
2 CPU cores).  Expected: Kaggle RMSE near 0.078 (Kalvankar et al. report
0.0777 for their best EfficientNet, 0.0749 for Dieleman's ensemble).  Not yet
measured on the full set here (the download is not reachable from the
project's machines); tools/benchmark_accuracy.py measures it on the sample.

Precision (inherited, ``model.dtype='auto'``): bfloat16 compute on GPUs
and TPUs, float32 on CPUs; weights, optimizer state, batch-norm statistics
and the loss stay float32.
"""

from configs import common
from gzjax import config as base


def get_config():
  config = common.kalvankar_efficientnet(base.base_config(), 26_000)
  config.eval_every_steps = 1000
  config.checkpoint_every_steps = 1000
  return config
