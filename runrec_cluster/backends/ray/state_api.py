"""Questions to a Ray cluster from a process that does not own the tasks: the Ray state API
(tasks, driver jobs, nodes) and the dashboard's version endpoint (the cluster's session).
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from ray.util import state as ray_state

from runrec_cluster.backends.ray.states import PENDING_WHY, clip
from runrec_cluster.errors import BackendError

API_TIMEOUT_S = 10


def api(name: str, url: str, **kw: Any) -> Any:
    """Call ``ray.util.state.<name>`` against ``url``; its failures as BackendError."""
    try:
        return getattr(ray_state, name)(address=url, timeout=API_TIMEOUT_S, **kw)
    except Exception as exc:
        raise BackendError(
            f"cannot read the Ray state API at {url} ({name}): {type(exc).__name__}: "
            f"{clip(str(exc), 300)}. Is the cluster up (`ray status`)?"
        ) from exc


def latest_tasks(
    url: str, job_id: str, task_ids: list[str], *, detail: bool = True
) -> dict[str, Any]:
    """The newest attempt of each task: one call per task for a few, one per driver job for many."""
    wanted = set(task_ids)
    rows: list[Any] = []
    if job_id and len(wanted) > 5:
        rows = api(
            "list_tasks",
            url,
            filters=[("job_id", "=", job_id)],
            limit=100_000,
            detail=detail,
            raise_on_missing_output=False,
        )
    found = {t.task_id for t in rows}
    for tid in sorted(wanted - found)[:50]:
        rows += api(
            "list_tasks",
            url,
            filters=[("task_id", "=", tid)],
            detail=detail,
            raise_on_missing_output=False,
        )
    latest: dict[str, Any] = {}
    for t in rows:
        if t.task_id in wanted and (
            t.task_id not in latest or t.attempt_number > latest[t.task_id].attempt_number
        ):
            latest[t.task_id] = t
    return latest


def driver_job(url: str, job_id: str) -> Any:
    """The Ray driver job that owns the tasks (its status and end), or None."""
    try:
        jobs = api(
            "list_jobs",
            url,
            filters=[("job_id", "=", job_id)],
            detail=True,
            raise_on_missing_output=False,
        )
    except BackendError:
        return None
    return jobs[0] if jobs else None


def submitted_job(url: str, submission_id: str) -> Any:
    """The Ray Jobs job with this submission id (a runrec driver: status, end, message), or
    None when the cluster does not know it (yet). Raises BackendError when it cannot ask."""
    jobs = api(
        "list_jobs",
        url,
        filters=[("submission_id", "=", submission_id)],
        detail=True,
        raise_on_missing_output=False,
    )
    return jobs[0] if jobs else None


def session_name(url: str) -> str | None:
    """The session the cluster at dashboard ``url`` runs now (a restart starts a new one)."""
    if "://" not in url or not url.startswith("http"):
        return None
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/api/version", timeout=API_TIMEOUT_S) as f:
            return json.loads(f.read()).get("session_name")
    except Exception:
        return None


def describe_pending_task(url: str, tid: str) -> str:
    """Why task ``tid`` has not started: its state, and for one waiting for a node, whether
    any alive node can ever run it."""
    try:
        t = latest_tasks(url, "", [tid], detail=True).get(tid)
        if t is None:
            return f"Ray task {tid} is not known to the state API at {url} yet"
        state = str(t.state)
        if state != "PENDING_NODE_ASSIGNMENT":
            why = PENDING_WHY.get(state, "")
            return f"Ray task {tid} is {state}" + (f": {why}" if why else "")
        nodes = api("list_nodes", url, raise_on_missing_output=False)
    except BackendError as exc:
        return f"Ray task {tid} (state unknown: {exc})"
    need = {k: float(v) for k, v in (t.required_resources or {}).items()}
    alive = [n for n in nodes if str(n.state) == "ALIVE"]
    offered: dict[str, float] = {}
    for n in alive:
        for k, v in (n.resources_total or {}).items():
            offered[k] = max(offered.get(k, 0.0), float(v))
    missing = [k for k, v in need.items() if offered.get(k, 0.0) < v]
    asked = fmt_resources(need)
    if missing:
        have = ", ".join(sorted(k for k in offered if not k.startswith("node:"))) or "none"
        return (
            f"Ray task {tid} is pending (PENDING_NODE_ASSIGNMENT) and infeasible: no alive node "
            f"offers {', '.join(sorted(missing))} (it asks for {asked}; the nodes offer {have}). "
            "It waits until such a node joins the cluster"
        )
    fits = [
        n
        for n in alive
        if all(float((n.resources_total or {}).get(k, 0.0)) >= v for k, v in need.items())
    ]
    if not fits:
        return (
            f"Ray task {tid} is pending (PENDING_NODE_ASSIGNMENT) and infeasible: no single node "
            f"offers all of {asked}"
        )
    return (
        f"Ray task {tid} is pending (PENDING_NODE_ASSIGNMENT): waiting for {asked} to be free on "
        f"one of {len(fits)} node(s) that can run it (or for its scheduling strategy to be met)"
    )


def fmt_resources(res: dict[str, float]) -> str:
    """Resources as "CPU=1, GPU=1" (sorted), "nothing" when empty."""
    return ", ".join(f"{k}={v:g}" for k, v in sorted(res.items())) or "nothing"
