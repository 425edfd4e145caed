"""The boundary with MLflow: ``MlflowClient`` (the ``mlflow`` extra: ``mlflow-skinny`` is
enough), imported on first use, every error it raises translated into ``MirrorError`` naming the
tracking URI and what to do.

Why the client and not the REST API by hand: it speaks to every tracking URI MLflow does
(``http(s)://`` servers with their auth variables, ``databricks``, a local ``sqlite:///`` or
``file:`` store), splits ``log_batch`` into MLflow's limits (100 params + tags, 1,000 entries a
call), and uploads artifacts to whatever artifact store the server names.
"""

from __future__ import annotations

import contextlib
import logging
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from types import SimpleNamespace

from runrec_cluster.errors import ConfigError, MirrorError
from runrec_cluster.mlflow.translate import (
    KIND_TAG,
    MAX_PARAM_VALUE,
    MetricPoint,
)

MLFLOW_EXTRA_HINT = "pip install 'runrec-cluster[mlflow]'"
# schemes MlflowClient understands as a tracking URI
SCHEMES = ("http", "https", "file", "sqlite", "postgresql", "mysql", "mssql", "databricks")
PROBE_TIMEOUT_S = 10.0
PAGE = 5000  # runs per search page
BATCH_PARAMS_TAGS = 100  # MLflow: params + tags per log_batch call
BATCH_ENTRIES = 1000  # MLflow: params + tags + metrics per log_batch call


def check_tracking_uri(uri: str) -> str:
    """``uri`` if MLflow can use it as a tracking URI, else ``ConfigError`` saying how to
    write it (``localhost:5000`` has no scheme: MLflow would take it for a directory)."""
    u = (uri or "").strip()
    scheme = urllib.parse.urlparse(u).scheme.split("+")[0].lower()
    if scheme not in SCHEMES:
        raise ConfigError(
            f"--tracking-uri {uri!r} is not an MLflow tracking URI: write it with its scheme, "
            "e.g. http://127.0.0.1:5000 (a tracking server), sqlite:///mlflow.db or "
            f"file:///path/mlruns (schemes: {', '.join(SCHEMES)})."
        )
    if scheme in ("http", "https") and not urllib.parse.urlparse(u).netloc:
        raise ConfigError(f"--tracking-uri {uri!r} names no host; e.g. http://127.0.0.1:5000.")
    return u


def _mlflow() -> SimpleNamespace:
    """The mlflow names used here, imported on first use (``ConfigError`` naming the extra)."""
    try:
        # optional heavy dependency: mlflow (runrec-cluster[mlflow], mlflow-skinny is enough)
        from mlflow.entities import Metric, Param, RunTag, ViewType
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient
    except ImportError as exc:
        raise ConfigError(
            f"runrec mlflow-sync needs the MLflow client ({exc.name} is missing): "
            f"{MLFLOW_EXTRA_HINT}"
        ) from exc
    return SimpleNamespace(
        Metric=Metric,
        Param=Param,
        RunTag=RunTag,
        ViewType=ViewType,
        MlflowException=MlflowException,
        MlflowClient=MlflowClient,
    )


@dataclass
class Existing:
    """An MLflow run a sync wrote before (found by its ``runrec.kind`` tag)."""

    run_id: str
    name: str
    status: str
    start_ms: int | None
    end_ms: int | None
    deleted: bool
    params: dict[str, str]
    tags: dict[str, str]


class Mirror:
    """One experiment of one tracking server. Opening it checks the server answers, then finds
    (or creates) the experiment; ``created`` says whether it was created."""

    def __init__(self, tracking_uri: str, experiment: str) -> None:
        self.uri = check_tracking_uri(tracking_uri)
        if not experiment or not experiment.strip():
            raise ConfigError("--experiment is empty; name an MLflow experiment, e.g. runrec.")
        self.experiment = experiment
        self.m = _mlflow()
        # the client prints a "View run" link on every set_terminated; a sync makes thousands
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        self.probe()
        self.client = self.m.MlflowClient(tracking_uri=self.uri)
        self.created = False
        self.experiment_id = self._experiment()

    # -- errors ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def calling(self, what: str) -> Iterator[None]:
        """MLflow's and the network's errors as one ``MirrorError`` naming the server."""
        try:
            yield
        except MirrorError:
            raise
        except self.m.MlflowException as exc:
            msg = getattr(exc, "message", None) or str(exc)
            if "Max retries exceeded" in msg or "Connection refused" in msg:
                raise MirrorError(self._unreachable(msg)) from exc
            raise MirrorError(
                f"the MLflow tracking server at {self.uri} refused {what}: {msg.strip()[:600]}"
            ) from exc
        except OSError as exc:  # requests' ConnectionError is an OSError
            raise MirrorError(self._unreachable(str(exc))) from exc

    def _unreachable(self, why: str) -> str:
        return (
            f"cannot reach the MLflow tracking server at {self.uri} ({why.strip()[:300]}). "
            "Start it (e.g. `mlflow server --host 127.0.0.1 --port 5000`) or pass the right "
            "--tracking-uri (or $MLFLOW_TRACKING_URI)."
        )

    def probe(self) -> None:
        """An HTTP(S) server answers at all (any status; auth is the client's business), within
        ``PROBE_TIMEOUT_S``: an unreachable server fails at once, not after the client's
        minutes of retries. Other URIs (sqlite, file, databricks) are not probed."""
        if urllib.parse.urlparse(self.uri).scheme not in ("http", "https"):
            return
        q = urllib.parse.urlencode({"experiment_name": self.experiment})
        url = f"{self.uri.rstrip('/')}/api/2.0/mlflow/experiments/get-by-name?{q}"
        try:
            with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT_S):
                pass
        except urllib.error.HTTPError:
            return  # it answered
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise MirrorError(self._unreachable(str(reason))) from exc

    # -- the experiment and its runs ----------------------------------------------------------

    def _experiment(self) -> str:
        with self.calling(f"to look up experiment {self.experiment!r}"):
            exp = self.client.get_experiment_by_name(self.experiment)
        if exp is not None and exp.lifecycle_stage == "deleted":
            raise MirrorError(
                f"experiment {self.experiment!r} at {self.uri} is deleted (id {exp.experiment_id})."
                f" Restore it (`mlflow experiments restore --experiment-id {exp.experiment_id}`)"
                " or pass another --experiment."
            )
        if exp is not None:
            return str(exp.experiment_id)
        with self.calling(f"to create experiment {self.experiment!r}"):
            eid = self.client.create_experiment(self.experiment)
        self.created = True
        return str(eid)

    def existing(self) -> list[Existing]:
        """Every run of the experiment a sync wrote (deleted ones too), with params and tags."""
        out: list[Existing] = []
        token = None
        while True:
            with self.calling("to search runs"):
                page = self.client.search_runs(
                    [self.experiment_id],
                    "",
                    run_view_type=self.m.ViewType.ALL,
                    max_results=PAGE,
                    page_token=token,
                )
            for r in page:
                tags = dict(r.data.tags)
                if KIND_TAG not in tags:
                    continue
                out.append(
                    Existing(
                        run_id=r.info.run_id,
                        name=r.info.run_name or "",
                        status=r.info.status,
                        start_ms=r.info.start_time,
                        end_ms=r.info.end_time,
                        deleted=r.info.lifecycle_stage == "deleted",
                        params=dict(r.data.params),
                        tags=tags,
                    )
                )
            token = page.token
            if not token:
                return out

    # -- writes ------------------------------------------------------------------------------

    def create(self, name: str, start_ms: int | None, tags: dict[str, str]) -> str:
        with self.calling(f"to create run {name!r}"):
            r = self.client.create_run(
                self.experiment_id, start_time=start_ms, tags=tags, run_name=name
            )
        return str(r.info.run_id)

    def log(
        self,
        run_id: str,
        params: dict[str, str],
        metrics: list[MetricPoint],
        tags: dict[str, str],
        last: dict[str, str],
    ) -> None:
        """Params, metric points and tags in as few ``log_batch`` calls as MLflow allows; the
        ``last`` tags (the sync digest) only once everything else is in."""
        m = self.m
        ps = [m.Param(k, v[:MAX_PARAM_VALUE]) for k, v in params.items()]
        ts = [m.RunTag(k, v) for k, v in tags.items()]
        ms_ = [m.Metric(p.key, p.value, p.timestamp_ms, p.step) for p in metrics]
        ls = [m.RunTag(k, v) for k, v in last.items()]
        if len(ps) + len(ts) + len(ls) <= BATCH_PARAMS_TAGS and (
            len(ps) + len(ts) + len(ls) + len(ms_) <= BATCH_ENTRIES
        ):
            with self.calling(f"to log run {run_id}"):
                self.client.log_batch(run_id, metrics=ms_, params=ps, tags=ts + ls)
            return
        with self.calling(f"to log run {run_id}"):
            if ps or ts or ms_:
                self.client.log_batch(run_id, metrics=ms_, params=ps, tags=ts)
            if ls:
                self.client.log_batch(run_id, tags=ls)

    def set_status(self, run_id: str, status: str, end_ms: int | None) -> None:
        with self.calling(f"to set the status of run {run_id}"):
            if status in ("FINISHED", "FAILED", "KILLED"):
                self.client.set_terminated(run_id, status, end_time=end_ms)
            else:
                self.client.update_run(run_id, status=status)

    def rename(self, run_id: str, name: str) -> None:
        with self.calling(f"to rename run {run_id}"):
            self.client.update_run(run_id, name=name)

    def delete_tag(self, run_id: str, key: str) -> None:
        with self.calling(f"to delete tag {key} of run {run_id}"):
            self.client.delete_tag(run_id, key)

    def upload(self, run_id: str, path: str, artifact_path: str) -> None:
        """A file or a directory into the run's artifacts, under ``artifact_path``."""
        with self.calling(f"to store artifact {artifact_path} of run {run_id}"):
            if os.path.isdir(path):
                self.client.log_artifacts(run_id, path, artifact_path=artifact_path)
            else:
                self.client.log_artifact(run_id, path, artifact_path=artifact_path)

    def run_url(self, run_id: str) -> str:
        return f"{self.uri.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{run_id}"
