"""``runrec diff A B``: what differs between two runs, each difference labelled.

A difference is *intended* when a rerun declared it (``RunRecord.rerun.intended`` of either
run: a new hardware class, an override, an input allowed to change), else *incidental* (a driver
update, a package drift between the login and the compute node, another node). Keys are dotted
(``config.lr``, ``node.nvidia_driver``, ``launch.packages.numpy``); a declared key also covers
the keys under it (``hardware`` covers ``hardware.expect``). What the node check found
(``hardware.match``, ``hardware.mismatches``, ``hardware.placement``) is an outcome, never a
declaration: a rerun on another class intends the class, not a lost match, so these keys are
always *incidental* (a match lost, true -> false, says so in its note).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from runrec_cluster.record import NodeInfo, RunRecord
from runrec_cluster.store import Store

# outcomes of the node check: never covered by a declared ``hardware`` difference
HARDWARE_OUTCOMES = ("hardware.match", "hardware.mismatches", "hardware.placement")

SECTIONS = (
    "code",
    "config",
    "inputs",
    "env",
    "launch",
    "node",
    "determinism",
    "hardware",
    "resources",
    "state",
    "metrics",
    "artifacts",
)


@dataclass(frozen=True)
class Change:
    section: str
    key: str
    a: Any
    b: Any
    label: str  # "intended" (declared at rerun) or "incidental"
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def relation(a: RunRecord, b: RunRecord) -> str:
    if b.rerun_of == a.run_id:
        return f"{b.run_id} is a rerun of {a.run_id}"
    if a.rerun_of == b.run_id:
        return f"{a.run_id} is a rerun of {b.run_id}"
    ra, rb = a.rerun_root or a.run_id, b.rerun_root or b.run_id
    if ra == rb:
        return f"both are in the chain of reruns of {ra}"
    return "unrelated runs (no rerun links them): every difference is incidental"


def _packages(store: Store, blob: str | None) -> dict[str, str] | None:
    if not blob:
        return None
    try:
        return dict(store.get_obj(blob, dict[str, str]))
    except Exception:
        return None


def _gpu_models(n: NodeInfo | None) -> list[str] | None:
    return sorted(g.name for g in n.gpus) if n is not None else None


def _node_facts(n: NodeInfo | None) -> dict[str, Any]:
    if n is None:
        return {}
    rt = n.runtime
    return {
        "hostname": n.hostname,
        "scheduler_node": n.scheduler_node or None,
        "features": sorted(n.features) or None,
        "os": n.os or None,
        "kernel": n.kernel or None,
        "cpu_model": n.cpu_model or None,
        "gpus": _gpu_models(n) or None,
        "nvidia_driver": n.nvidia_driver,
        "cuda_driver": n.cuda_driver,
        "cuda_runtime": rt.cuda_runtime if rt else None,
        "cudnn": rt.cudnn if rt else None,
        "nccl": rt.nccl if rt else None,
        "frameworks": dict(rt.frameworks) if rt and rt.frameworks else None,
        "python_version": n.python_version or None,
        "package_drift": {k: list(v) for k, v in n.package_drift.items()} or None,
    }


def _flat(prefix: str, d: dict[str, Any]) -> dict[str, Any]:
    return {f"{prefix}.{k}" if prefix else k: v for k, v in d.items()}


def _code_facts(r: RunRecord) -> dict[str, Any]:
    c, ep = r.code, r.entrypoint
    d: dict[str, Any] = {}
    if c is not None:
        d = {
            "code.is_repo": c.is_repo,
            "code.commit": c.commit,
            "code.dirty": c.dirty,
            "code.patch": c.patch_blob,
            "code.submodules": {s.path: s.commit for s in c.submodules} or None,
        }
    if ep is not None:
        d["entrypoint.kind"] = ep.kind
        d["entrypoint.function"] = ep.function
        d["entrypoint.argv"] = list(ep.argv) or None
        d["entrypoint.cwd"] = ep.cwd or None
    return d


def _input_facts(r: RunRecord) -> dict[str, Any]:
    return {f"inputs.{i.path}": i.digest for i in r.inputs}


def _launch_facts(r: RunRecord) -> dict[str, Any]:
    e = r.launch_env
    if e is None:
        return {}
    return {
        "launch.python_version": e.python_version,
        "launch.platform": e.platform,
        "launch.submit_host": r.submit_host or None,
    }


def _hardware_facts(r: RunRecord) -> dict[str, Any]:
    x = r.execution
    if x is None:
        return {}
    return {
        "hardware": x.hardware,
        "hardware.expect": dict(x.hardware_expect) or None,
        "hardware.on_mismatch": x.hardware_on_mismatch if x.hardware else None,
        "hardware.request": dict(x.hardware_request) or None,
        "hardware.match": x.hardware_match,
        "hardware.mismatches": list(x.hardware_mismatches) or None,
        "hardware.placement": x.hardware_placement,
    }


def _resource_facts(r: RunRecord) -> dict[str, Any]:
    x = r.execution
    if x is None:
        return {}
    d: dict[str, Any] = {"backend": x.backend}
    for f in ("timeout_min", "cpus", "mem_gb", "gpus", "nodes"):
        d[f"resources.{f}"] = getattr(x.resources, f)
    d.update(_flat("options", dict(x.options)))
    for k in ("partition", "nodelist", "assigned_resources"):
        if k in x.scheduler:
            d[f"scheduler.{k}"] = x.scheduler[k]
    return d


def _state_facts(r: RunRecord) -> dict[str, Any]:
    return {
        "state": r.state.value,
        "failure": r.failure.cause.value if r.failure else None,
        "exit_code": r.exit_code,
        "result": r.result.summary if r.result else None,
    }


def _config_facts(r: RunRecord) -> dict[str, Any]:
    return {f"config.{k}": e.value for k, e in r.config.items()}


def artifact_facts(r: RunRecord) -> dict[str, Any]:
    """Artifacts by name (the last one logged under a name): ``artifacts.<name>`` its digest,
    ``artifacts.<name>.size`` its bytes (and ``.file_count`` for a directory)."""
    out: dict[str, Any] = {}
    for art in r.artifacts:
        out[f"artifacts.{art.name}"] = art.digest
        out[f"artifacts.{art.name}.size"] = art.size
        if art.is_dir:
            out[f"artifacts.{art.name}.file_count"] = art.file_count
    return out


def _setting_library(key: str) -> str:
    return "threadpoolctl" if key.startswith("threads.") else key.split(".", 1)[0]


def determinism_facts(n: NodeInfo | None) -> dict[str, Any]:
    """The determinism facts of a node (``NodeInfo.determinism``), flat: ``determinism.env.X``
    (None: unset), ``determinism.<setting>`` (a setting of a library that was not loaded reads
    ``unknown: <why>``), ``determinism.<library>`` for a library known only as unknown."""
    d = n.determinism if n is not None else None
    if d is None:
        return {"determinism": "not recorded"}
    out: dict[str, Any] = {"determinism": "recorded", "determinism.env_source": d.env_source}
    for k, v in d.env.items():
        out[f"determinism.env.{k}"] = v
    for k, v in d.settings.items():
        out[f"determinism.{k}"] = v
    for k, why in d.unknown.items():
        out[f"determinism.{k}"] = f"unknown: {why}"
    return out


def fill_unknown(fa: dict[str, Any], fb: dict[str, Any]) -> None:
    """A setting one run has and the other does not: the other's is unknown for the reason its
    library is (``torch`` not loaded...), not missing."""
    for mine, other in ((fa, fb), (fb, fa)):
        for k in other:
            if k in mine or not k.startswith("determinism.") or k.startswith("determinism.env"):
                continue
            lib = _setting_library(k.removeprefix("determinism."))
            why = mine.get(f"determinism.{lib}")
            if isinstance(why, str) and why.startswith("unknown: "):
                mine[k] = why


def _artifact_note(key: str, va: Any, vb: Any) -> str:
    if key.endswith((".size", ".file_count")) and isinstance(va, int) and isinstance(vb, int):
        return f"delta {vb - va:+,}"
    if va is None:
        return "added (only in B)"
    if vb is None:
        return "removed (only in A)"
    return "changed"


def _pairs(store: Store, a: RunRecord, b: RunRecord) -> list[tuple[str, str, Any, Any]]:
    """(section, key, value in a, value in b) for everything compared."""
    out: list[tuple[str, str, Any, Any]] = []

    def add(section: str, va: dict[str, Any], vb: dict[str, Any]) -> None:
        for k in dict.fromkeys([*va, *vb]):
            out.append((section, k, va.get(k), vb.get(k)))

    add("code", _code_facts(a), _code_facts(b))
    add("config", _config_facts(a), _config_facts(b))
    add("inputs", _input_facts(a), _input_facts(b))
    add("env", env_facts(a), env_facts(b))
    add("launch", _launch_facts(a), _launch_facts(b))
    la = _packages(store, a.launch_env.packages_blob if a.launch_env else None)
    lb = _packages(store, b.launch_env.packages_blob if b.launch_env else None)
    if la is not None and lb is not None and la != lb:
        add("launch", _flat("launch.packages", la), _flat("launch.packages", lb))
    add("node", _flat("node", _node_facts(a.node)), _flat("node", _node_facts(b.node)))
    na = _packages(store, a.node.packages_blob if a.node else None)
    nb = _packages(store, b.node.packages_blob if b.node else None)
    if na is not None and nb is not None and na != nb:
        add("node", _flat("node.packages", na), _flat("node.packages", nb))
    da, db = determinism_facts(a.node), determinism_facts(b.node)
    if "not recorded" in (da["determinism"], db["determinism"]):
        da, db = {"determinism": da["determinism"]}, {"determinism": db["determinism"]}
    fill_unknown(da, db)
    add("determinism", da, db)
    add("hardware", _hardware_facts(a), _hardware_facts(b))
    add("resources", _resource_facts(a), _resource_facts(b))
    add("state", _state_facts(a), _state_facts(b))
    add("metrics", _flat("metrics", dict(a.metrics)), _flat("metrics", dict(b.metrics)))
    add("artifacts", artifact_facts(a), artifact_facts(b))
    return out


def declared(a: RunRecord, b: RunRecord) -> dict[str, str]:
    """Keys declared as intended differences by either run, with their notes."""
    out: dict[str, str] = {}
    for r in (a, b):
        if r.rerun is not None:
            for d in r.rerun.intended:
                out.setdefault(d.what, d.note)
    return out


def env_facts(r: RunRecord) -> dict[str, Any]:
    """How a rerun's environment was chosen (``runrec rerun --env``): ``env`` is "recorded"
    (recreated: ``env.key``, ``env.missing``) or "current" (declared); None for
    a run that is not a rerun with ``--env``."""
    e = r.rerun.env if r.rerun is not None else None
    if e is None:
        return {"env": None}
    return {
        "env": e.mode,
        "env.key": e.key[:24] if e.key else None,  # the cache directory's name
        "env.missing": dict(e.missing) or None,
    }


def _is_declared(key: str, decl: dict[str, str]) -> str | None:
    if key in HARDWARE_OUTCOMES:
        return None  # what the node check found is never intended
    # a declared package (--with NAME==VERSION: ``packages.NAME``) covers it in every list
    for prefix in ("launch.packages.", "node.packages."):
        if key.startswith(prefix) and "packages." + key.removeprefix(prefix) in decl:
            return decl["packages." + key.removeprefix(prefix)]
    for k, note in decl.items():
        if key == k or key.startswith(k + "."):
            return note
    return None


def diff(store: Store, a: RunRecord, b: RunRecord) -> list[Change]:
    """Every difference between ``a`` and ``b``, in section order."""
    decl = declared(a, b)
    out = []
    for section, key, va, vb in _pairs(store, a, b):
        if va == vb:
            continue
        note = _is_declared(key, decl)
        label = "intended" if note is not None else "incidental"
        if key == "hardware.match" and va is True and vb is False:
            note = "the node no longer meets the class: results from other hardware"
        elif key == "metrics" or key.startswith("metrics."):
            if isinstance(va, (int, float)) and isinstance(vb, (int, float)):
                if not isinstance(va, bool) and not isinstance(vb, bool):
                    note = (note + "; " if note else "") + f"delta {vb - va:+.6g}"
        elif key.startswith("artifacts."):
            note = (note + "; " if note else "") + _artifact_note(key, va, vb)
        out.append(Change(section, key, va, vb, label, note or ""))
    return out


def same_sections(changes: list[Change]) -> list[str]:
    differing = {c.section for c in changes}
    return [s for s in SECTIONS if s not in differing]


def to_json(store: Store, a: RunRecord, b: RunRecord) -> dict[str, Any]:
    changes = diff(store, a, b)

    def who(r: RunRecord) -> dict[str, Any]:
        return {
            "run_id": r.run_id,
            "name": r.name,
            "state": r.state.value,
            "rerun_of": r.rerun_of,
            "rerun_root": r.rerun_root,
            "reason": r.rerun.reason if r.rerun else None,
        }

    return {
        "a": who(a),
        "b": who(b),
        "relation": relation(a, b),
        "differences": [c.to_dict() for c in changes],
        "same": same_sections(changes),
    }
