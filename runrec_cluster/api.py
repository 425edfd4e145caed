"""The submit facade: ``Executor`` and ``RunHandle``, written once for every backend.

``Executor.submit`` / ``map_array`` / ``submit_command`` capture code, config, inputs and the
launch environment on the submitting host and write the launch record *before* anything runs;
then the backend launches the jobs and their scheduler ids are appended to the record.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import cloudpickle
import msgspec

from runrec_cluster import settings
from runrec_cluster.backends import Backend, JobSpec, forget_checks, get_backend
from runrec_cluster.capture import config as cfg
from runrec_cluster.capture import config_sources, withhold
from runrec_cluster.capture.env import capture_env
from runrec_cluster.capture.git import capture_code
from runrec_cluster.capture.hardware import HardwareClass, load_hardware_class
from runrec_cluster.capture.inputs import hash_input
from runrec_cluster.capture.proc import current_user
from runrec_cluster.capture.redact import check_printable, redact_value
from runrec_cluster.errors import (
    BackendError,
    ConfigError,
    JobFailed,
    JobTimeout,
    RunrecError,
    StoreError,
)
from runrec_cluster.job import argparse_capture
from runrec_cluster.job.outcome import find_rescue, rescue_message
from runrec_cluster.record import (
    CONTEXT_KEY,
    CodeInfo,
    Entrypoint,
    EnvInfo,
    Execution,
    Failure,
    FailureCause,
    InputRef,
    Resources,
    RunRecord,
    RunState,
    end_patch,
    needs_verdict,
    to_patch,
)
from runrec_cluster.store import Store, as_store, layout

# what every run of a sweep shares at launch: written once per sweep (Store.put_context)
SHARED_LAUNCH_KEYS = (
    "name",
    "sweep_id",
    "user",
    "submit_host",
    "tags",
    "code",
    "inputs",
    "launch_env",
)
_MISSING = object()


def load(store: Store | str | os.PathLike[str] | None, run_id: str) -> RunRecord:
    """The record of a run (any unique prefix of its id works)."""
    return as_store(store).load(run_id)


def _function_name(fn: Callable[..., Any]) -> str:
    mod = getattr(fn, "__module__", None) or "?"
    qual = (
        getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__qualname__
    )
    return f"{mod}:{qual}"


class Executor:
    """Submits functions and commands to a backend, recording every run.

    Generic resources (``timeout_min``, ``cpus``, ``mem_gb``, ``gpus``, ``nodes``) map to each
    backend's own; backend-only options carry its prefix (``slurm_partition``, ``ray_runtime_env``,
    ``local_max_parallel``). ``hardware`` names a hardware class (see docs/hardware-classes.md).
    ``name`` names its runs unless a call passes its own ``name=`` (that one wins); without
    either, a run is named after its function or command.
    """

    def __init__(
        self,
        backend: str = "local",
        store: Store | str | os.PathLike[str] | None = None,
        name: str = "",
        *,
        timeout_min: float | None = None,
        cpus: int | None = None,
        mem_gb: float | None = None,
        gpus: int | None = None,
        nodes: int | None = None,
        hardware: str | Any | None = None,
        cwd: str | os.PathLike[str] | None = None,
        hash_progress: Callable[[int, int], None] | None = None,
        **options: Any,
    ) -> None:
        self.store = as_store(store)
        self.store.ensure_writable()
        self._pending = threading.local()  # launch records kept for one write (launch_records)
        self.hash_progress = hash_progress
        self.name = name
        self.cwd = os.path.abspath(os.fspath(cwd)) if cwd is not None else os.getcwd()
        for key, val in (
            ("timeout_min", timeout_min),
            ("cpus", cpus),
            ("mem_gb", mem_gb),
            ("gpus", gpus),
            ("nodes", nodes),
        ):
            if val is not None and (
                not isinstance(val, (int, float))
                or isinstance(val, bool)
                or val <= 0
                and key != "gpus"
                or val < 0
            ):
                raise ConfigError(f"{key}={val!r} is not a valid amount; give a positive number.")
        self.resources = Resources(
            timeout_min=timeout_min, cpus=cpus, mem_gb=mem_gb, gpus=gpus, nodes=nodes
        )
        cls = get_backend(backend)
        bad = [
            k
            for k in options
            if not k.startswith(cls.option_prefix)
            or (cls.known_options and k not in cls.known_options)
        ]
        if bad:
            known = ", ".join(sorted(cls.known_options)) or "none"
            raise ConfigError(
                f"unknown option(s) {', '.join(sorted(bad))} for backend {backend!r}; "
                f"its options start with {cls.option_prefix!r} ({known})."
            )
        hw = None
        if hardware is not None:  # a class name, or a HardwareClass already loaded (rerun)
            hw = (
                hardware
                if isinstance(hardware, HardwareClass)
                else load_hardware_class(hardware, self.cwd)
            )
        self.hardware_name = hw.name if hw is not None else None
        self.options = dict(options)
        self.backend = cls(self.store, self.resources, self.options, hw)

    def __repr__(self) -> str:
        return f"Executor(backend={self.backend.name!r}, store={self.store.root!r})"

    # -- public ------------------------------------------------------------------------------

    def submit(
        self,
        fn: Callable[..., Any],
        *args: Any,
        inputs: Sequence[Any] | None = None,
        tags: Mapping[str, str] | None = None,
        name: str | None = None,
        config_from: Sequence[Any] | None = None,
        **kwargs: Any,
    ) -> RunHandle:
        """Submit ``fn(*args, **kwargs)`` as one recorded run. ``config_from``: config files and
        environment variables (``rr.ConfigFile``, ``rr.ConfigEnv``; see docs/config.md) whose
        values the call does not pass itself join it."""
        return self._submit_functions(
            fn, [(args, kwargs)], inputs, tags, name, sweep=False, config_from=config_from
        )[0]

    def map_array(
        self,
        fn: Callable[..., Any],
        params: Iterable[Mapping[str, Any]],
        *,
        inputs: Sequence[Any] | None = None,
        tags: Mapping[str, str] | None = None,
        name: str | None = None,
        config_from: Sequence[Any] | None = None,
    ) -> list[RunHandle]:
        """A sweep: one run per dict of keyword arguments, all sharing one sweep id
        (``config_from``: as in ``submit``, under every run's own keyword arguments)."""
        calls = []
        for i, p in enumerate(params):
            if not isinstance(p, Mapping):
                raise ConfigError(
                    f"map_array element {i} is {type(p).__name__}, not a dict of keyword arguments: {p!r}."
                )
            calls.append(((), dict(p)))
        if not calls:
            raise ConfigError("map_array got no parameter sets; pass a non-empty list of dicts.")
        return self._submit_functions(
            fn, calls, inputs, tags, name, sweep=True, config_from=config_from
        )

    def submit_command(
        self,
        argv: Sequence[str],
        *,
        inputs: Sequence[Any] | None = None,
        tags: Mapping[str, str] | None = None,
        name: str | None = None,
        cwd: str | os.PathLike[str] | None = None,
        config_from: Sequence[Any] | None = None,
        capture_args: bool | None = None,
    ) -> RunHandle:
        """Submit a command (its exit code is recorded; 0 is success). ``config_from``: config
        files and environment variables recorded with their provenance (the command reads them
        itself); ``capture_args``: record a Python command's parsed argparse options (default
        on unless ``RUNREC_CAPTURE_ARGPARSE=0``; docs/config.md)."""
        if isinstance(argv, str) or not argv or not all(isinstance(a, str) for a in argv):
            raise ConfigError(
                f"submit_command takes a list of strings, e.g. ['python', 'train.py']; got {argv!r}."
            )
        run_cwd = os.path.abspath(os.fspath(cwd)) if cwd is not None else self.cwd
        sources = config_sources.resolve(config_from, self.store, self.hash_progress)
        # the record keeps the redacted argv; the items redaction changed (secrets) never reach
        # the store: they wait for the job in an owner-only file outside it (capture/withhold)
        shown, secret = withhold.withhold_argv(list(argv))
        secrets_dir = (
            withhold.check_dir(settings.secrets_dir(self.cwd), self.store.root) if secret else None
        )
        ctx = self._context(inputs, command=list(argv), cwd=run_cwd)
        ctx["inputs"] = ctx["inputs"] + sources.inputs
        config = sources.command_config(cfg.command_config(list(argv)))
        ep = Entrypoint(
            kind="command",
            argv=shown,
            cwd=run_cwd,
            withheld=list(secret),  # in argv order
            secrets_dir=secrets_dir,
        )
        if not argparse_capture.enabled(capture_args):
            ep = msgspec.structs.replace(ep, capture_args=False)
        run_id = layout.new_id()
        if secret and secrets_dir:  # before the launch record: the job may start at once
            withhold.write_secrets(secrets_dir, run_id, secret)
        self.write_launch(
            run_id,
            ctx,
            ep,
            config,
            tags,
            self.run_name(name, os.path.basename(argv[0])),
            None,
            None,
        )
        return self.launch([JobSpec(run_id, "command", run_cwd, self.store.log_dir(run_id))])[0]

    # -- internals ---------------------------------------------------------------------------

    def _context(
        self,
        inputs: Sequence[Any] | None,
        *,
        command: list[str] | None = None,
        cwd: str | None = None,
    ) -> dict[str, Any]:
        """What a launch captures here: code, environment (with the interpreter of the user's
        code: the ``command``'s resolved from ``cwd`` as the node will, else this Python),
        inputs, user, host."""
        code: CodeInfo = capture_code(self.cwd, self.store.put_blob, exclude=[self.store.root])
        env: EnvInfo
        env, _ = capture_env(self.store.put_obj, command=command, cwd=cwd)
        refs: list[InputRef] = []
        for ds in inputs or []:
            refs.append(hash_input(self.store, ds, progress=self.hash_progress))
        return {
            "code": code,
            "env": env,
            "inputs": refs,
            "user": current_user(),
            "host": socket.gethostname(),
        }

    def _submit_functions(
        self,
        fn: Callable[..., Any],
        calls: list[tuple[tuple[Any, ...], dict[str, Any]]],
        inputs: Sequence[Any] | None,
        tags: Mapping[str, str] | None,
        name: str | None,
        *,
        sweep: bool,
        config_from: Sequence[Any] | None = None,
    ) -> list[RunHandle]:
        triples = [(fn, a, k) for a, k in calls]
        return self.launch(
            self.prepare_calls(triples, inputs, tags, name, sweep=sweep, config_from=config_from)
        )

    def prepare_calls(
        self,
        calls: Sequence[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]],
        inputs: Sequence[Any] | None = None,
        tags: Mapping[str, str] | None = None,
        name: str | None = None,
        *,
        sweep: bool,
        config_from: Sequence[Any] | None = None,
        call_configs: Sequence[tuple[Mapping[str, Any], Sequence[InputRef]]] | None = None,
    ) -> list[JobSpec]:
        """Write the launch records of function calls ``(fn, args, kwargs)`` (one sweep when
        ``sweep``; the functions may differ, as in a submitit ``batch()``) and return their job
        specs, not launched yet: ``launch(specs)`` launches them (the submitit drop-in also
        runs them in-process for its debug cluster). ``call_configs``: per call, the config
        entries (key -> ``ConfigEntry``) recorded instead of the call's arguments, and more
        inputs, already hashed: an adoption layer that knows the config better than the call
        (the Hydra launcher: the composed config with Hydra's provenance, its config files)."""
        for fn, _, _ in calls:
            if not callable(fn):
                raise ConfigError(f"submit needs a callable, got {type(fn).__name__}: {fn!r}.")
        sources = config_sources.resolve(config_from, self.store, self.hash_progress)
        bound = (  # refuse bad values first
            [sources.bind(f, a, k) for f, a, k in calls]
            if call_configs is None
            else [(k, {}) for _, _, k in calls]  # the call is not the config view
        )
        fns = [f for f, _, _ in calls]
        calls = [(f, a, k) for (f, a, _), (k, _) in zip(calls, bound, strict=True)]
        if call_configs is not None and len(call_configs) != len(calls):
            raise ConfigError(
                f"call_configs has {len(call_configs)} entries for {len(calls)} calls."
            )
        configs = (
            [conf for _, conf in bound]
            if call_configs is None
            else [dict(c) for c, _ in call_configs]
        )
        blobs = []
        kept: list[dict[str, Any]] = []  # per call: the values withheld from the store
        for fn, a, k in calls:
            # secrets (by the config view's redaction rules) never reach the shared store: the
            # pickled call holds placeholders, the values an owner-only file (capture/withhold)
            a, k, secret = withhold.withhold_call(fn, a, k)
            kept.append(secret)
            try:
                blobs.append(self.store.put_blob(cloudpickle.dumps((fn, a, k))))
            except Exception as exc:
                raise ConfigError(
                    f"cannot serialize the call to {_function_name(fn)} ({type(exc).__name__}: {exc}). "
                    "Pass picklable arguments, or open files and connections inside the job."
                ) from exc
        ctx = self._context(inputs)
        ctx["inputs"] = ctx["inputs"] + sources.inputs
        sweep_id = layout.new_id() if sweep else None
        if sweep and len(calls) > 1:
            ctx["shared"] = {}  # the sweep's shared launch context, written once (below)
        secrets_dir = (
            withhold.check_dir(settings.secrets_dir(self.cwd), self.store.root)
            if any(kept)
            else None
        )
        specs = []
        with self.launch_records():  # one write for the whole call, before anything runs
            for i, (fn, conf, blob, secret) in enumerate(
                zip(fns, configs, blobs, kept, strict=True)
            ):
                run_id = layout.new_id()
                ep = Entrypoint(
                    kind="function",
                    function=_function_name(fn),
                    cwd=self.cwd,
                    call_blob=blob,
                    withheld=sorted(secret),
                    secrets_dir=secrets_dir if secret else None,
                )
                if secret and secrets_dir:
                    withhold.write_secrets(secrets_dir, run_id, secret)
                self.write_launch(
                    run_id,
                    ctx
                    if call_configs is None
                    else {**ctx, "inputs": ctx["inputs"] + list(call_configs[i][1])},
                    ep,
                    conf,
                    tags,
                    self.run_name(name, getattr(fn, "__name__", "run")),
                    sweep_id,
                    i if sweep else None,
                )
                specs.append(
                    JobSpec(
                        run_id,
                        "function",
                        self.cwd,
                        self.store.log_dir(run_id),
                        sweep_index=i if sweep else None,
                    )
                )
        return specs

    def run_name(self, name: str | None, default: str) -> str:
        """A run's name: the per-call ``name=``, else the Executor's ``name``, else ``default``
        (the function's or the command's name)."""
        return name or self.name or default

    def write_launch(
        self,
        run_id: str,
        ctx: dict[str, Any],
        ep: Entrypoint,
        config: Any,
        tags: Mapping[str, Any] | None,
        name: str,
        sweep_id: str | None,
        sweep_index: int | None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """Write run ``run_id``'s launch record (version "launch"), before anything runs.
        ``ctx``: the captured context (code, env, inputs, user, host; see ``_context``);
        ``name``: the run's name as recorded (``run_name`` resolves a call's);
        ``extra``: more launch fields (a rerun's rerun_of / rerun_root / rerun). When it fails
        (a bad name or tag, the store), nothing is launched: the run's secrets file goes too.
        Inside a ``launch_records()`` block the record is written with the block's others when
        the block ends."""
        try:
            patch = self._launch_patch(
                run_id, ctx, ep, config, tags, name, sweep_id, sweep_index, extra
            )
            pending = getattr(self._pending, "runs", None)
            if pending is not None:
                pending.append((run_id, patch, ep.secrets_dir))
                return
            self.store.write_version(run_id, "launch", patch, role="submitter")
        except BaseException:
            withhold.discard(run_id, ep.secrets_dir)
            raise

    @contextlib.contextmanager
    def launch_records(self) -> Iterator[None]:
        """The launch records of the runs ``write_launch`` writes inside the block are written
        together when it ends, before anything runs (``Store.write_versions``: one pack file for
        a call of many runs, whole or not at all). If the block or the write fails, the runs
        get no record and their secrets files go. A block inside another one is part of it."""
        if getattr(self._pending, "runs", None) is not None:
            yield
            return
        pending: list[tuple[str, dict[str, Any], str | None]] = []
        self._pending.runs = pending
        try:
            yield
            self._pending.runs = None
            self.store.write_versions(
                [(rid, "launch", patch) for rid, patch, _ in pending],
                role="submitter",
                new_runs=True,
            )
        except BaseException:
            for rid, _, secrets_dir in pending:
                withhold.discard(rid, secrets_dir)
            raise
        finally:
            self._pending.runs = None

    def _launch_patch(
        self,
        run_id: str,
        ctx: dict[str, Any],
        ep: Entrypoint,
        config: Any,
        tags: Mapping[str, Any] | None,
        name: str,
        sweep_id: str | None,
        sweep_index: int | None,
        extra: dict[str, Any] | None,
    ) -> dict[str, Any]:
        check_printable("run name", name)
        clean_tags = {}
        for k, v in (tags or {}).items():
            if not isinstance(k, str) or not isinstance(v, (str, int, float, bool)):
                raise ConfigError(f"tag {k!r}={v!r}: tags are string keys with string values.")
            v = redact_value(k, check_printable(f"tag {k!r}", str(v)))
            clean_tags[check_printable("tag", k)] = v
        now = datetime.now(UTC)
        execution = Execution(
            backend=self.backend.name,
            resources=self.resources,
            options={k: cfg.plain(k, v) for k, v in self.options.items()},
            hardware=self.hardware_name,
            hardware_expect=dict(self.backend.hardware.expect) if self.backend.hardware else {},
            hardware_on_mismatch=(
                self.backend.hardware.on_mismatch if self.backend.hardware else None
            ),
            hardware_request=(
                self.backend.hardware.request(self.backend.name) if self.backend.hardware else {}
            ),
            log_dir=self.store.log_dir(run_id),
        )
        patch = to_patch(
            run_id=run_id,
            name=name,
            sweep_id=sweep_id,
            sweep_index=sweep_index,
            user=ctx["user"],
            submit_host=ctx["host"],
            tags=clean_tags,
            created_at=now,
            code=ctx["code"],
            entrypoint=ep,
            config=config,
            inputs=ctx["inputs"],
            launch_env=ctx["env"],
            execution=execution,
            submitted_at=now,
        )
        patch.update(extra or {})  # a rerun's rerun_of / rerun_root / rerun
        patch["state"] = RunState.SUBMITTED.value
        patch["state_source"] = "submitter"
        patch["attempt"] = 1
        if "shared" in ctx:
            patch = self._use_shared(patch, ctx["shared"])
        return patch

    def _use_shared(self, patch: dict[str, Any], shared: dict[str, Any]) -> dict[str, Any]:
        """The launch patch of one run of a sweep, less what every run of the sweep shares:
        that is written once as a context blob (``Store.put_context``) the patch names. Only
        values equal to the shared ones are left out, so nothing can be lost."""
        if not shared:
            part = {k: patch[k] for k in SHARED_LAUNCH_KEYS if k in patch}
            part["execution"] = {
                k: v for k, v in patch.get("execution", {}).items() if k != "log_dir"
            }
            part["entrypoint"] = {
                k: v for k, v in patch.get("entrypoint", {}).items() if k != "call_blob"
            }
            shared["part"] = part
            shared["digest"] = self.store.put_context(part)
        own: dict[str, Any] = {}
        for k, v in patch.items():
            sv = shared["part"].get(k, _MISSING)
            if sv == v:
                continue
            if isinstance(v, dict) and isinstance(sv, dict):
                rest = {kk: vv for kk, vv in v.items() if sv.get(kk, _MISSING) != vv}
                if all(kk in v for kk in sv):  # nothing of the shared part is undone
                    own[k] = rest
                    continue
            if sv is not _MISSING:
                return patch  # differs from the shared part: this run keeps its whole patch
            own[k] = v
        own[CONTEXT_KEY] = shared["digest"]
        return own

    def launch(self, specs: list[JobSpec]) -> list[RunHandle]:
        """Launch runs whose launch records are written (``write_launch``) on the backend, and
        append their scheduler ids; a launch that fails is recorded as failed and raised."""
        pending = {rid for rid, _, _ in getattr(self._pending, "runs", None) or []}
        if any(s.run_id in pending for s in specs):
            raise ConfigError(
                "launch() was called inside a launch_records() block for runs whose launch "
                "records are not written yet; call it after the block."
            )
        try:
            infos = self.backend.launch(specs)
        except RunrecError as exc:
            self._record_launch_failure(specs, str(exc))
            raise
        except Exception as exc:
            msg = f"{self.backend.name} backend failed to launch: {type(exc).__name__}: {exc}"
            self._record_launch_failure(specs, msg)
            raise BackendError(msg + ". The launch records are kept and marked failed.") from exc
        # the scheduler's ids of the whole call in one write (one pack for many runs)
        self.store.write_versions(
            [
                (spec.run_id, "dispatch", {"execution": {"scheduler": info}})
                for spec, info in zip(specs, infos, strict=True)
                if info
            ],
            role="submitter",
        )
        return [RunHandle(self.store, s.run_id, self.backend) for s in specs]

    def _record_launch_failure(self, specs: list[JobSpec], msg: str) -> None:
        f = Failure(
            cause=FailureCause.INFRASTRUCTURE,
            type="LaunchError",
            message=msg,
            source="submitter",
        )
        ended = end_patch(f, source="backend")
        self.store.write_versions([(s.run_id, "end", ended) for s in specs], role="submitter")
        for s in specs:
            try:  # no job will read its secrets file
                _discard_secrets(self.store.load(s.run_id, problems=[]))
            except RunrecError:
                pass


def backend_for(store: Store, rec: RunRecord) -> Backend | None:
    """The backend object that can check or cancel a recorded run (None if unavailable)."""
    if rec.execution is None:
        return None
    try:
        cls = get_backend(rec.execution.backend)
    except ConfigError:
        return None
    return cls(store, rec.execution.resources, dict(rec.execution.options))


_warned: set[str] = set()


def _warn_once(msg: str) -> None:
    if msg not in _warned:
        _warned.add(msg)
        print(f"warning: {msg}", file=sys.stderr)


def refresh(store: Store, rec: RunRecord, backend: Any = None) -> RunRecord:
    """If a non-terminal run's job is gone without finishing, record the backend's verdict
    (a new version) and return the updated record."""
    return refresh_many(store, [rec], backend)[0]


def forget_check_times() -> None:
    """Make the next check ask the schedulers now (``runrec reconcile``), not rate-limited."""
    forget_checks()


def refresh_many(
    store: Store, recs: list[RunRecord], backend: Any = None, *, strict: bool = False
) -> list[RunRecord]:
    """``refresh`` for many records, asking each backend once (one sacct call, not one per run).
    A backend that cannot be asked (scheduler down) leaves its runs as they are, with a warning
    on stderr; with ``strict`` it raises instead (``runrec reconcile``)."""
    groups: dict[str, list[RunRecord]] = {}
    for r in recs:
        if needs_verdict(r) and r.execution is not None:
            groups.setdefault(r.execution.backend, []).append(r)
    if not groups:
        return recs
    updated: dict[str, RunRecord] = {}
    for name, group in groups.items():
        b = (
            backend
            if (backend is not None and backend.name == name)
            else backend_for(store, group[0])
        )
        if b is None:
            continue
        try:
            patches = b.check_many(group)
        except RunrecError as exc:
            if strict:
                raise
            _warn_once(f"could not ask the {name} backend about {len(group)} open run(s): {exc}")
            continue
        for run_id, patch in patches.items():
            store.write_version(run_id, "reconcile", patch, role="reconcile")
            updated[run_id] = store.load(run_id, problems=[])
            _discard_secrets(updated[run_id])
    return [updated.get(r.run_id, r) for r in recs]


def _discard_secrets(rec: RunRecord) -> None:
    """A run that ended without its job unwinding (killed, cancelled, never started) leaves its
    withheld values' file behind: removed once the end is recorded (capture/withhold.py)."""
    ep = rec.entrypoint
    if ep is not None and ep.withheld and rec.state.is_terminal():
        withhold.discard(rec.run_id, ep.secrets_dir)


class RunHandle:
    """A submitted run. ``state``/``record()`` re-read the store; ``wait``/``result`` block."""

    def __init__(self, store: Store, run_id: str, backend: Any = None) -> None:
        self.store = store
        self.run_id = run_id
        self._backend = backend
        self._settle_since: float | None = None

    def __repr__(self) -> str:
        return f"RunHandle({self.run_id!r})"

    def record(self) -> RunRecord:
        return refresh(self.store, self.store.load(self.run_id), self._backend)

    def _settled(self, rec: RunRecord) -> bool:
        """Terminal, and (under a scheduler) a bare KILLED has had a moment to get its cause."""
        if not rec.state.is_terminal():
            return False
        ex = rec.execution
        waiting = False
        patience = 20.0
        if needs_verdict(rec) and ex is not None and ex.backend == "slurm":
            waiting = True  # a bare KILLED: the scheduler's cause may follow
        elif needs_verdict(rec) and rec.state_source == "inferred":
            waiting, patience = True, 3.0  # the supervisor may still say which signal
        elif ex is not None and (ex.resources.nodes or 1) > 1 and rec.state == RunState.SUCCEEDED:
            ranks = {n.rank for n in rec.nodes}
            waiting = len(ranks) < (ex.resources.nodes or 1)  # other ranks' node facts
        if not waiting:
            return True
        if self._settle_since is None:
            self._settle_since = time.monotonic()
        return time.monotonic() - self._settle_since > patience

    @property
    def state(self) -> RunState:
        return self.record().state

    def done(self) -> bool:
        return self.state.is_terminal()

    def wait(self, timeout: float | None = None) -> RunRecord:
        """Block until the run ends; ``JobTimeout`` (with the reason) when ``timeout`` runs out."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.05
        while True:
            try:
                rec = self.record()
            except StoreError as exc:  # the store refused a write: did the job save its end?
                where = find_rescue(self.store, self.run_id)
                if where is None:
                    raise
                msg = f"{exc}. {rescue_message(self.store.root, self.run_id, where)}."
                raise StoreError(msg) from exc
            if self._settled(rec):
                return rec
            if deadline is not None and time.monotonic() >= deadline:
                why = ""
                if rec.state == RunState.SUBMITTED and self._backend is not None:
                    why = f": {self._backend.describe_pending(rec)}"
                raise JobTimeout(
                    f"run {self.run_id} is still {rec.state.value} after {timeout:g} s{why}. "
                    f"Wait longer, or inspect it with `runrec show {self.run_id}`."
                )
            time.sleep(
                delay if deadline is None else max(0.0, min(delay, deadline - time.monotonic()))
            )
            delay = min(delay * 1.5, 1.0)

    def result(self, timeout: float | None = None) -> Any:
        """The function's return value (a command's exit code); re-raises the job's failure as
        ``JobFailed`` with the recorded traceback."""
        rec = self.wait(timeout)
        if rec.state != RunState.SUCCEEDED:
            f = rec.failure
            detail = f"{f.type}: {f.message}" if f else rec.state.value
            tb = (
                f"\n--- traceback recorded in the job ---\n{f.traceback}"
                if f and f.traceback
                else ""
            )
            raise JobFailed(
                f"run {self.run_id} {rec.state.value} ({f.cause.value if f else '?'}): {detail}{tb}",
                run_id=self.run_id,
                failure=f,
            )
        if rec.entrypoint is not None and rec.entrypoint.kind == "command":
            return rec.exit_code
        if rec.result is None:
            return None
        data = self.store.get_blob(rec.result.blob)
        if rec.result.format == "msgpack":
            return msgspec.msgpack.decode(data)
        return cloudpickle.loads(data)  # the user's own explicit request for their result

    def cancel(self) -> None:
        rec = self.store.load(self.run_id)
        if rec.state.is_terminal():
            return
        b = self._backend or backend_for(self.store, rec)
        if b is None:
            raise BackendError(
                f"cannot cancel run {self.run_id}: its backend is not available here."
            )
        b.cancel(rec)
        _discard_secrets(self.store.load(self.run_id))
