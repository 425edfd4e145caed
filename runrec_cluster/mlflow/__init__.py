"""Mirror runs into an MLflow tracking server: ``runrec mlflow-sync`` (docs/adopting.md).

    translate  a run (or a sweep) as an MLflow run: params, metrics, tags, status (pure)
    client     the boundary with MLflow (``MlflowClient``, the ``mlflow`` extra), errors translated
    sync       sync(): find what an earlier sync wrote, create, update or leave each run

mlflow is imported on first use only: ``import runrec_cluster.mlflow`` needs no extra.
"""

from __future__ import annotations

from runrec_cluster.mlflow.sync import DEFAULT_EXPERIMENT, SyncReport, sync

__all__ = ["DEFAULT_EXPERIMENT", "SyncReport", "sync"]
