"""What a rerun will do, decided before anything is created: every record checked (an
entrypoint, a call, the overrides typed, the inputs hashed again), the backend and its options,
the hardware class, and the *intended* differences from the original (``Plan``)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from runrec_cluster.backends import get_backend
from runrec_cluster.capture.data import Dataset, algo_of
from runrec_cluster.capture.hardware import HardwareClass, hardware_classes
from runrec_cluster.capture.inputs import Artifact, hash_input
from runrec_cluster.errors import ConfigError, DatasetError, LineageError, RerunError
from runrec_cluster.record import Difference, InputRef, RunRecord
from runrec_cluster.rerun.materialize import Echo, Materialized
from runrec_cluster.rerun.overrides import check_overrides, withheld_values
from runrec_cluster.store import Store


@dataclass
class Plan:
    """A rerun of ``recs`` (one run, or the runs of a sweep), checked: nothing refuses after."""

    recs: list[RunRecord]
    typed: dict[str, dict[str, Any]]  # run id -> its overrides, typed (``check_overrides``)
    inputs: dict[str, tuple[list[InputRef], list[Difference]]]  # run id -> (inputs, changed)
    old_backend: str
    new_backend: str
    options: dict[str, Any]  # the backend options kept
    dropped: dict[str, Any]  # the old backend's options the new one does not take
    old_hw: str | None
    hw_name: str | None  # the hardware class the rerun asks for (None: none)
    # run id -> the values its call withheld from the store, given again (``withheld_values``)
    secrets: dict[str, dict[str, Any]] = field(default_factory=dict)

    def setup_differences(self) -> list[Difference]:
        """The intended differences every run of the rerun shares: backend, options, hardware."""
        out: list[Difference] = []
        if self.new_backend != self.old_backend:
            out.append(Difference(what="backend", before=self.old_backend, after=self.new_backend))
            out += [
                Difference(what=f"options.{k}", before=v, after=None)
                for k, v in self.dropped.items()
            ]
        if self.hw_name != self.old_hw:
            out.append(Difference(what="hardware", before=self.old_hw, after=self.hw_name))
        return out


def make_plan(
    store: Store,
    recs: list[RunRecord],
    *,
    hardware: str | None,
    overrides: Mapping[str, Any] | None,
    backend: str | None,
    allow_changed_inputs: bool,
    echo: Echo,
) -> Plan:
    """Check every record (RerunError for one that cannot be rerun) and choose the backend,
    its options and the hardware class name."""
    typed: dict[str, dict[str, Any]] = {}
    inputs: dict[str, tuple[list[InputRef], list[Difference]]] = {}
    secrets: dict[str, dict[str, Any]] = {}
    said: set[str] = set()
    for r in recs:
        if r.entrypoint is None or r.execution is None:
            raise RerunError(
                f"cannot rerun {r.run_id}: its launch record has no entrypoint or execution "
                "(an incomplete or very old record)."
            )
        if r.entrypoint.kind == "function" and not r.entrypoint.call_blob:
            raise RerunError(f"cannot rerun {r.run_id}: it recorded no call to repeat.")
        typed[r.run_id] = check_overrides(r, overrides or {})
        secrets[r.run_id], notes = withheld_values(r, typed[r.run_id], os.environ)
        note = f"note: the recorded call had values kept out of the store (secrets); given again: {', '.join(notes)}"
        if notes and note not in said:  # once per distinct set, not once per run of a sweep
            said.add(note)
            echo(note)
        inputs[r.run_id] = recheck_inputs(store, r, allow_changed_inputs)
    execution = recs[0].execution
    assert execution is not None  # checked above
    old_backend = execution.backend
    new_backend = backend or old_backend
    cls = get_backend(new_backend)
    options = dict(execution.options)
    dropped = {k: v for k, v in options.items() if not k.startswith(cls.option_prefix)}
    for k in dropped:
        del options[k]
    if dropped:
        echo(
            f"note: dropped the {old_backend} options {', '.join(sorted(dropped))} (backend {new_backend})"
        )
    return Plan(
        recs=recs,
        typed=typed,
        inputs=inputs,
        old_backend=old_backend,
        new_backend=new_backend,
        options=options,
        dropped=dropped,
        old_hw=execution.hardware,
        hw_name=hardware or execution.hardware,
        secrets=secrets,
    )


def plan_hardware(
    plan: Plan, hardware: str | None, mats: Iterable[Materialized], echo: Echo
) -> HardwareClass | None:
    """The hardware class the rerun asks for, looked up from here, the original's directory
    and the materialized code; a note when a class kept from the original changed since."""
    if not plan.hw_name:
        return None
    first = plan.recs[0]
    execution = first.execution
    assert execution is not None  # checked by make_plan
    orig_cwd = first.entrypoint.cwd if first.entrypoint else ""
    hw = find_hardware(plan.hw_name, [os.getcwd(), orig_cwd, *(m.cwd for m in mats)])
    if not hardware and plan.old_hw and dict(hw.expect) != dict(execution.hardware_expect):
        echo(
            f"note: hardware class {plan.hw_name!r} now expects {hw.expect} (the original: "
            f"{execution.hardware_expect})"
        )
    return hw


def find_hardware(name: str, places: Iterable[str]) -> HardwareClass:
    """The hardware class ``name`` as defined from the first of ``places`` that defines it."""
    looked = []
    known: set[str] = set()
    for d in dict.fromkeys(p for p in places if p and os.path.isdir(p)):
        looked.append(d)
        classes = hardware_classes(d)
        if name in classes:
            return classes[name]
        known |= set(classes)
    raise RerunError(
        f"unknown hardware class {name!r} (looked from: {', '.join(looked)}; known: "
        f"{', '.join(sorted(known)) or 'none defined'}). Define it under "
        f"[tool.runrec.hardware.{name}] or in runrec.toml, or pass --hardware with a known one."
    )


def recheck_inputs(
    store: Store, rec: RunRecord, allow_changed: bool
) -> tuple[list[InputRef], list[Difference]]:
    """The inputs the rerun is submitted with (those added at submit), hashed again, and the
    changes (refused unless ``allow_changed``)."""
    refs: list[InputRef] = []
    changed: list[Difference] = []
    for i in rec.inputs:
        try:
            if i.kind == "artifact" and (i.promoted or (i.run_id and i.artifact)):
                new = hash_input(
                    store, Artifact(i.promoted or f"{i.run_id}:{i.artifact}"), added_by=i.added_by
                )
            else:
                new = hash_input(
                    store, Dataset(i.path, i.version), added_by=i.added_by, algo=_algo(i.digest)
                )
            problem = None if new.digest == i.digest else f"now {new.digest}"
        except (LineageError, ConfigError) as exc:  # DatasetError is a ConfigError
            new, problem = None, str(exc)
        if problem is not None:
            if not allow_changed:
                raise RerunError(
                    f"cannot rerun {rec.run_id}: its {i.kind} {i.path} changed since the run "
                    f"(recorded {i.digest}; {problem}). Restore it, or pass "
                    "--allow-changed-inputs to rerun on the data as it is now (the change is "
                    "recorded as an intended difference)."
                )
            if new is None and i.kind == "artifact" and os.path.exists(i.path):
                new = hash_input(store, Dataset(i.path, i.version), added_by=i.added_by)
            if new is None:
                raise RerunError(
                    f"cannot rerun {rec.run_id}: its {i.kind} {i.path} is gone ({problem}); "
                    "there is nothing to rerun on."
                )
            changed.append(
                Difference(
                    what=f"inputs.{i.path}",
                    before=i.digest,
                    after=new.digest,
                    note="input changed since the original (--allow-changed-inputs)",
                )
            )
        if i.added_by == "submit" and new is not None:
            # a config file stays a config file: the role is the original's, not the hasher's
            refs.append(msgspec.structs.replace(new, role=i.role) if new.role != i.role else new)
    return refs, changed


def _algo(digest: str) -> str | None:
    """The hash algorithm of a recorded input digest (None for an unknown one: the default)."""
    try:
        return algo_of(digest)
    except DatasetError:
        return None
