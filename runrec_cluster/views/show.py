"""``runrec show``: one run in readable sections."""

from __future__ import annotations

from typing import Any

from rich.markup import escape as _markup_escape

from runrec_cluster.capture.hardware import flagged, verdict_text
from runrec_cluster.record import (
    Allocation,
    EnvInfo,
    FailureCause,
    Interpreter,
    LibSampling,
    NodeInfo,
    RunRecord,
)
from runrec_cluster.store import Store

# control characters a record may hold (written before names were checked, or in free text)
# that would drive the terminal (ESC, CSI, carriage return, bell...): shown as \xNN, never
# sent raw; tabs and newlines stay (tracebacks, notes)
_CONTROL = {
    c: f"\\x{c:02x}"
    for c in (*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0D, 0x20), *range(0x7F, 0xA0))
}


def escape(s: str) -> str:
    """Text from a record, safe to print: rich markup escaped, control characters visible."""
    return _markup_escape(str(s).translate(_CONTROL))


def _kv(c: Any, key: str, value: Any) -> None:
    if value is None or value == "" or value == [] or value == {}:
        return
    c.print(f"  [bold]{escape(key)}[/bold]: {escape(str(value))}")


def _section(c: Any, title: str) -> None:
    c.print(f"\n[bold underline]{title}[/bold underline]")


def render(
    c: Any,
    store: Store,
    rec: RunRecord,
    flags: list[Any] | None = None,
    promoted: list[Any] | None = None,
) -> None:
    """``flags``: the run's trust flags (``lineage.Trust``); ``promoted``: its promotions."""
    _header(c, rec, flags)
    if flags:
        _trust(c, rec, flags)
    _identity(c, rec)
    if rec.rerun_of:
        _rerun(c, rec, rec.rerun_of)
    _code(c, rec)
    _config(c, rec)
    _inputs(c, rec)
    _launch_env(c, rec)
    _execution(c, rec)
    for n in rec.nodes:
        _node(c, n, len(rec.nodes) > 1, rec.launch_env)
    _lifecycle(c, rec)
    _outcome(c, rec, promoted)
    _annotations(c, rec)
    if rec.warnings:
        _section(c, "Warnings")
        for w in rec.warnings:
            c.print(f"  {escape(w)}")


def _header(c: Any, rec: RunRecord, flags: list[Any] | None) -> None:
    state = rec.state.value + (f" ({rec.failure.cause.value})" if rec.failure else "")
    marker = ""
    if flags:
        marker = "RETIRED" if any(f.kind == "retired" for f in flags) else "SUSPECT"
        marker = f"  [bold red]{marker}[/bold red]"
    if flagged(rec) and not (rec.failure and rec.failure.cause == FailureCause.HARDWARE_MISMATCH):
        marker += "  [bold red]HARDWARE MISMATCH[/bold red]"
    c.print(
        f"[bold]run {rec.run_id}[/bold]  {escape(rec.name)}  [bold]{escape(state)}[/bold]{marker}"
    )


def _trust(c: Any, rec: RunRecord, flags: list[Any]) -> None:
    _section(c, "Trust")
    for f in flags:
        r = f.retirement
        what = (
            "this run was retired"
            if f.kind == "retired"
            else f"SUSPECT: upstream {f.via_label or r.target} was {r.state}"
        )
        c.print(f"  [bold red]{escape(what)}[/bold red]")
        _kv(c, "reason", r.reason)
        _kv(c, "retirement", f"{r.id} (by {r.by}, {r.at.isoformat()})")
        _kv(c, "superseded by", r.superseded_by)
    c.print(f"  see `runrec lineage {rec.run_id[:12]} --up` and `runrec retirements`")


def _identity(c: Any, rec: RunRecord) -> None:
    _section(c, "Identity")
    _kv(c, "sweep", f"{rec.sweep_id} [{rec.sweep_index}]" if rec.sweep_id else None)
    _kv(c, "user", rec.user)
    _kv(c, "submit host", rec.submit_host)
    _kv(c, "tags", ", ".join(f"{k}={v}" for k, v in rec.tags.items()))
    _kv(c, "created", rec.created_at.isoformat() if rec.created_at else None)


def _rerun(c: Any, rec: RunRecord, rerun_of: str) -> None:
    _section(c, "Rerun")
    _kv(c, "rerun of", rerun_of)
    _kv(c, "chain root", rec.rerun_root if rec.rerun_root != rerun_of else None)
    rr_info = rec.rerun
    if rr_info is not None:
        _kv(c, "reason", rr_info.reason)
        where = f" ({rr_info.code_dir})" if rr_info.code_dir else ""
        _kv(c, "code from", rr_info.code_from + where)
        _kv(c, "function from", rr_info.function_from)
        for d in rr_info.intended:
            _kv(c, "intended", f"{d.what}: {d.before!r} -> {d.after!r}")
        _kv(c, "pinned", ", ".join(f"{k}={v!r}" for k, v in rr_info.pinned.items()))
        env = rr_info.env
        if env is not None and env.mode == "recorded":
            how = "built" if env.built else "reused from the cache"
            _kv(c, "environment", f"recorded, {how} ({env.build_s}s): {env.dir}")
            missing = ", ".join(f"{n}=={v}" for n, v in env.missing.items())
            _kv(c, "left out", missing or None)
        elif env is not None:
            _kv(c, "environment", "current (declared)")
    rep = rec.reproduction
    if rep is not None:
        ok = "reproduced" if rep.verdict in ("bit-identical", "within-rtol") else "NOT reproduced"
        ok = "NOT reproduced" if rep.artifacts == "different" else ok
        _kv(c, "verdict", f"{ok}: metrics {rep.verdict}, artifacts {rep.artifacts}")
    c.print(f"  compare: runrec diff {rerun_of[:12]} {rec.run_id[:12]}")


def _code(c: Any, rec: RunRecord) -> None:
    _section(c, "Code")
    code = rec.code
    if code is None:
        c.print("  (not captured)")
    elif not code.is_repo:
        c.print("  not a git repository" + (f" ({escape(code.error)})" if code.error else ""))
    else:
        _kv(c, "repository", code.root)
        _kv(c, "remote", code.remote_url)
        _kv(c, "branch", code.branch or ("(detached HEAD)" if code.detached else None))
        _kv(c, "commit", code.commit or "(no commit yet)")
        _kv(c, "dirty", "yes" if code.dirty else "no")
        if code.patch_blob:
            _kv(
                c,
                "uncommitted change",
                f"{code.patch_size} bytes (runrec export shows it; blob {code.patch_blob[:19]}…)",
            )
        for u in code.untracked:
            note = "in the patch" if u.included else f"not in the patch: {u.reason}, {u.digest}"
            _kv(c, "untracked", f"{u.path} ({u.size} bytes, {note})")
        for s in code.submodules:
            _kv(c, "submodule", f"{s.path} @ {s.commit}")
        _kv(c, "note", code.error)
    ep = rec.entrypoint
    if ep is not None:
        _kv(c, "entrypoint", ep.function if ep.kind == "function" else " ".join(ep.argv))
        _kv(c, "cwd", ep.cwd)
        if ep.withheld:  # docs/security.md: the values never entered the store
            _kv(c, "withheld", f"{', '.join(ep.withheld)} (secrets kept out of the store)")


def _config(c: Any, rec: RunRecord) -> None:
    _section(c, "Config")
    if not rec.config:
        c.print("  (none)")
    for k, e in rec.config.items():
        c.print(
            f"  [bold]{escape(k)}[/bold] = {escape(repr(e.value))}  [dim]({escape(e.source)})[/dim]"
        )


def _inputs(c: Any, rec: RunRecord) -> None:
    _section(c, "Inputs")
    if not rec.inputs:
        c.print("  (none)")
    for i in rec.inputs:
        extra = f", version {i.version}" if i.version else ""
        if i.kind == "artifact":
            src = i.promoted or f"{i.run_id}:{i.artifact}"
            extra += f", artifact {src}"
        c.print(
            f"  {escape(i.path)}  {i.digest}  ({i.size} bytes, {i.file_count} files"
            f"{escape(extra)}, added at {i.added_by})"
        )


def _launch_env(c: Any, rec: RunRecord) -> None:
    _section(c, "Launch environment")
    le = rec.launch_env
    if le:
        command = le.interpreter is not None and le.interpreter.via != "function"
        _kv(
            c,
            "runrec's python" if command else "python",
            f"{le.python_version} ({le.python_executable})",
        )
        if le.interpreter is not None:
            _kv(c, "interpreter", interpreter_line(le.interpreter))
        _kv(c, "platform", le.platform)
        _kv(c, "packages", f"{le.package_count} distributions")
        for k, v in le.env_vars.items():
            _kv(c, k, v)


def _execution(c: Any, rec: RunRecord) -> None:
    _section(c, "Execution")
    ex = rec.execution
    if ex:
        _kv(c, "backend", ex.backend)
        res = {
            k: v
            for k, v in (
                ("timeout_min", ex.resources.timeout_min),
                ("cpus", ex.resources.cpus),
                ("mem_gb", ex.resources.mem_gb),
                ("gpus", ex.resources.gpus),
                ("nodes", ex.resources.nodes),
            )
            if v is not None
        }
        _kv(c, "resources", ", ".join(f"{k}={v}" for k, v in res.items()))
        _kv(c, "allocated", allocated_text(ex.allocated))
        _kv(c, "options", ", ".join(f"{k}={v}" for k, v in ex.options.items()))
        if ex.hardware:
            _hardware(c, rec)
        for k, v in ex.scheduler.items():
            if k != "supervisor":
                _kv(c, k, v)
        _kv(c, "logs", ex.log_dir)
    _kv(c, "attempt", rec.attempt if rec.attempt > 1 else None)


def allocated_text(a: Allocation | None) -> str | None:
    """What the scheduler allocated, in the words of ``resources`` above it (mem in GiB), and
    who said so: "cpus=2, mem_gb=0.5, gpus=1, nodes=1 on n1 (sacct)"; None: not known."""
    if a is None:
        return None
    mem = None if a.mem_mb is None else round(a.mem_mb / 1024, 3)
    parts = [
        f"{k}={v}"
        for k, v in (("cpus", a.cpus), ("mem_gb", mem), ("gpus", a.gpus), ("nodes", a.nodes))
        if v is not None
    ]
    where = f" on {a.nodelist}" if a.nodelist else ""
    return f"{', '.join(parts)}{where} ({a.source})" if parts else None


def _hardware(c: Any, rec: RunRecord) -> None:
    """The hardware class and its verdict: matched, DID NOT MATCH (in red, with each
    mismatch), where the scheduler placed a class without ``expect``, or why it is unchecked."""
    ex = rec.execution
    assert ex is not None
    text = f"{ex.hardware} ({verdict_text(rec)})"
    if ex.hardware_match is False:
        c.print(f"  [bold]hardware class[/bold]: [bold red]{escape(text)}[/bold red]")
    else:
        _kv(c, "hardware class", text)
    for m in ex.hardware_mismatches:
        _kv(c, "mismatch", m)
    if ex.hardware_expect:
        _kv(c, "expected", ", ".join(f"{k}={v}" for k, v in ex.hardware_expect.items()))
        _kv(c, "on mismatch", ex.hardware_on_mismatch or "flag")


def _node(c: Any, n: NodeInfo, ranked: bool, launch: EnvInfo | None = None) -> None:
    _section(c, f"Node (rank {n.rank})" if ranked else "Node")
    _kv(c, "hostname", n.hostname)
    _kv(c, "os", f"{n.os}, {n.kernel}")
    _kv(
        c,
        "cpu",
        f"{n.cpu_model}, {n.cpus_allowed}/{n.cpu_count} cpus usable, {n.memory_total_mb} MB",
    )
    _kv(c, "gpu status", n.gpu_status)
    for g in n.gpus:
        _kv(
            c,
            f"gpu {g.index}",
            f"{g.name} {g.uuid} {g.memory_total_mb} MB, cc {g.compute_capability}, "
            f"MIG {g.mig_mode}",
        )
    _kv(c, "nvidia driver", n.nvidia_driver)
    _kv(c, "cuda driver", n.cuda_driver)
    _kv(c, "CUDA_VISIBLE_DEVICES", n.cuda_visible_devices)
    if n.runtime:
        _kv(c, "cuda runtime", n.runtime.cuda_runtime)
        _kv(c, "cudnn", n.runtime.cudnn)
        _kv(c, "nccl", n.runtime.nccl)
        _kv(c, "frameworks", ", ".join(f"{k} {v}" for k, v in n.runtime.frameworks.items()))
        for lib in n.runtime.loaded_libraries:
            _kv(c, "loaded", lib)
        _kv(c, "libraries sampled", sampling_line(n.runtime.sampling))
    _kv(c, "features", ", ".join(n.features))
    d = n.determinism
    if d is not None:
        env = ", ".join(f"{k}={v}" for k, v in d.env.items() if v is not None)
        _kv(c, "determinism env", env or f"none of the {len(d.env)} watched variables set")
        _kv(c, "determinism", ", ".join(f"{k}={v}" for k, v in d.settings.items()))
        _kv(c, "determinism unknown", "; ".join(f"{k}: {v}" for k, v in d.unknown.items()))
    if n.interpreter is not None:
        _kv(c, "interpreter", interpreter_line(n.interpreter))
    if n.python_executable or n.python_version:
        _kv(c, "python", f"{n.python_version} ({n.python_executable})")
    if n.job_python and (n.interpreter is None or n.job_python != n.interpreter.path):
        _kv(c, "runrec job python", n.job_python)
    why_not = _drift_not_compared(n, launch)
    if why_not:
        _kv(c, "package drift", f"not compared: {why_not}")
    elif n.package_drift:
        c.print("  [bold yellow]package drift (launch → node)[/bold yellow]:")
        for name, (a, b) in n.package_drift.items():
            c.print(f"    {escape(name)}: {a or '(absent)'} → {b or '(absent)'}")
    else:
        _kv(c, "package drift", "none (node packages match the launch environment)")


def interpreter_line(i: Interpreter) -> str:
    """``python3 -> /venv/bin/python3 (PATH): Python 3.12.1, 84 distributions``, or the reason
    a fact is missing."""
    named = f"{i.argv0} -> " if i.argv0 and i.argv0 != i.path else ""
    where = f"{named}{i.path or '(not found)'} ({i.via})" if i.via else f"{named}{i.path}"
    if i.python_version:
        where += f": Python {i.python_version}, {i.package_count} distributions"
        if i.python_executable and i.python_executable != i.path:
            where += f", sys.executable {i.python_executable}"
    if i.unknown:
        where += f"; {i.unknown}"
    return where


def sampling_line(s: LibSampling | None) -> str | None:
    """How the loaded libraries were seen: samples, pids, method (or why none)."""
    if s is None:
        return None
    if s.unknown and not s.pids:
        return f"none ({s.unknown})"
    span = ""
    if len(s.times) > 1:
        span = f" over {(s.times[-1] - s.times[0]).total_seconds():.1f} s"
    line = f"{len(s.times)} samples{span} of {len(s.pids)} processes, {s.method}"
    return f"{line}; may be incomplete: {s.gap}" if s.gap else line


def _drift_not_compared(n: NodeInfo, launch: EnvInfo | None) -> str:
    """Why the node's package set was not compared with the launch's ("" when it was)."""
    if n.interpreter is None or n.interpreter.via == "function":
        return ""
    li = launch.interpreter if launch is not None else None
    if li is None:
        return "the launch record has no interpreter of the command (recorded by an older runrec)"
    if not n.interpreter.packages_blob:
        return f"on the node, {n.interpreter.unknown or 'no package set'}"
    if not li.packages_blob:
        return f"at launch, {li.unknown or 'no package set'}"
    return ""


def _lifecycle(c: Any, rec: RunRecord) -> None:
    _section(c, "Lifecycle")
    _kv(c, "submitted", rec.submitted_at.isoformat() if rec.submitted_at else None)
    _kv(c, "started", rec.started_at.isoformat() if rec.started_at else None)
    _kv(c, "ended", rec.ended_at.isoformat() if rec.ended_at else None)
    _kv(c, "duration", f"{rec.duration_s:.2f} s" if rec.duration_s is not None else None)
    if rec.started_at and rec.ended_at and rec.duration_s is None:
        _kv(
            c,
            "duration",
            "unknown: the end was recorded before the start (clock skew between "
            "the node and the host that recorded the end)",
        )
    _kv(c, "exit code", rec.exit_code)
    _kv(c, "state recorded by", rec.state_source)


def _outcome(c: Any, rec: RunRecord, promoted: list[Any] | None) -> None:
    """Metrics, artifacts, promotions, the result and the failure: the sections a run has."""
    if rec.metrics:
        _section(c, "Metrics")
        for k, v in rec.metrics.items():
            _kv(c, k, v)
    if rec.artifacts:
        _section(c, "Artifacts")
        for a in rec.artifacts:
            c.print(
                f"  [bold]{escape(a.name)}[/bold]: {escape(a.path)}  {a.digest}  ({a.size} bytes)"
            )
            if a.kept:
                c.print(f"    kept: {escape(a.kept)} ({escape(a.kept_how)}; read-only)")
            elif a.not_kept:
                c.print(f"    not kept: {escape(a.not_kept)}")
    if promoted:
        _section(c, "Promoted")
        for p in promoted:
            _kv(
                c,
                p.ref,
                f"artifact {p.artifact}, approved by {p.approved_by}, {p.promoted_at.isoformat()}",
            )
    if rec.result is not None:
        _section(c, "Result")
        _kv(c, "value", f"{rec.result.summary} ({rec.result.type}, {rec.result.format})")
    if rec.failure is not None:
        _section(c, "Failure")
        f = rec.failure
        _kv(c, "cause", f.cause.value)
        _kv(c, "type", f.type)
        _kv(c, "message", f.message)
        _kv(c, "exit code", f.exit_code)
        _kv(c, "signal", f.signal)
        _kv(c, "by", f.by)
        _kv(c, "recorded by", f"{f.source} (via {f.via})" if f.via else f.source)
        if f.traceback:
            c.print("  [bold]traceback[/bold]:")
            c.print(escape(f.traceback.rstrip()), highlight=False)


def _annotations(c: Any, rec: RunRecord) -> None:
    if rec.annotations:
        _section(c, "Annotations")
        for a in rec.annotations:  # in the order they were written
            blocks = f", blocks {a.blocks}" if a.blocks else ""
            when = a.at.isoformat() if a.at else "?"
            c.print(
                f"  [bold]{escape(a.verdict)}[/bold]{escape(blocks)} by {escape(a.by)} at {when}"
            )
            c.print(f"    {escape(a.note)}")
