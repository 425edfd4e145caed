"""The reproduction verdict of a rerun (``runrec rerun --check``): does B reproduce A?

- **metrics**, one by one: ``bit-identical`` (the same value; for floats the same 64 bits),
  ``within-rtol`` (numbers with ``|b - a| <= rtol * |a|``), ``different``, or ``missing`` (only
  one run logged it). The run's metric verdict is the worst of them (``bit-identical`` when it
  logged none in either run).
- **artifacts**, by name and digest from the two records (``identical``, ``different``, or
  ``none`` when neither logged one).
- **incidental**: the differences ``runrec diff`` labels incidental that could explain a
  difference (packages, Python, driver, CUDA, node, hardware match, determinism settings...),
  without the outcome itself (state, metrics, artifacts) and bookkeeping (the working
  directory, the submitting host, the scheduler's node list).

``verdict`` is "failed" when B did not succeed. The check is written on B as a
``reproduction`` version (``RunRecord.reproduction``); ``runrec ls --where`` selects on it
(``reproduction``, ``reproduced``).
"""

from __future__ import annotations

import math
import struct
from datetime import UTC, datetime
from typing import Any

from runrec_cluster.capture.proc import current_user
from runrec_cluster.record import MetricCheck, Reproduction, RunRecord, RunState, to_patch
from runrec_cluster.store import Store
from runrec_cluster.views.diff import Change, diff

# outcomes and bookkeeping: never an explanation
_NOT_CAUSES = ("state", "metrics", "artifacts")
_BOOKKEEPING = (
    "entrypoint.cwd",
    "launch.submit_host",
    "scheduler.nodelist",
    "node.package_drift",
    "env",
    "env.key",
)
_RANK = {"bit-identical": 0, "within-rtol": 1, "different": 2, "missing": 2}
MAX_LISTED = 30  # incidental differences kept in the record (the rest counted)


def _bits(v: float) -> bytes:
    return struct.pack("<d", v)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def metric_check(name: str, a: Any, b: Any, rtol: float) -> MetricCheck:
    """One metric of A (``a``) and B (``b``; ``missing`` when one is None)."""
    if a is None or b is None:
        return MetricCheck(name=name, a=a, b=b, verdict="missing")
    if _is_number(a) and _is_number(b):
        rel = abs(b - a) / abs(a) if a != 0 and math.isfinite(a) and math.isfinite(b) else None
        if type(a) is type(b) and (a == b if isinstance(a, int) else _bits(a) == _bits(b)):
            return MetricCheck(name=name, a=a, b=b, verdict="bit-identical", rel_diff=0.0)
        close = math.isclose(float(a), float(b), rel_tol=rtol, abs_tol=0.0) if rtol > 0 else False
        return MetricCheck(
            name=name, a=a, b=b, verdict="within-rtol" if close else "different", rel_diff=rel
        )
    return MetricCheck(name=name, a=a, b=b, verdict="bit-identical" if a == b else "different")


def _explanations(changes: list[Change], b: RunRecord) -> list[str]:
    job_env_recreated = bool(b.rerun and b.rerun.env and b.rerun.env.mode == "recorded")
    out = []
    for c in changes:
        if c.label != "incidental" or c.section in _NOT_CAUSES or c.key in _BOOKKEEPING:
            continue
        if job_env_recreated and c.key.startswith("launch.packages."):
            continue  # the submitting host's packages: the job did not run with them
        out.append(f"{c.section}: {c.key}: {_short(c.a)} -> {_short(c.b)}")
    if len(out) > MAX_LISTED:
        out = out[:MAX_LISTED] + [f"(+{len(out) - MAX_LISTED} more: runrec diff lists them)"]
    return out


def _declared(b: RunRecord) -> list[str]:
    """B's declared changes that can change a result (not where the code or the Python sits)."""
    out = []
    for d in b.rerun.intended if b.rerun is not None else []:
        if d.what in ("entrypoint.cwd", "env") or d.what.endswith(("_python", "runtime_env")):
            continue
        out.append(f"{d.what}: {_short(d.before)} -> {_short(d.after)}")
    return out


def _short(v: Any, width: int = 48) -> str:
    s = "-" if v is None else str(v)
    return s if len(s) <= width else s[: width - 1] + "…"


def check(store: Store, a: RunRecord, b: RunRecord, rtol: float = 0.0) -> Reproduction:
    """The verdict on ``b`` (a rerun) reproducing ``a`` (nothing written)."""
    names = list(dict.fromkeys([*a.metrics, *b.metrics]))
    metrics = [metric_check(n, a.metrics.get(n), b.metrics.get(n), rtol) for n in names]
    worst = max((_RANK[m.verdict] for m in metrics), default=0)
    verdict = ("bit-identical", "within-rtol", "different")[worst]
    if b.state != RunState.SUCCEEDED:
        verdict = "failed"
    arts_a = {x.name: x.digest for x in a.artifacts}
    arts_b = {x.name: x.digest for x in b.artifacts}
    art_changes = [
        f"{n}: {arts_a.get(n) or '(none)'} -> {arts_b.get(n) or '(none)'}"
        for n in dict.fromkeys([*arts_a, *arts_b])
        if arts_a.get(n) != arts_b.get(n)
    ]
    artifacts = "none" if not (arts_a or arts_b) else ("different" if art_changes else "identical")
    return Reproduction(
        of=a.run_id,
        verdict=verdict,  # type: ignore[arg-type]
        rtol=rtol,
        metrics=metrics,
        artifacts=artifacts,  # type: ignore[arg-type]
        artifact_changes=art_changes,
        incidental=_explanations(diff(store, a, b), b),
        intended=_declared(b),
        checked_at=datetime.now(UTC),
        by=current_user(),
    )


def reproduced(rep: Reproduction) -> bool:
    """Metrics bit-identical or within the tolerance, and no artifact changed."""
    return rep.verdict in ("bit-identical", "within-rtol") and rep.artifacts != "different"


def record_check(store: Store, run_id: str, rep: Reproduction) -> None:
    """Write the verdict on the rerun ``run_id`` (a later check replaces it)."""
    store.write_version(run_id, "reproduction", to_patch(reproduction=rep), role="cli")


def describe(rep: Reproduction) -> list[str]:
    """The verdict as lines for people."""
    word = "reproduced" if reproduced(rep) else "NOT reproduced"
    tol = f" (rtol {rep.rtol:g})" if rep.rtol else ""
    lines = [f"verdict: {word}: metrics {rep.verdict}{tol}, artifacts {rep.artifacts}"]
    for m in rep.metrics:
        rel = f"  (relative difference {m.rel_diff:.3g})" if m.rel_diff else ""
        lines.append(f"  metric {m.name}: {m.verdict}: {m.a!r} -> {m.b!r}{rel}")
    lines += [f"  artifact {c}" for c in rep.artifact_changes]
    exact = rep.verdict == "bit-identical" and rep.artifacts != "different"
    if rep.intended and not exact:
        lines.append("  declared changes (intended):")
        lines += [f"    {x}" for x in rep.intended]
    if rep.incidental and not exact:
        lines.append("  incidental differences that could explain it:")
        lines += [f"    {x}" for x in rep.incidental]
    elif rep.incidental:
        lines.append(f"  incidental differences (no effect seen): {len(rep.incidental)}")
    elif not exact and not rep.intended:
        lines.append(
            "  no difference recorded that explains it: look at nondeterminism in the code"
        )
    return lines
