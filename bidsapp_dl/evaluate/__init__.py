"""Evaluation: metrics with bootstrap intervals, image-level soft voting, prediction and metric tables."""

from __future__ import annotations

from .metrics import (
    CLASSIFICATION_METRICS,
    RECONSTRUCTION_METRICS,
    REGRESSION_METRICS,
    bootstrap_ci,
    classification_metrics,
    image_reconstruction_metrics,
    metric_direction,
    regression_metrics,
)
from .tables import (
    cross_validation_summary,
    metrics_table,
    prediction_table,
    reconstruction_table,
    write_tsv,
)
from .voting import sample_weights, soft_vote

__all__ = [
    "CLASSIFICATION_METRICS",
    "RECONSTRUCTION_METRICS",
    "REGRESSION_METRICS",
    "bootstrap_ci",
    "classification_metrics",
    "cross_validation_summary",
    "image_reconstruction_metrics",
    "metric_direction",
    "metrics_table",
    "prediction_table",
    "reconstruction_table",
    "regression_metrics",
    "sample_weights",
    "soft_vote",
    "write_tsv",
]
