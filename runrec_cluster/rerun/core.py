"""Reruns from the record: ``rerun(store, run_id, ...)`` and ``rerun_sweep(store, sweep_id, ...)``.

A rerun is a new run, a sibling of the original (which is never touched), made from what the
original recorded. See docs/reruns.md.

- **code**: the recorded commit with the recorded uncommitted change re-applied. When the
  checkout at the recorded root is exactly that (same HEAD, same patch), the rerun starts there.
  Otherwise the code is *materialized* (``rerun.materialize``): ``git worktree add --detach`` of
  the commit under ``STORE/worktrees/<id>`` (or in ``workdir``), then ``git apply --binary`` of
  the recorded patch, and the rerun starts in the matching directory of that tree. A commit
  that is not reachable or a patch that does not apply refuses the rerun (``RerunError``);
  nothing is submitted.
- **function**: loaded from the materialized code by its recorded ``module:qualname`` when the
  module is there and defines the name (checked without importing it here); otherwise the
  function of the recorded pickled call is used, and the caller is told so first
  (``rerun.call.RerunCall`` is what the job calls).
- **config** (``rerun.overrides``): the recorded effective config. ``overrides`` (``--set
  key=value``) are coerced to the recorded value's type; unknown keys are refused. Given and
  default keys change the call's arguments (a command's ``--key value``); ``generated`` keys are
  *pinned*: the job's ``run.log_config`` returns the recorded (or overridden) value instead of a
  new draw.
- **inputs** (``rerun.plan``): every recorded dataset is hashed again and every artifact
  re-resolved; a changed one refuses the rerun unless ``allow_changed_inputs``, and then it is
  declared a difference.
- **record**: ``rerun_of`` (the original), ``rerun_root`` (the first run of a chain of reruns)
  and ``rerun`` (``RerunInfo``: the reason, the *intended* differences, the pinned values, where
  the code came from). ``runrec diff`` labels every other difference *incidental*.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Mapping
from typing import Any

import cloudpickle

from runrec_cluster import settings
from runrec_cluster.api import Executor
from runrec_cluster.backends import JobSpec
from runrec_cluster.capture import withhold
from runrec_cluster.capture.env import capture_env, with_command_interpreter
from runrec_cluster.capture.git import capture_code
from runrec_cluster.capture.hardware import HardwareClass
from runrec_cluster.capture.proc import current_user
from runrec_cluster.capture.redact import redact_argv
from runrec_cluster.errors import RerunError, RunrecError
from runrec_cluster.record import Difference, Entrypoint, RerunEnv, RerunInfo, RunRecord, to_patch
from runrec_cluster.rerun import envs
from runrec_cluster.rerun.call import RerunCall
from runrec_cluster.rerun.materialize import (
    Echo,
    Materialized,
    function_source,
    materialize,
    stderr_echo,
)
from runrec_cluster.rerun.overrides import rerun_config, rewrite_argv
from runrec_cluster.rerun.plan import Plan, make_plan, plan_hardware
from runrec_cluster.store import Store, as_store, layout


def rerun(
    store: Store | str | os.PathLike[str] | None,
    run_id: str,
    *,
    hardware: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    backend: str | None = None,
    reason: str = "",
    allow_changed_inputs: bool = False,
    workdir: str | os.PathLike[str] | None = None,
    echo: Echo | None = None,
    env: str | None = None,
    with_packages: Iterable[str] | Mapping[str, str] | None = None,
    allow_missing: bool = False,
) -> Any:
    """Rerun one recorded run (any unique id prefix) and return its ``RunHandle``.

    ``hardware``: another hardware class; ``overrides``: config key -> value (strings are
    coerced to the recorded type); ``backend``: another backend (options of the old one are
    dropped); ``reason``: why, kept in the record; ``workdir``: materialize the code there
    instead of under ``STORE/worktrees/``. ``echo`` gets the notes (default: stderr).
    ``env``: "recorded" (a virtual environment with the original's distributions and Python,
    built with uv or reused from the cache: ``rerun.envs``) or "current" (declared: today's
    environment); None: today's, undeclared. ``with_packages``: ``NAME==VERSION`` pins
    installed into the recreated environment (implies "recorded"). ``allow_missing``: build it
    without the distributions the package index lacks (else RerunError listing them).
    """
    st = as_store(store)
    rec = st.load(run_id)
    return _rerun(
        st,
        [rec],
        hardware=hardware,
        overrides=overrides,
        backend=backend,
        reason=reason,
        allow_changed_inputs=allow_changed_inputs,
        workdir=workdir,
        echo=echo,
        sweep=False,
        env=env,
        with_packages=with_packages,
        allow_missing=allow_missing,
    )[0]


def rerun_sweep(
    store: Store | str | os.PathLike[str] | None,
    sweep_id: str,
    *,
    hardware: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    backend: str | None = None,
    reason: str = "",
    allow_changed_inputs: bool = False,
    workdir: str | os.PathLike[str] | None = None,
    echo: Echo | None = None,
    env: str | None = None,
    with_packages: Iterable[str] | Mapping[str, str] | None = None,
    allow_missing: bool = False,
) -> list[Any]:
    """Rerun every run of a sweep (id or prefix) as one new sweep; returns the handles."""
    st = as_store(store)
    recs = _find_sweep(st, sweep_id)
    return _rerun(
        st,
        recs,
        hardware=hardware,
        overrides=overrides,
        backend=backend,
        reason=reason,
        allow_changed_inputs=allow_changed_inputs,
        workdir=workdir,
        echo=echo,
        sweep=True,
        env=env,
        with_packages=with_packages,
        allow_missing=allow_missing,
    )


def _find_sweep(store: Store, sweep: str) -> list[RunRecord]:
    p = sweep.strip().lower()
    recs = []
    for rid in store.run_ids():
        try:
            r = store.load(rid, problems=[])
        except RunrecError:
            continue
        if r.sweep_id and r.sweep_id.startswith(p):
            recs.append(r)
    ids = sorted({r.sweep_id for r in recs if r.sweep_id})
    if not ids:
        raise RerunError(f"no sweep id starts with {sweep!r} in {store.root}. See `runrec ls`.")
    if len(ids) > 1:
        raise RerunError(
            f"sweep prefix {sweep!r} matches {len(ids)} sweeps ({', '.join(ids[:5])}); give more characters."
        )
    return sorted(recs, key=lambda r: (r.sweep_index if r.sweep_index is not None else 0, r.run_id))


def _code_key(r: RunRecord) -> tuple[str | None, str | None, str | None] | None:
    """Runs with the same key share one materialized code."""
    return (r.code.commit, r.code.patch_blob, r.code.root) if r.code else None


def _rerun(
    store: Store,
    recs: list[RunRecord],
    *,
    hardware: str | None,
    overrides: Mapping[str, Any] | None,
    backend: str | None,
    reason: str,
    allow_changed_inputs: bool,
    workdir: str | os.PathLike[str] | None,
    echo: Echo | None,
    sweep: bool,
    env: str | None = None,
    with_packages: Iterable[str] | Mapping[str, str] | None = None,
    allow_missing: bool = False,
) -> list[Any]:
    echo = echo or stderr_echo
    with_ = envs.parse_with(with_packages)
    if with_ and env not in (None, "recorded"):
        raise RerunError(
            "--with installs into the recreated environment: use it with --env recorded."
        )
    env = "recorded" if with_ else env
    if env not in (None, "recorded", "current"):
        raise RerunError(f"--env {env!r}: give recorded or current.")
    store.ensure_writable()
    # everything that can refuse is checked before anything is created
    plan = make_plan(
        store,
        recs,
        hardware=hardware,
        overrides=overrides,
        backend=backend,
        allow_changed_inputs=allow_changed_inputs,
        echo=echo,
    )
    # the code, once per distinct (commit, patch)
    label = layout.new_id()
    mats: dict[Any, Materialized] = {}
    for r in recs:
        key = _code_key(r)
        if key not in mats:
            mats[key] = materialize(
                store, r, workdir=workdir, label=label if not mats else layout.new_id(), echo=echo
            )
    hw = plan_hardware(plan, hardware, mats.values(), echo)
    env_info, env_diffs = _rerun_env(store, plan, mats, env, with_, allow_missing, echo)
    env, _ = capture_env(store.put_obj)
    ctx = {"env": env, "user": current_user(), "host": socket.gethostname()}
    sweep_id = layout.new_id() if sweep else None
    handles: list[Any] = []
    for mat_key, mat in mats.items():
        ex = _executor(store, plan, hw, mat, env_info)
        code_ctx = {**ctx, "code": capture_code(mat.cwd, store.put_blob, exclude=[store.root])}
        code_ctx["rerun_env"] = (env_info, env_diffs)
        with ex.launch_records():  # one write for the runs of this code (one pack for many)
            specs = [
                _write_rerun(store, ex, plan, r, mat, code_ctx, reason, sweep_id, echo)
                for r in recs
                if _code_key(r) == mat_key
            ]
        handles += ex.launch(specs)
    return handles


def _rerun_env(
    store: Store,
    plan: Plan,
    mats: dict[Any, Materialized],
    env: str | None,
    with_: dict[str, str],
    allow_missing: bool,
    echo: Echo,
) -> tuple[RerunEnv | None, list[Difference]]:
    """The environment the rerun's jobs run in (``--env``) and its intended differences;
    for "recorded" it is built (or found) here, before anything is submitted."""
    if env is None:
        return None, []
    if env == "current":
        note = "today's environment, declared (--env current)"
        return RerunEnv(mode="current"), [Difference(what="env", after="current", note=note)]
    envs.same_set(store, plan.recs)
    mat = next(iter(mats.values()))
    spec = envs.plan_env(store, plan.recs[0], mat.root, with_, cwd=mat.cwd)
    info = envs.ensure_env(store, spec, allow_missing=allow_missing, echo=echo, cwd=mat.cwd)
    assert info.python is not None
    plan.options, opt_diffs = envs.interpreter_options(plan.new_backend, plan.options, info.python)
    return info, envs.env_differences(spec, info) + opt_diffs


def _executor(
    store: Store, plan: Plan, hw: HardwareClass | None, mat: Materialized, env: RerunEnv | None
) -> Executor:
    """The executor of the rerun's runs whose code is ``mat``: the original's resources (and,
    with ``env``, the recreated environment's Python: ``plan.options`` holds it)."""
    execution = plan.recs[0].execution
    assert execution is not None  # checked by make_plan
    res = execution.resources
    return Executor(
        backend=plan.new_backend,
        store=store,
        timeout_min=res.timeout_min,
        cpus=res.cpus,
        mem_gb=res.mem_gb,
        gpus=res.gpus,
        nodes=res.nodes,
        hardware=hw,
        cwd=mat.cwd,
        **plan.options,
    )


def _write_rerun(
    store: Store,
    ex: Executor,
    plan: Plan,
    r: RunRecord,
    mat: Materialized,
    ctx: dict[str, Any],
    reason: str,
    sweep_id: str | None,
    echo: Echo,
) -> JobSpec:
    """Write the launch record of the rerun of ``r``; returns what the backend launches."""
    ep = r.entrypoint
    assert ep is not None  # checked by make_plan
    refs, changed = plan.inputs[r.run_id]
    config, pinned, call_ov, config_diffs = rerun_config(r, plan.typed[r.run_id])
    env_info, env_diffs = ctx.get("rerun_env") or (None, [])
    intended = plan.setup_differences() + config_diffs + changed + env_diffs
    if mat.code_dir is not None and ep.cwd != mat.cwd:
        intended.append(
            Difference(
                what="entrypoint.cwd",
                before=ep.cwd,
                after=mat.cwd,
                note=f"recorded code materialized ({mat.code_from})",
            )
        )
    function_from = None
    secret: dict[str, Any] = {}
    real_argv: list[str] = []
    if ep.kind == "function":
        new_ep, function_from, secret = _function_entrypoint(
            store, r, mat, call_ov, plan.secrets.get(r.run_id, {}), echo
        )
    else:
        new_ep, argv_diffs, secret, real_argv = _command_entrypoint(
            store, r, mat, call_ov, plan.secrets.get(r.run_id, {})
        )
        intended += argv_diffs
    info = RerunInfo(
        reason=reason,
        intended=intended,
        pinned=pinned,
        code_from=mat.code_from,  # type: ignore[arg-type]
        code_dir=mat.code_dir,
        function_from=function_from,  # type: ignore[arg-type]
        by=ctx["user"],
        env=env_info,
    )
    extra = to_patch(rerun_of=r.run_id, rerun_root=r.rerun_root or r.run_id, rerun=info)
    if mat.notes:
        extra["warnings"] = list(mat.notes)
    new_id = layout.new_id()
    if secret and new_ep.secrets_dir:  # before the launch record: the job may start at once
        withhold.write_secrets(new_ep.secrets_dir, new_id, secret)
    index = r.sweep_index if sweep_id is not None else None
    launch_ctx = {k: v for k, v in ctx.items() if k != "rerun_env"} | {"inputs": refs}
    if new_ep.kind == "command":  # the command's interpreter here, as a submit records it
        environ = envs.job_environ(env_info, os.environ)
        launch_ctx["env"] = with_command_interpreter(
            ctx["env"], real_argv, mat.cwd, store.put_obj, environ=environ
        )
    ex.write_launch(
        new_id, launch_ctx, new_ep, config, r.tags, r.name, sweep_id, index, extra=extra
    )
    return JobSpec(new_id, new_ep.kind, mat.cwd, store.log_dir(new_id), sweep_index=index)


def _function_entrypoint(
    store: Store,
    r: RunRecord,
    mat: Materialized,
    call_ov: dict[str, Any],
    given: dict[str, Any],
    echo: Echo,
) -> tuple[Entrypoint, str, dict[str, Any]]:
    """The rerun's call (a pickled ``RerunCall``), where its function comes from, and the
    values withheld from the store for its job: ``given`` (the original call's, given again:
    ``Plan.secrets``) and the ``--set`` values the redaction rules flag (never pickled)."""
    ep = r.entrypoint
    assert ep is not None and ep.call_blob is not None  # checked by make_plan
    load, path, why = function_source(ep, mat)
    if load == "pickle" and (ep.function or "").startswith("runrec_cluster."):
        echo(  # runrec's own job function (the Hydra launcher's): not the user's code
            f"note: {ep.function} is runrec-cluster's own job function, not your code: the "
            f"rerun calls it from the runrec-cluster installed here, with the arguments "
            f"recorded in the pickled call of {r.run_id} (they hold your task)"
        )
    elif load == "pickle":
        echo(
            f"note: {ep.function} is not importable from the rerun's code ({why}); "
            f"calling the function recorded in the pickled call of {r.run_id} instead"
        )
    call = store.get_blob(ep.call_blob)
    if r.rerun is not None:  # a rerun's call wraps the first call: unwrap it
        inner = cloudpickle.loads(call)[0]
        if isinstance(inner, RerunCall):
            call, call_ov = inner.call, {**inner.overrides, **call_ov}
    call_ov, set_values = withhold.withhold_mapping(withhold.SET_PREFIX, call_ov)
    # the placeholders still in the call: the first call's, an earlier rerun's --set ones kept
    keep = {
        p
        for p in ep.withheld
        if not p.startswith(withhold.SET_PREFIX)
        or isinstance(call_ov.get(p.removeprefix(withhold.SET_PREFIX)), withhold.Withheld)
    }
    secret = {p: given.get(p) for p in keep} | set_values
    blob = store.put_blob(
        cloudpickle.dumps(
            (RerunCall(call, ep.function or "", load, path, mat.cwd, call_ov), (), {})
        )
    )
    secrets_dir = withhold.check_dir(settings.secrets_dir(mat.cwd), store.root) if secret else None
    new_ep = Entrypoint(
        kind="function",
        function=ep.function,
        cwd=mat.cwd,
        call_blob=blob,
        withheld=sorted(secret),
        secrets_dir=secrets_dir,
    )
    return new_ep, load, secret


def _command_entrypoint(
    store: Store,
    r: RunRecord,
    mat: Materialized,
    call_ov: dict[str, Any],
    given: dict[str, Any],
) -> tuple[Entrypoint, list[Difference], dict[str, str], list[str]]:
    """The rerun's command line (the withheld items ``given`` again or rewritten by their
    ``--set``, overrides applied, paths into the recorded code mapped into the materialized
    code) as recorded, its difference from the original's, the items withheld from the store
    again (``argv[i]`` -> value) and the command line as it will run."""
    ep = r.entrypoint
    assert ep is not None
    argv = list(ep.argv)
    if ep.call_blob:  # an older record: the unredacted command line, pickled
        argv = list(cloudpickle.loads(store.get_blob(ep.call_blob)))
    argv = withhold.provide_argv(argv, given)  # a None: the item's --set rewrites it below
    new_argv = rewrite_argv(argv, call_ov)
    if mat.code_dir is not None and mat.root and r.code and r.code.root:
        root = r.code.root.rstrip(os.sep) + os.sep
        new_argv = [
            os.path.join(mat.root, a[len(root) :]) if a.startswith(root) else a for a in new_argv
        ]
    diffs = []
    if new_argv != argv:
        diffs.append(
            Difference(
                what="entrypoint.argv", before=redact_argv(argv), after=redact_argv(new_argv)
            )
        )
    shown, secret = withhold.withhold_argv(new_argv)
    secrets_dir = withhold.check_dir(settings.secrets_dir(mat.cwd), store.root) if secret else None
    new_ep = Entrypoint(
        kind="command",
        argv=shown,
        cwd=mat.cwd,
        withheld=list(secret),  # in argv order
        secrets_dir=secrets_dir,
        capture_args=ep.capture_args,
    )
    return new_ep, diffs, secret, new_argv


def order_with_reruns(recs: list[RunRecord]) -> list[tuple[RunRecord, int]]:
    """``recs`` (already sorted) with each rerun moved right after its original, and its depth
    in the chain of reruns (0 for a run that reran nothing listed here)."""
    present = {r.run_id for r in recs}
    children: dict[str, list[RunRecord]] = {}
    for r in recs:
        if r.rerun_of and r.rerun_of in present and r.rerun_of != r.run_id:
            children.setdefault(r.rerun_of, []).append(r)
    out: list[tuple[RunRecord, int]] = []
    seen: set[str] = set()

    def emit(r: RunRecord, depth: int) -> None:
        if r.run_id in seen:
            return
        seen.add(r.run_id)
        out.append((r, depth))
        for c in children.get(r.run_id, []):
            emit(c, depth + 1)

    for r in recs:
        if not (r.rerun_of and r.rerun_of in present):
            emit(r, 0)
    for r in recs:  # a cycle cannot happen, but never lose a run
        emit(r, 0)
    return out
