r"""The seed's transfer model with the 37-vote head: frozen ImageNet InceptionV3.

  python -m gzjax.tools.convert_weights --model=inception_v3 \
      --source=inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5 \
      --out=~/gzjax_weights/inception_v3.msgpack
  python -m gzjax.main --config=configs/inception_votes.py --workdir=/tmp/inc \
      --config.manual_dir=/path/to/galaxy-zoo-the-galaxy-challenge \
      --config.model.pretrained=~/gzjax_weights/inception_v3.msgpack

InceptionV3 without its top (21,802,784 parameters with batch-norm
statistics), frozen, global average pooling, Dense 128 ReLU, then the
decision-tree votes head, Adam at 0.001 as the seed.  Keras's ImageNet
weights expect inputs in [-1, 1]: the input pipeline's default normalisation.

Runtime: 299 px inputs make this ~6 GFLOPs per image: a GPU job (about an
hour for 10 epochs on one H100); impractical on 2 CPU cores.  Expected: a
frozen ImageNet backbone transfers poorly to galaxies (the seed reports an RMSE
well above its CNN's); fine-tune (freeze_backbone=False, layer_decay=0.7) for
better results.  Not yet measured on the full set here.

Precision (inherited, ``model.dtype='auto'``): bfloat16 compute on GPUs
and TPUs, float32 on CPUs; weights, optimizer state, batch-norm statistics
and the loss stay float32.
"""

from gzjax import config as base


def get_config():
  config = base.base_config()
  config.model.name = 'inception_v3'
  config.model.hidden = (128,)
  config.input.crop_size = 299
  config.input.image_size = 299
  config.input.batch_size = 64
  config.optimizer.learning_rate = 0.001
  config.optimizer.freeze_backbone = True
  config.optimizer.warmup_steps = 200
  config.num_train_steps = 9000
  config.eval_every_steps = 1000
  config.checkpoint_every_steps = 1000
  return config
