"""Evaluation metrics, in numpy on the host, each checked against hand values.

Votes: the Kaggle metric is the root mean squared error over every answer of
every galaxy; here it is taken over the *known* answers only (the mask), so a
dataset with unknown cells (the real sample) is scored on what it knows.
Classification: accuracy, macro-F1, per-class precision/recall/F1 and the
confusion matrix, ignoring rows labelled -1 (no class).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from gzjax import taxonomy


def vote_rmse(predictions: np.ndarray, votes: np.ndarray,
              mask: np.ndarray | None = None) -> float:
  """Root mean squared error over the known answers (all when no mask)."""
  predictions = np.asarray(predictions, np.float64)
  votes = np.asarray(votes, np.float64)
  mask = np.ones(votes.shape, bool) if mask is None else np.asarray(mask, bool)
  count = mask.sum()
  if not count:
    return float('nan')
  squared = np.where(mask, (predictions - votes) ** 2, 0.0)
  return float(np.sqrt(squared.sum() / count))


def question_rmse(predictions: np.ndarray, votes: np.ndarray,
                  mask: np.ndarray | None = None) -> dict[str, float]:
  """RMSE per question (``'Q1'`` … ``'Q11'``), NaN where nothing is known."""
  mask = np.ones(np.shape(votes), bool) if mask is None else mask
  return {
      f'Q{q.number}': vote_rmse(
          np.asarray(predictions)[:, q.slice], np.asarray(votes)[:, q.slice],
          np.asarray(mask)[:, q.slice])
      for q in taxonomy.QUESTIONS
  }


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray,
                     num_classes: int) -> np.ndarray:
  """``[true, predicted]`` counts over rows whose label is not -1."""
  labels = np.asarray(labels)
  predicted = np.asarray(predicted)
  keep = labels >= 0
  matrix = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(matrix, (labels[keep], predicted[keep]), 1)
  return matrix


def classification_report(
    labels: np.ndarray,
    predicted: np.ndarray,
    class_names: Sequence[str],
) -> dict[str, object]:
  """Accuracy, macro-F1, per-class precision/recall/F1/support, confusion.

  A class with no predictions has precision 0; with no true rows, recall 0 —
  and both count in the macro average only when the class has support, so an
  absent class does not drag macro-F1 down.
  """
  matrix = confusion_matrix(labels, predicted, len(class_names))
  total = matrix.sum()
  true_positive = np.diag(matrix).astype(np.float64)
  support = matrix.sum(axis=1)
  predicted_count = matrix.sum(axis=0)
  precision = np.divide(true_positive, predicted_count,
                        out=np.zeros_like(true_positive),
                        where=predicted_count > 0)
  recall = np.divide(true_positive, support, out=np.zeros_like(true_positive),
                     where=support > 0)
  f1 = np.divide(2 * precision * recall, precision + recall,
                 out=np.zeros_like(true_positive),
                 where=(precision + recall) > 0)
  present = support > 0
  return {
      'accuracy': float(true_positive.sum() / total) if total else float('nan'),
      'macro_f1': float(f1[present].mean()) if present.any() else float('nan'),
      'per_class': {
          name: {'precision': float(p), 'recall': float(r), 'f1': float(f),
                 'support': int(s)}
          for name, p, r, f, s in zip(class_names, precision, recall, f1,
                                      support)
      },
      'confusion_matrix': matrix.tolist(),
      'count': int(total),
  }


# ------------------------------------------- label catalogues (finetune) ---


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
  """Area under the ROC curve: the Mann-Whitney U statistic over both classes.

  Tied scores share their average rank, so a tie between a positive and a
  negative counts one half.  NaN when either class is absent.
  """
  labels = np.asarray(labels).astype(bool)
  scores = np.asarray(scores, np.float64)
  positives, negatives = labels.sum(), (~labels).sum()
  if not positives or not negatives:
    return float('nan')
  _, inverse, counts = np.unique(scores, return_inverse=True,
                                 return_counts=True)
  # 1-based average rank of each distinct value.
  average = np.cumsum(counts) - (counts - 1) / 2.0
  ranks = average[inverse]
  u = ranks[labels].sum() - positives * (positives + 1) / 2.0
  return float(u / (positives * negatives))


def binary_report(labels: np.ndarray, probabilities: np.ndarray,
                  threshold: float = 0.5) -> dict[str, object]:
  """Accuracy, F1 of the positive class, macro-F1, ROC AUC, confusion."""
  labels = np.asarray(labels).astype(np.int64)
  predicted = (np.asarray(probabilities) >= threshold).astype(np.int64)
  report = classification_report(labels, predicted, ('0', '1'))
  return {
      'accuracy': report['accuracy'],
      'f1': report['per_class']['1']['f1'],
      'macro_f1': report['macro_f1'],
      'roc_auc': roc_auc(labels, probabilities),
      'positive_fraction': float(labels.mean()) if len(labels) else 0.0,
      'confusion_matrix': report['confusion_matrix'],
      'count': report['count'],
  }


def reliability(labels: np.ndarray, probabilities: np.ndarray,
                num_bins: int = 10) -> dict[str, list]:
  """Calibration: per probability bin, the mean prediction, the observed
  positive fraction and the count (bins of width 1/num_bins; 1.0 falls in
  the last)."""
  labels = np.asarray(labels, np.float64)
  probabilities = np.asarray(probabilities, np.float64)
  bins = np.minimum((probabilities * num_bins).astype(np.int64), num_bins - 1)
  count = np.bincount(bins, minlength=num_bins)
  mean = np.bincount(bins, probabilities, num_bins) / np.maximum(count, 1)
  observed = np.bincount(bins, labels, num_bins) / np.maximum(count, 1)
  keep = count > 0
  return {'mean_predicted': mean[keep].tolist(),
          'observed': observed[keep].tolist(),
          'count': count[keep].tolist()}


def regression_report(predictions: np.ndarray,
                      targets: np.ndarray) -> dict[str, float]:
  """RMSE and MAE."""
  error = np.asarray(predictions, np.float64) - np.asarray(targets, np.float64)
  if not len(error):
    return {'rmse': float('nan'), 'mae': float('nan'), 'count': 0}
  return {'rmse': float(np.sqrt(np.mean(error ** 2))),
          'mae': float(np.mean(np.abs(error))), 'count': int(len(error))}
