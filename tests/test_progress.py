"""Progress output: a bar on a terminal, plain periodic lines in a log."""

import io

import tqdm

from gzjax import progress


class _Clock:

  def __init__(self):
    self.now = 0.0

  def __call__(self) -> float:
    return self.now


def test_plain_lines_every_interval_with_rate_and_time_left():
  clock, out = _Clock(), io.StringIO()
  bar = progress.PlainProgress(total=1000, desc='predict', unit='images',
                               interval=30, file=out, clock=clock)
  clock.now = 10
  bar.update(100)
  assert out.getvalue() == ''  # Not 30 s yet.
  clock.now = 40
  bar.update(200)
  bar.set_postfix(loss='0.25')
  clock.now = 50
  bar.update(100)
  bar.close()
  bar.close()
  # 300 images in 40 s: 7.5/s, 700 left take 93 s.  Then 400 in 50 s.
  assert out.getvalue() == (
      'predict: 300/1000 (30%), 7.5 images/s, 1:33 left, 0:40 elapsed\n'
      'predict: 400/1000 (40%), 8.0 images/s, 1:15 left, 0:50 elapsed,'
      ' loss=0.25\n')
  assert '\r' not in out.getvalue()


def test_resumed_count_rate_counts_only_new_work():
  clock, out = _Clock(), io.StringIO()
  bar = progress.PlainProgress(total=100, initial=60, unit='step',
                               interval=0, file=out, clock=clock)
  clock.now = 4
  bar.update(20)
  bar.close()  # Nothing new since the last line: no repeat.
  assert out.getvalue() == '80/100 (80%), 5.0 step/s, 0:04 left, 0:04 elapsed\n'


def test_bar_is_tqdm_only_on_a_terminal(monkeypatch):
  monkeypatch.setattr(progress, 'is_terminal', lambda: False)
  assert isinstance(progress.bar(total=3), progress.PlainProgress)
  assert list(progress.bar(range(3), interval=1e9)) == [0, 1, 2]
  monkeypatch.setattr(progress, 'is_terminal', lambda: True)
  bar = progress.bar(total=3, disable=True)
  assert isinstance(bar, tqdm.tqdm)
  bar.close()
  assert progress.format_duration(3700) == '1:01:40'
  assert progress.format_duration(float('nan')) == '?'


def test_counted_says_one_in_the_singular():
  assert [progress.counted(n, 'prediction') for n in (0, 1, 2)] == [
      '0 predictions', '1 prediction', '2 predictions']
