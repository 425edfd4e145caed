"""Hardware classes: named in ``[tool.runrec.hardware.<name>]`` of the repository's
pyproject.toml, or in a ``runrec.toml`` beside it (same tables, with or without the
``tool.runrec`` prefix; the files are found and read by ``runrec_cluster.settings``).

    [tool.runrec.hardware.a100]
    slurm = { partition = "gpu", constraint = "a100", gres = "gpu:a100:1" }
    ray = { accelerator_type = "A100", resources = { "hwclass-a100" = 1 } }
    expect = { gpu_name = "A100", node_features = "a100" }   # also cpu_model, hostname

``expect`` is checked where the job runs: ``gpu_name``, ``cpu_model`` and ``hostname`` are
case-insensitive substrings (``hostname`` may be a glob), ``node_features`` must all be among the
node's features (a string or a list).
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field
from typing import Any

from runrec_cluster.errors import ConfigError
from runrec_cluster.record import NodeInfo
from runrec_cluster.settings import config_tables, find_config_files


@dataclass(frozen=True)
class HardwareClass:
    name: str
    slurm: dict[str, Any] = field(default_factory=dict)
    ray: dict[str, Any] = field(default_factory=dict)
    expect: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    def check(self, node: NodeInfo) -> tuple[bool, list[str]]:
        """Whether ``node`` meets ``expect``; the list says what did not match."""
        bad: list[str] = []
        e = self.expect
        if "gpu_name" in e:
            want = str(e["gpu_name"]).lower()
            names = [g.name for g in node.gpus]
            if not any(want in n.lower() for n in names):
                bad.append(f"gpu_name: expected {e['gpu_name']!r}, node has {names or 'no GPU'}")
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


def hardware_classes(start: str | None = None) -> dict[str, HardwareClass]:
    out: dict[str, HardwareClass] = {}
    tables = config_tables(start or os.getcwd(), "hardware", "hardware classes")
    for path, table in reversed(tables):  # runrec.toml last: it wins
        for name, t in table.items():
            if not isinstance(t, dict):
                raise ConfigError(f"hardware class {name!r} in {path} must be a table.")
            unknown = set(t) - {"slurm", "ray", "expect", "description"}
            if unknown:
                raise ConfigError(
                    f"hardware class {name!r} in {path} has unknown keys {sorted(unknown)}; use slurm, ray, expect."
                )
            out[name] = HardwareClass(
                name,
                dict(t.get("slurm", {})),
                dict(t.get("ray", {})),
                dict(t.get("expect", {})),
                path,
            )
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
