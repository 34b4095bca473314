"""MetricWriter: metrics.jsonl lines and TensorBoard event files read back."""

from __future__ import annotations

import json
import pathlib
import struct

import numpy as np
from tensorboardX.proto import event_pb2
from tensorboardX.record_writer import masked_crc32c

from gzjax import metric_writer


def _read_records(path: pathlib.Path) -> list[bytes]:
  """The records of a TFRecord file, checking the framing and both CRCs."""
  raw = path.read_bytes()
  records, offset = [], 0
  while offset < len(raw):
    header = raw[offset:offset + 8]
    (length,) = struct.unpack('<Q', header)
    (header_crc,) = struct.unpack('<I', raw[offset + 8:offset + 12])
    assert header_crc == masked_crc32c(header), f'bad length CRC in {path}'
    data = raw[offset + 12:offset + 12 + length]
    (data_crc,) = struct.unpack(
        '<I', raw[offset + 12 + length:offset + 16 + length])
    assert data_crc == masked_crc32c(data), f'bad data CRC in {path}'
    records.append(data)
    offset += 16 + length
  assert offset == len(raw)  # No truncated record at the end.
  return records


def _scalars(workdir: pathlib.Path) -> list[tuple[int, str, float]]:
  """(step, tag, value) of every scalar in the workdir's event files."""
  files = sorted(workdir.glob('events.out.tfevents.*'))
  assert files, f'no TensorBoard event file in {workdir}'
  scalars = []
  for path in files:
    for record in _read_records(path):
      event = event_pb2.Event.FromString(record)
      for value in event.summary.value:
        scalars.append((event.step, value.tag, value.simple_value))
  return scalars


def test_writes_jsonl_and_tensorboard(tmp_path):
  writer = metric_writer.MetricWriter(tmp_path)
  writer.write(10, {'train/loss': 0.5, 'train/learning_rate': 0.001})
  writer.write(20, {'train/loss': 0.25, 'val/count': 3})
  writer.close()

  lines = (tmp_path / 'metrics.jsonl').read_text().splitlines()
  assert lines == [
      '{"step": 10, "train/loss": 0.5, "train/learning_rate": 0.001}',
      '{"step": 20, "train/loss": 0.25, "val/count": 3}',
  ]
  # TensorBoard stores float32.
  assert _scalars(tmp_path) == [
      (10, 'train/loss', 0.5),
      (10, 'train/learning_rate', float(np.float32(0.001))),
      (20, 'train/loss', 0.25),
      (20, 'val/count', 3.0),
  ]


def _strict(text):
  """json.loads refusing the NaN/Infinity tokens that are not JSON."""
  def refuse(token):
    raise ValueError(f'not JSON: {token}')
  return json.loads(text, parse_constant=refuse)


def test_non_finite_values_are_null_in_the_jsonl_and_absent_from_tensorboard(
    tmp_path):
  writer = metric_writer.MetricWriter(tmp_path)
  writer.write(1, {'loss': float('nan'), 'grad_norm': float('inf'),
                   'accuracy': 0.75})
  writer.write(2, {'loss': float('-inf'), 'rmse': np.float32('nan')})
  writer.close()

  lines = (tmp_path / 'metrics.jsonl').read_text().splitlines()
  assert lines == [
      '{"step": 1, "loss": null, "grad_norm": null, "accuracy": 0.75}',
      '{"step": 2, "loss": null, "rmse": null}',
  ]
  assert _strict(lines[0]) == {'step': 1, 'loss': None, 'grad_norm': None,
                               'accuracy': 0.75}
  # TensorBoard gets only the finite scalar.
  assert _scalars(tmp_path) == [(1, 'accuracy', 0.75)]


def test_dumps_is_strict_json_through_nested_values():
  value = {'rmse': 0.25, 'per_question': {'Q1': 0.5, 'Q3': float('nan')},
           'curve': (1.0, float('inf'), np.float64('-inf')), 'count': 7,
           'name': 'smooth'}
  text = metric_writer.dumps(value, sort_keys=True)
  assert _strict(text) == {'rmse': 0.25, 'per_question': {'Q1': 0.5,
                                                          'Q3': None},
                           'curve': [1.0, None, None], 'count': 7,
                           'name': 'smooth'}


def test_a_resumed_run_appends_to_the_jsonl(tmp_path):
  writer = metric_writer.MetricWriter(tmp_path)
  writer.write(1, {'loss': 1.0})
  writer.close()
  writer = metric_writer.MetricWriter(tmp_path)
  writer.write(2, {'loss': 0.5})
  writer.close()
  lines = (tmp_path / 'metrics.jsonl').read_text().splitlines()
  assert [json.loads(line) for line in lines] == [
      {'step': 1, 'loss': 1.0}, {'step': 2, 'loss': 0.5}]
  # (Not the event files: tensorboardX names them by the second, so a second
  # writer within the same second replaces the first writer's file.)
