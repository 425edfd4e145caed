"""Config files edited between a Hydra job's submit and its start (docs/adopting.md, "When a
config file changes before a job starts").

The launcher hashes the config files of every job at submit (inputs of role ``config``) and
records the config composed from them. The job composes again on the node, from the files as
they are when it starts (as Hydra and hydra-submitit-launcher do): a file edited in between
(a queued Slurm job, a slow local queue) would make the record state a config the job never
ran with. So the job, right after composing and before the task runs, hashes every file it
composed from (``check``); where one differs from the recorded hash, is new or is no longer
used, it records what really happened, in one job version:

- the file's hash at job start, as an input of role ``config`` added by the job (the submit's
  hash stays, it was true at submit);
- the config keys whose value or source differ from the recorded ones, recorded again from the
  job's own composition (redacted as always);
- a warning naming each file, both hashes, and each changed key (before -> after).

The files are not copied into the store to compose from a snapshot instead: Hydra projects
keep credentials in (git-ignored) config files, which the shared store must never hold.
"""

from __future__ import annotations

import os
from typing import Any

from omegaconf import DictConfig

from runrec_cluster.capture.data import algo_of, hash_file
from runrec_cluster.errors import DatasetError
from runrec_cluster.hydra import provenance
from runrec_cluster.job.run import Run
from runrec_cluster.record import ConfigEntry, InputRef, RunRecord, to_patch

MAX_KEYS = 20  # changed keys named in the warning (the config holds them all)


def _digest(path: str, like: str | None) -> str | None:
    """``path``'s digest now (the recorded digest's algorithm), None when it cannot be read."""
    try:
        return hash_file(path, algo=algo_of(like) if like else "blake3")
    except (OSError, DatasetError):
        return None


def check(run: Run, loader: Any, sweep_config: DictConfig, overrides: list[str]) -> list[str]:
    """Compare the files and config the job composed with its record; record the differences
    (module docstring). Returns the warnings written ([] when nothing changed)."""
    rec: RunRecord = run.record
    entries, files = provenance.job_config(loader, sweep_config, overrides)
    # a rerun's inputs are hashed again at its submit, without their role: found by path
    recorded = {
        i.path: i
        for i in rec.inputs
        if i.kind == "dataset" and (i.role == "config" or i.path in files)
    }
    notes: list[str] = []
    refs: list[InputRef] = []
    for path in files:
        ref = recorded.get(path)
        now = _digest(path, ref.digest if ref else None)
        if ref is not None and now == ref.digest:
            continue
        size = os.path.getsize(path) if now is not None else 0
        new = InputRef(path=path, digest=now or "", size=size, added_by="job", role="config")
        refs.append(new)
        if ref is None:
            notes.append(f"{path} (not composed from at submit; at job start {now})")
        else:
            notes.append(f"{path} (at submit {ref.digest}; at job start {now or 'unreadable'})")
    gone = [p for p, i in recorded.items() if i.role == "config" and p not in files]
    notes += [f"{p} (composed from at submit, not at job start)" for p in gone]
    if not notes:
        return []
    changed = {
        k: e
        for k, e in entries.items()
        if k not in rec.config or (rec.config[k].value, rec.config[k].source) != (e.value, e.source)
    }
    removed = sorted(k for k in rec.config if k not in entries)
    keys = [
        f"{k}: {_shown(rec.config.get(k))} -> {e.value!r} ({e.source})" for k, e in changed.items()
    ] + [f"{k}: {_shown(rec.config[k])} -> (absent)" for k in removed]
    more = f"; and {len(keys) - MAX_KEYS} more" if len(keys) > MAX_KEYS else ""
    warning = (
        "hydra: config file(s) changed between submit and job start: "
        + "; ".join(notes)
        + ". The job was composed from the files as they were at its start; "
        + (
            "config keys recorded again from that composition: " + "; ".join(keys[:MAX_KEYS]) + more
            if keys
            else "its config is the same as recorded at submit"
        )
    )
    patch = to_patch(config=changed or None, inputs=refs or None, warnings=[warning])
    run.store.write_version(run.run_id, "config", patch, role="job")
    return [warning]


def _shown(entry: ConfigEntry | None) -> str:
    return "(absent)" if entry is None else f"{entry.value!r} ({entry.source})"
