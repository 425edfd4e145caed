"""The flat run view: one row per run, stable column names (``flat_row``), and the column,
sort and library helpers every query shares.

Every column is documented in ``docs/query.md``. Column meanings never change: a new fact gets a
new column. ``flat_row`` is pure Python (``runrec ls --where`` uses it on records it already
read); ``query()`` (``select.py``) reads the derived index (``index.py``) and needs pandas and
pyarrow, the ``query`` extra: ``query_libs`` is the one place they are imported, when first
needed, so ``import runrec_cluster`` never loads them.
"""

from __future__ import annotations

import difflib
import functools
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import ModuleType
from typing import Any

import msgspec

from runrec_cluster.errors import ConfigError, ExpressionError
from runrec_cluster.expr import Expr, tokenize
from runrec_cluster.lineage.annotate import is_negative
from runrec_cluster.record import RunRecord

# The fixed columns, in display order. Never rename or re-purpose one; add new ones at the end.
BASE_COLUMNS: tuple[str, ...] = (
    "run_id",
    "name",
    "sweep_id",
    "sweep_index",
    "user",
    "submit_host",
    "state",
    "cause",
    "failure_type",
    "exit_code",
    "attempt",
    "backend",
    "job_id",
    "hardware",
    "hardware_match",
    "created_at",
    "started_at",
    "ended_at",
    "duration_s",
    "code_commit",
    "code_branch",
    "code_dirty",
    "entrypoint",
    "input_digests",
    "input_paths",
    "python_version",
    "node",
    "node_count",
    "gpu_model",
    "gpu_count",
    "nvidia_driver",
    "cuda_driver",
    "cuda_runtime",
    "cudnn",
    "rerun_of",
    "rerun_root",
    "is_rerun",
    "verdict",
    "negative",
    "retired",
    "suspect",
    "schema_version",
    "hardware.class",
    "hardware.match",
    "hardware.mismatches",
    "hardware.placement",
    "reproduction",
    "reproduced",
    "reproduction.artifacts",
)
# Flags computed at query time from the retirement records (never stored in the index).
TRUST_COLUMNS = ("retired", "suspect")
# packages.<name> columns: versions of these distributions in the launch environment.
KEY_PACKAGES: tuple[str, ...] = (
    "numpy",
    "scipy",
    "pandas",
    "torch",
    "torchvision",
    "jax",
    "jaxlib",
    "tensorflow",
    "keras",
    "scikit-learn",
    "transformers",
    "cupy",
    "runrec-cluster",
)
PREFIXES = ("packages.", "tags.", "config.", "metrics.")
LINEAGE_COLUMN = "_lineage"  # internal: what the lineage graph needs (inputs, artifacts)

QUERY_EXTRA_HINT = "pip install 'runrec-cluster[query]'"


@dataclass(frozen=True)
class QueryLibs:
    """The optional libraries of queries: pandas, pyarrow (and its ipc, compute), numpy."""

    pd: ModuleType
    pa: ModuleType
    ipc: ModuleType
    pc: ModuleType
    np: ModuleType


@functools.cache
def query_libs() -> QueryLibs:
    """The query extra's libraries, imported on first use; ``ConfigError`` naming the extra to
    install when one is missing."""
    try:
        # optional heavy dependencies: pandas, pyarrow, numpy (runrec-cluster[query])
        import numpy as np
        import pandas as pd
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.ipc as ipc
    except ImportError as exc:
        raise ConfigError(
            f"queries and tables need pandas and pyarrow ({exc.name} is missing): "
            f"{QUERY_EXTRA_HINT}"
        ) from exc
    return QueryLibs(pd=pd, pa=pa, ipc=ipc, pc=pc, np=np)


def need_query_extra() -> tuple[Any, Any]:
    """(pandas, pyarrow), or a clear error naming the extra to install."""
    libs = query_libs()
    return libs.pd, libs.pa


def _iso(dt: datetime | None) -> str | None:
    if dt is None:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC).isoformat()


def flat_row(
    rec: RunRecord,
    packages: Callable[[str], dict[str, str]] | None = None,
    trust: Any = None,
) -> dict[str, Any]:
    """The flat view of one record. ``packages(digest)`` returns the package list of a blob
    (omit it to leave ``packages.*`` out); ``trust`` (``lineage.Trust``) fills the flags."""
    ex = rec.execution
    code = rec.code
    node = rec.node
    gpus = node.gpus if node else []
    ep = rec.entrypoint
    entry = None
    if ep is not None:
        entry = ep.function if ep.kind == "function" else " ".join(ep.argv)
    verdict = rec.annotations[-1].verdict if rec.annotations else None
    row: dict[str, Any] = {
        "run_id": rec.run_id,
        "name": rec.name,
        "sweep_id": rec.sweep_id,
        "sweep_index": rec.sweep_index,
        "user": rec.user or None,
        "submit_host": rec.submit_host or None,
        "state": rec.state.value,
        "cause": rec.failure.cause.value if rec.failure else None,
        "failure_type": (rec.failure.type or None) if rec.failure else None,
        "exit_code": rec.exit_code,
        "attempt": rec.attempt,
        "backend": ex.backend if ex else None,
        "job_id": _scalar(ex.scheduler.get("job_id")) if ex else None,
        "hardware": ex.hardware if ex else None,
        "hardware_match": ex.hardware_match if ex else None,
        "created_at": _iso(rec.created_at),
        "started_at": _iso(rec.started_at),
        "ended_at": _iso(rec.ended_at),
        "duration_s": rec.duration_s,
        "code_commit": code.commit if code else None,
        "code_branch": code.branch if code else None,
        "code_dirty": code.dirty if code and code.is_repo else None,
        "entrypoint": entry,
        "input_digests": " ".join(i.digest for i in rec.inputs) or None,
        "input_paths": " ".join(i.path for i in rec.inputs) or None,
        "python_version": (rec.launch_env.python_version if rec.launch_env else None)
        or (node.python_version if node else None),
        "node": node.hostname if node else None,
        "node_count": len(rec.nodes),
        "gpu_model": gpus[0].name if gpus else None,
        "gpu_count": len(gpus),
        "nvidia_driver": node.nvidia_driver if node else None,
        "cuda_driver": node.cuda_driver if node else None,
        "cuda_runtime": node.runtime.cuda_runtime if node and node.runtime else None,
        "cudnn": node.runtime.cudnn if node and node.runtime else None,
        "rerun_of": rec.rerun_of,
        "rerun_root": rec.rerun_root,
        "is_rerun": rec.rerun_of is not None,
        "verdict": verdict,
        "negative": is_negative(rec),
        "schema_version": rec.schema_version,
        # the hardware verdict (docs/hardware-classes.md): match true / false / null (no class,
        # nothing expected, or not checked yet); placement for a class that only steers
        "hardware.class": ex.hardware if ex else None,
        "hardware.match": ex.hardware_match if ex else None,
        "hardware.mismatches": ("; ".join(ex.hardware_mismatches) or None) if ex else None,
        "hardware.placement": ex.hardware_placement if ex else None,
        # runrec rerun --check on this rerun: bit-identical / within-rtol / different / failed
        "reproduction": rec.reproduction.verdict if rec.reproduction else None,
        "reproduced": (
            rec.reproduction.verdict in ("bit-identical", "within-rtol")
            and rec.reproduction.artifacts != "different"
        )
        if rec.reproduction
        else None,
        "reproduction.artifacts": rec.reproduction.artifacts if rec.reproduction else None,
    }
    if trust is not None:
        flags = trust.of_run(rec.run_id)
        row["retired"] = any(f.kind == "retired" for f in flags)
        row["suspect"] = any(f.kind == "suspect" for f in flags)
    if packages is not None and rec.launch_env and rec.launch_env.packages_blob:
        pk = packages(rec.launch_env.packages_blob)
        for name in KEY_PACKAGES:
            if name in pk:
                row[f"packages.{name}"] = pk[name]
    for k, v in rec.tags.items():
        row[f"tags.{k}"] = v
    for k, entry_ in rec.config.items():
        row[f"config.{k}"] = entry_.value
    for k, v in rec.metrics.items():
        row[f"metrics.{k}"] = v
    return row


def _scalar(v: Any) -> Any:
    return v if v is None or isinstance(v, str | int | float) else str(v)


def lineage_part(rec: RunRecord) -> str:
    """The internal ``_lineage`` column: what ``lineage.build_graph`` reads of a run."""
    return msgspec.json.encode(
        {
            "run_id": rec.run_id,
            "name": rec.name,
            "state": rec.state.value,
            "inputs": rec.inputs,
            "artifacts": rec.artifacts,
        }
    ).decode()


def package_reader(store: Any) -> Callable[[str], dict[str, str]]:
    """``packages(digest)`` for ``flat_row``: each blob read once."""
    cache: dict[str, dict[str, str]] = {}

    def get(digest: str) -> dict[str, str]:
        if digest not in cache:
            try:
                obj = store.get_obj(digest)
                cache[digest] = obj if isinstance(obj, dict) else {}
            except Exception:  # a missing blob leaves packages.* empty, never fails a query
                cache[digest] = {}
        return cache[digest]

    return get


def order_columns(names: Iterable[str]) -> list[str]:
    """Base columns in their order, then packages.*, tags.*, config.*, metrics.* sorted; then
    anything else (columns added by a newer runrec), sorted. Internal ``_`` columns dropped."""
    names = [n for n in names if not n.startswith("_")]
    present = set(names)
    out = [c for c in BASE_COLUMNS if c in present]
    for p in PREFIXES:
        out += sorted(n for n in names if n.startswith(p))
    seen = set(out)
    out += sorted(n for n in names if n not in seen)
    return out


def parse_columns(text: str | Sequence[str] | None) -> list[str] | None:
    if text is None:
        return None
    items = text.split(",") if isinstance(text, str) else list(text)
    cols = [c.strip() for c in items if c and c.strip()]
    return cols or None


def parse_sort(spec: str) -> tuple[str, bool]:
    """``KEY``, ``KEY:asc`` (ascending), ``-KEY`` or ``KEY:desc`` (descending)."""
    s = spec.strip()
    desc = False
    if s.startswith("-"):
        s, desc = s[1:], True
    elif s.endswith(":desc"):
        s, desc = s[: -len(":desc")], True
    elif s.endswith(":asc"):
        s = s[: -len(":asc")]
    if not s:
        raise ConfigError(f"--sort {spec!r} names no column; e.g. --sort metrics.acc:desc.")
    return s, desc


def sort_key(value: Any) -> tuple[int, Any]:
    """Sorting mixed values: numbers, then strings, then anything else; missing values last."""
    if value is None or (isinstance(value, float) and value != value):
        return (3, 0)
    if isinstance(value, bool):
        return (0, int(value))
    if isinstance(value, int | float):
        return (0, value)
    if isinstance(value, str):
        return (1, value)
    return (2, json.dumps(value, sort_keys=True, default=str))


def sort_order(values: Sequence[Any], desc: bool) -> list[int]:
    """Positions of ``values`` in sorted order (``sort_key``; NaN and missing last either way)."""
    keys = [sort_key(v) for v in values]
    present = [i for i, k in enumerate(keys) if k[0] < 3]
    present.sort(key=lambda i: keys[i], reverse=desc)
    return present + [i for i, k in enumerate(keys) if k[0] == 3]


def sort_rows(rows: list[dict[str, Any]], key: str, desc: bool) -> list[dict[str, Any]]:
    present = [r for r in rows if sort_key(r.get(key))[0] < 3]
    missing = [r for r in rows if sort_key(r.get(key))[0] == 3]
    present.sort(key=lambda r: sort_key(r.get(key)), reverse=desc)
    return present + missing  # missing values last either way


# ---------------------------------------------------------------------------------------------
# Known column names: an unknown name is an error, never a silent column of nulls
# ---------------------------------------------------------------------------------------------

# the prefixes whose names come from the runs themselves (packages.* is a fixed set)
RUN_PREFIXES = ("tags.", "config.", "metrics.")


def present_columns(recs: Iterable[RunRecord]) -> set[str]:
    """The ``tags.*``, ``config.*`` and ``metrics.*`` names the runs ``recs`` have."""
    out: set[str] = set()
    for r in recs:
        out.update(f"tags.{k}" for k in r.tags)
        out.update(f"config.{k}" for k in r.config)
        out.update(f"metrics.{k}" for k in r.metrics)
    return out


class ColumnNames:
    """The column names a query over one store may use: the fixed columns (``BASE_COLUMNS``,
    ``packages.<KEY_PACKAGES>``) and the names some run of the store has (``present``: the
    ``tags.* config.* metrics.*`` of its runs, or the index's columns). A store without runs
    (``has_runs=False``) knows no run's names yet: there any ``tags.* config.* metrics.*`` name
    is accepted (it matches nothing), so a script's query does not fail on a fresh store; bare
    names (``lr``) are errors even there. A name some runs have and others lack is known: those
    others read it as ``null``."""

    def __init__(self, present: Iterable[str], has_runs: bool) -> None:
        fixed = [*BASE_COLUMNS, *(f"packages.{p}" for p in KEY_PACKAGES)]
        extra = sorted(n for n in set(present) - set(fixed) if not n.startswith("_"))
        self.known: list[str] = fixed + extra
        self.known_set = set(self.known)
        self.has_runs = has_runs

    def knows(self, name: str) -> bool:
        if name in self.known_set:
            return True
        return not self.has_runs and name.startswith(RUN_PREFIXES)

    def suggest(self, name: str) -> list[str]:
        """Up to three known names close to ``name``: the same name under another prefix
        first (``lr`` -> ``config.lr``), then names that look alike (difflib)."""
        tail = name.split(".", 1)[1] if name.startswith((*PREFIXES, "packages.")) else name
        tails: dict[str, list[str]] = {}
        for k in self.known:
            if "." in k:
                tails.setdefault(k.split(".", 1)[1], []).append(k)
        out = list(tails.get(tail, []))
        out += difflib.get_close_matches(name, self.known, n=3, cutoff=0.6)
        for t in difflib.get_close_matches(tail, list(tails), n=3, cutoff=0.75):
            out += tails[t]
        seen: list[str] = []
        for k in out:
            if k != name and k not in seen:
                seen.append(k)
        return seen[:3]

    def check(
        self, expr: Expr | None, columns: Sequence[str] | None, sort_key: str | None = None
    ) -> None:
        """``ExpressionError`` (exit 2 on the command line) naming each unknown column of the
        where expression, the column list or the sort key, with the closest known names."""
        if expr is not None:
            bad = [c for c in expr.columns if not self.knows(c)]
            if bad:
                pos = next(
                    t.pos for t in tokenize(expr.text) if t.kind == "name" and t.value == bad[0]
                )
                raise ExpressionError(self._message(bad, "the where expression"), expr.text, pos)
        if columns:
            bad = [c for c in columns if not self.knows(c)]
            if bad:
                text = ",".join(columns)
                pos = sum(len(c) + 1 for c in columns[: list(columns).index(bad[0])])
                raise ExpressionError(self._message(bad, "the column list"), text, pos)
        if sort_key is not None and not self.knows(sort_key):
            raise ExpressionError(self._message([sort_key], "the sort key"), sort_key, 0)

    def _message(self, bad: list[str], where: str) -> str:
        parts = []
        for name in bad:
            close = self.suggest(name)
            hint = f"did you mean {' or '.join(close)}?" if close else "no known name is close"
            parts.append(f"{name!r} ({hint})")
        noun = "column" if len(bad) == 1 else "columns"
        return (
            f"unknown {noun} {', '.join(parts)} in {where}. A query may use the fixed columns "
            "of docs/query.md and the tags.*, config.* and metrics.* names this store's runs "
            "have; `runrec table --format csv | head -1` lists them"
        )
