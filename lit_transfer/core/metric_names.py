"""The scalar names a metric collection logs, for the checks and dashboards that must know them before training."""

from __future__ import annotations

from torchmetrics import MetricCollection


def logged_names(collection: MetricCollection) -> set[str]:
    """The names a stage's collection logs (``val_acc``, ``val_f1``, …): a metric that computes several gives each.

    A metric with a ``names`` attribute (``lit_transfer.models.metrics.ClassificationCounts``) logs one scalar per
    name, prefixed like the collection's own keys.
    """
    names: set[str] = set()
    prefix = collection.prefix or ""
    for key, metric in collection.items(keep_base=True):
        parts = getattr(metric, "names", None)
        names |= {f"{prefix}{n}" for n in parts} if parts else {f"{prefix}{key}"}
    return names
