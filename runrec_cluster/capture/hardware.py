"""Hardware classes: named in ``[tool.runrec.hardware.<name>]`` of the repository's
pyproject.toml, or in a ``runrec.toml`` beside it (same tables, with or without the
``tool.runrec`` prefix; the files are found and read by ``runrec_cluster.settings``).

    [tool.runrec.hardware.a100]
    slurm = { partition = "gpu", constraint = "a100", gres = "gpu:a100:1" }
    ray = { accelerator_type = "A100", resources = { "hwclass-a100" = 1 } }
    expect = { gpu_name = "A100", node_features = "a100" }   # also cpu_model, hostname, gpu_count
    on_mismatch = "fail"                                      # or "flag" (the default)

``expect`` is checked where the job runs: ``gpu_name``, ``cpu_model`` and ``hostname`` are
case-insensitive substrings (``hostname`` may be a glob), ``node_features`` must all be among the
node's features (a string or a list), ``gpu_count`` is the least number of GPUs the node shows.

The verdict, one rule for every backend and view:

- ``node_verdict`` is what the job records on landing: ``hardware_match`` and the mismatches when
  the class expects something; ``hardware_placement`` ("placed by the scheduler on n1 (slurm
  constraint=hwclass-x; ...)") when it only steers the scheduler.
- ``mismatch_failure``: on ``on_mismatch = "fail"`` a mismatch ends the run failed
  (``hardware_mismatch``) before the user's code runs; on ``"flag"`` the run goes on, and
  ``verdict_text`` / ``flagged`` make the mismatch visible in ls, show, report and ``--wait``.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field
from typing import Any

from runrec_cluster.errors import ConfigError
from runrec_cluster.record import (
    Execution,
    Failure,
    FailureCause,
    NodeInfo,
    RunRecord,
    RunState,
)
from runrec_cluster.settings import config_tables, find_config_files

CLASS_KEYS = ("slurm", "ray", "expect", "on_mismatch", "description")
EXPECT_KEYS = ("gpu_name", "gpu_count", "cpu_model", "hostname", "node_features")
ON_MISMATCH = ("flag", "fail")  # the first is the default
# what a backend's scheduler is asked for by a class: its table of the same name
STEERING_BACKENDS = ("slurm", "ray")


@dataclass(frozen=True)
class HardwareClass:
    name: str
    slurm: dict[str, Any] = field(default_factory=dict)
    ray: dict[str, Any] = field(default_factory=dict)
    expect: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    on_mismatch: str = ON_MISMATCH[0]

    def request(self, backend: str) -> dict[str, Any]:
        """What this class asks ``backend``'s scheduler for ({} on a backend it does not steer)."""
        return dict(getattr(self, backend)) if backend in STEERING_BACKENDS else {}

    def check(self, node: NodeInfo) -> tuple[bool, list[str]]:
        """Whether ``node`` meets ``expect``; the list says what did not match."""
        return check_expect(self.expect, node)


def check_expect(e: dict[str, Any], node: NodeInfo) -> tuple[bool, list[str]]:
    """Whether ``node`` meets the expectation ``e``; the list says what did not match."""
    bad: list[str] = []
    names = [g.name for g in node.gpus]
    if "gpu_name" in e:
        want = str(e["gpu_name"]).lower()
        if not any(want in n.lower() for n in names):
            bad.append(f"gpu_name: expected {e['gpu_name']!r}, node has {names or 'no GPU'}")
    if "gpu_count" in e and len(names) < int(e["gpu_count"]):
        bad.append(f"gpu_count: expected at least {e['gpu_count']}, node has {len(names)}")
    if "cpu_model" in e and str(e["cpu_model"]).lower() not in node.cpu_model.lower():
        bad.append(f"cpu_model: expected {e['cpu_model']!r}, node has {node.cpu_model!r}")
    if "hostname" in e:
        pat = str(e["hostname"])
        if not (fnmatch.fnmatch(node.hostname, pat) or pat.lower() in node.hostname.lower()):
            bad.append(f"hostname: expected {pat!r}, node is {node.hostname!r}")
    if "node_features" in e:
        want_f = e["node_features"]
        wants = [want_f] if isinstance(want_f, str) else list(want_f)
        missing = [w for w in wants if w not in node.features]
        if missing:
            bad.append(f"node_features: expected {wants}, node has {node.features or 'none'}")
    return (not bad), bad


# -- reading the classes --------------------------------------------------------------------------


def parse_class(name: str, t: Any, path: str) -> HardwareClass:
    """One ``[hardware.<name>]`` table of ``path``; ConfigError naming the class, the file, the
    bad key or value and what is allowed."""
    where = f"hardware class {name!r} in {path}"
    if not isinstance(t, dict):
        raise ConfigError(f"{where} must be a table.")
    unknown = sorted(set(t) - set(CLASS_KEYS))
    if unknown:
        raise ConfigError(f"{where} has unknown keys {unknown}; use {', '.join(CLASS_KEYS)}.")
    for key in ("slurm", "ray", "expect"):
        if not isinstance(t.get(key, {}), dict):
            raise ConfigError(f"{where}: {key} must be a table, got {t[key]!r}.")
    expect = dict(t.get("expect", {}))
    bad = sorted(set(expect) - set(EXPECT_KEYS))
    if bad:
        raise ConfigError(
            f"{where}: unknown expect key(s) {bad}; use {', '.join(EXPECT_KEYS)} "
            "(an unknown key would be checked by nobody)."
        )
    count = expect.get("gpu_count")
    if count is not None and (not isinstance(count, int) or isinstance(count, bool) or count < 0):
        raise ConfigError(f"{where}: expect.gpu_count must be a whole number >= 0, got {count!r}.")
    mode = t.get("on_mismatch", ON_MISMATCH[0])
    if mode not in ON_MISMATCH:
        raise ConfigError(
            f"{where}: on_mismatch = {mode!r} is not allowed; use "
            f'"fail" (the run ends failed before your code runs) or "flag" (the default: '
            "the run goes on and every view marks it)."
        )
    return HardwareClass(
        name,
        dict(t.get("slurm", {})),
        dict(t.get("ray", {})),
        expect,
        path,
        mode,
    )


def hardware_classes(start: str | None = None) -> dict[str, HardwareClass]:
    out: dict[str, HardwareClass] = {}
    tables = config_tables(start or os.getcwd(), "hardware", "hardware classes")
    for path, table in reversed(tables):  # runrec.toml last: it wins
        for name, t in table.items():
            out[name] = parse_class(name, t, path)
    return out


def load_hardware_class(name: str, start: str | None = None) -> HardwareClass:
    classes = hardware_classes(start)
    if name not in classes:
        where = (
            ", ".join(find_config_files(start or os.getcwd()))
            or "no pyproject.toml or runrec.toml found"
        )
        known = ", ".join(sorted(classes)) or "none defined"
        raise ConfigError(
            f"unknown hardware class {name!r} (looked in: {where}; known: {known}). "
            f"Define it under [tool.runrec.hardware.{name}]."
        )
    return classes[name]


# -- the verdict on the node ----------------------------------------------------------------------


def _words(d: dict[str, Any]) -> str:
    """``constraint=hwclass-x, gres=gpu:1`` (nested tables flattened: resources hwclass-a100=1)."""
    parts = []
    for k, v in d.items():
        if isinstance(v, dict):
            parts.append(f"{k} " + ", ".join(f"{a}={b}" for a, b in v.items()))
        else:
            parts.append(f"{k}={v}")
    return ", ".join(parts)


def placement_text(ex: Execution, node: NodeInfo) -> str:
    """Where the scheduler put a run whose class has no ``expect``, and what it was asked."""
    if ex.backend not in STEERING_BACKENDS:
        return (
            f"ran on {node.hostname} (the {ex.backend} backend has no scheduler to steer); "
            "no expect to check"
        )
    where = node.scheduler_node or node.hostname
    if ex.backend == "ray" and node.scheduler_node:
        where = f"{node.hostname} (Ray node {node.scheduler_node[:12]})"
    asked = (
        f"{ex.backend} {_words(ex.hardware_request)}"
        if ex.hardware_request
        else f"the class asks {ex.backend} for nothing"
    )
    feats = f"; node features: {', '.join(node.features)}" if node.features else ""
    return f"placed by the scheduler on {where} ({asked}{feats}); no expect to check"


def node_verdict(
    ex: Execution | None, node: NodeInfo, expect: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The ``execution`` patch the job writes on landing (rank 0): the check of ``expect``
    (default: the recorded class's) against ``node``, or, for a class that expects nothing,
    where the scheduler placed the run. {} when the run has no hardware class."""
    if ex is None or not ex.hardware:
        return {}
    want = dict(ex.hardware_expect) if expect is None else expect
    if not want:
        return {"hardware_placement": placement_text(ex, node)}
    ok, bad = check_expect(want, node)
    return {"hardware_match": ok, "hardware_mismatches": bad}


def mismatch_failure(ex: Execution | None, verdict: dict[str, Any]) -> Failure | None:
    """The failure that ends the run before the user's code when the class says
    ``on_mismatch = "fail"`` and ``verdict`` (``node_verdict``'s patch) is a mismatch."""
    if (
        ex is None
        or ex.hardware_on_mismatch != "fail"
        or verdict.get("hardware_match") is not False
    ):
        return None
    bad = verdict.get("hardware_mismatches") or []
    return Failure(
        cause=FailureCause.HARDWARE_MISMATCH,
        type="HardwareMismatch",
        message=(
            f"the node does not meet hardware class {ex.hardware!r} and the class says "
            f'on_mismatch = "fail", so your code did not run: {"; ".join(bad)}'
        ),
        source="job",
    )


# -- the verdict in every view ---------------------------------------------------------------------


def flagged(rec: RunRecord) -> bool:
    """The run ran (or runs) on a node that did not meet its hardware class."""
    ex = rec.execution
    return ex is not None and ex.hardware_match is False


def verdict_text(rec: RunRecord) -> str | None:
    """The hardware verdict in words, for ``show`` and ``report``; None without a class."""
    ex = rec.execution
    if ex is None or not ex.hardware:
        return None
    if ex.hardware_match is True:
        return "matched"
    if ex.hardware_match is False:
        f = rec.failure
        if f is not None and f.cause == FailureCause.HARDWARE_MISMATCH:
            return 'DID NOT MATCH: the run was failed before your code ran (on_mismatch = "fail")'
        return (
            'DID NOT MATCH: the run went on (on_mismatch = "flag"); its results come from '
            "other hardware than the class names"
        )
    if ex.hardware_placement:
        return ex.hardware_placement
    if rec.state == RunState.SUBMITTED:
        return "not checked yet: the run has not started"
    if not ex.hardware_expect:
        node = rec.node
        on = f" (ran on {node.scheduler_node or node.hostname})" if node else ""
        return f"not checked: the class has no expect{on}"
    if rec.node is None:
        return "not checked: the run never reached a node"
    return "not checked: the job recorded no verdict"


def mismatch_warning(rec: RunRecord) -> str | None:
    """One line for a person waiting on the run (``--wait``), or None when nothing is wrong."""
    if not flagged(rec):
        return None
    ex = rec.execution
    assert ex is not None
    bad = "; ".join(ex.hardware_mismatches) or "no detail recorded"
    return f"run {rec.run_id} ran on hardware that does not match class {ex.hardware!r}: {bad}"
