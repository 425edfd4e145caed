"""The fidelity matrix's machinery, shared by every cell: the test repository and its ground
truth (git itself), the fake CUDA libraries (``cc``), submitting one backend's eight cells at
once, driving them to their outcome, and ``check_cell``: every fact of one record against what
the test saw itself (git, the user process's own facts file, the interpreter run directly).

Nothing here reads runrec's own capture to build an expectation; runrec is used only to submit,
cancel and read the record under test."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fidelity_user
from helpers import git

import runrec_cluster as rr
from runrec_cluster.capture import proc
from runrec_cluster.capture.proc import current_user

ENTRIES = ("function", "command")
OUTCOMES = ("succeeded", "raised", "killed", "cancelled")
STORE_DIR = "runrec-store"  # the default layout: the store inside the repository
LR = 0.25  # given; epochs keeps its default (3)
WAIT_S = 300  # per wait on a cluster job; generous: the machine is shared
KILL_TIMEOUT_MIN = {"local": 0.5, "ray": 0.5, "slurm": 1}  # Slurm's shortest limit is 1 minute
RUN_TIMEOUT_MIN = 10
CANCEL_AFTER_S = 1.0  # a cancelled cell is cancelled this long after its user code wrote its facts

# what runrec's probe and the user script both ask an interpreter, run directly by the test
_PROBE = (
    "import sys, json, importlib.metadata as m\n"
    "def v(d):\n"
    "    try: return m.version(d)\n"
    "    except m.PackageNotFoundError: return None\n"
    "print(json.dumps({'executable': sys.executable, 'packages': {d: v(d) for d in ('msgspec', 'pip')}}))\n"
)

_LIB_C = "int {fn}(void) {{ return {ret}; }}\n"


def build_fake_libs(d: Path) -> Path:
    """``libcudart.so.12.4.127``, ``libcudnn.so.9``, ``libnccl.so.2``: real shared objects
    (one trivial function each), built with ``cc``."""
    d.mkdir(parents=True, exist_ok=True)
    for name, fn, ret in zip(
        fidelity_user.LIBS,
        ("cudaRuntimeGetVersion", "cudnnGetVersion", "ncclGetVersion"),
        (12040, 90000, 21900),
        strict=True,
    ):
        src = d / f"{fn}.c"
        src.write_text(_LIB_C.format(fn=fn, ret=ret))
        subprocess.run(["cc", "-shared", "-fPIC", "-o", str(d / name), str(src)], check=True)
    return d


# -- the repository and what git says about it ---------------------------------------------------


def make_repo(d: Path) -> Path:
    """A real repository: committed files, then a modified text file, a modified binary file, a
    deleted file and an untracked file; the store will live in ``d/runrec-store``."""
    d.mkdir(parents=True)
    git(d, "init", "-q", "-b", "main")
    Path(d, "train.py").write_text(Path(fidelity_user.__file__).read_text())
    Path(d, "model.py").write_text("LAYERS = 2\n")
    Path(d, "weights.bin").write_bytes(bytes(range(256)) * 8)
    Path(d, "old.txt").write_text("to be deleted\n")
    git(d, "add", ".")
    git(d, "commit", "-qm", "first")
    Path(d, "model.py").write_text("LAYERS = 4  # uncommitted\n")
    Path(d, "weights.bin").write_bytes(bytes(reversed(range(256))) * 8)
    Path(d, "old.txt").unlink()
    Path(d, "notes.txt").write_text("untracked notes\n")
    return d


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file of a working tree (``.git`` and the store left out): {relative path: bytes}."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        if rel == ".":
            dirnames[:] = [n for n in dirnames if n not in (".git", STORE_DIR)]
        for n in filenames:
            p = os.path.join(dirpath, n)
            out[os.path.relpath(p, root)] = Path(p).read_bytes()
    return out


@dataclass
class RepoTruth:
    commit: str
    porcelain: list[str]  # `git status --porcelain`, the store's lines removed
    untracked: list[str]
    files: dict[str, bytes]

    @property
    def dirty(self) -> bool:
        return bool(self.porcelain)


def repo_truth(repo: Path) -> RepoTruth:
    lines = git(repo, "status", "--porcelain", "--untracked-files=all").splitlines()
    lines = [ln for ln in lines if not ln[3:].startswith(STORE_DIR + "/") and ln[3:] != STORE_DIR]
    return RepoTruth(
        commit=git(repo, "rev-parse", "HEAD").strip(),
        porcelain=lines,
        untracked=sorted(ln[3:] for ln in lines if ln.startswith("?? ")),
        files=snapshot(repo),
    )


def probe_interpreter(exe: str) -> dict[str, Any]:
    """Run ``exe`` directly and ask it (the test's own ground truth for an interpreter)."""
    out = subprocess.run([exe, "-c", _PROBE], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


# -- one backend's cells --------------------------------------------------------------------------


@dataclass
class Cell:
    backend: str
    entry: str
    outcome: str
    handle: Any
    facts_path: Path
    marker: str
    config: dict[str, tuple[Any, str]]  # what the record's config must hold: key -> (value, source)
    facts: dict[str, Any] | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.backend, self.entry, self.outcome)


@dataclass
class Matrix:
    """One backend's eight cells, with the ground truth taken at submit time."""

    backend: str
    repo: Path
    store: Any
    truth: RepoTruth
    launch_python3: dict[str, Any] | None  # python3 on the submitting host's PATH, run directly
    submitter_python: dict[str, Any]
    cells: dict[tuple[str, str], Cell]
    seconds: float = 0.0


def submit_cells(backend: str, base: Path, libs: Path, options: dict[str, Any]) -> Matrix:
    """Submit the eight cells of ``backend`` (the slow ones first), without waiting."""
    t0 = time.monotonic()
    repo = make_repo(base / "repo")
    facts_dir = base / "facts"  # outside the repository: the tree stays as submitted
    facts_dir.mkdir()
    store = rr.Store(repo / STORE_DIR)
    truth = repo_truth(repo)
    python3 = shutil.which("python3")
    launch = probe_interpreter(python3) | {"path": python3} if python3 else None
    cells: dict[tuple[str, str], Cell] = {}
    for outcome in ("killed", "cancelled", "succeeded", "raised"):
        timeout = KILL_TIMEOUT_MIN[backend] if outcome == "killed" else RUN_TIMEOUT_MIN
        kw: dict[str, Any] = {"cpus": 1, "mem_gb": 0.5} if backend == "slurm" else {}
        ex = rr.Executor(
            backend=backend, store=store, cwd=repo, timeout_min=timeout, **kw, **options
        )
        for entry in ENTRIES:
            marker = f"FIDELITY-MARK-{backend}-{entry}-{outcome}-{uuid.uuid4().hex[:8]}"
            facts = facts_dir / f"{entry}-{outcome}.json"
            if entry == "function":
                h = ex.submit(fidelity_user.cell, str(facts), outcome, marker, str(libs), lr=LR)
                config = {
                    "facts_path": (str(facts), "given"),
                    "outcome": (outcome, "given"),
                    "marker": (marker, "given"),
                    "libs_dir": (str(libs), "given"),
                    "lr": (LR, "given"),
                    "epochs": (3, "default"),
                }
                cells[entry, outcome] = Cell(backend, entry, outcome, h, facts, marker, config)
            else:
                argv = ["python3", "train.py", "--facts", str(facts), "--outcome", outcome]
                argv += ["--marker", marker, "--libs", str(libs), "--lr", str(LR)]
                h = ex.submit_command(argv)
                # the script's argparse options, read in the job (capture/config_sources.py):
                # "argv" for those on its command line, "default" for argparse's defaults
                config = {
                    "facts": (str(facts), "argv"),
                    "outcome": (outcome, "argv"),
                    "marker": (marker, "argv"),
                    "libs": (str(libs), "argv"),
                    "lr": (LR, "argv"),
                    "epochs": (3, "default"),
                }
                cells[entry, outcome] = Cell(backend, entry, outcome, h, facts, marker, config)
    after = repo_truth(repo)
    assert (after.porcelain, after.files) == (truth.porcelain, truth.files), (
        "the repository changed while the cells were submitted"
    )
    return Matrix(
        backend,
        repo,
        store,
        truth,
        launch,
        probe_interpreter(sys.executable),
        cells,
        time.monotonic() - t0,
    )


def _wait_for(what: str, fn: Any, timeout: float = WAIT_S, every: float = 0.3) -> Any:
    end = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() >= end:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


def _read_facts(cell: Cell) -> dict[str, Any] | None:
    try:
        return json.loads(cell.facts_path.read_text())
    except (OSError, ValueError):
        return None


def _slurm_gone(rec: Any) -> bool:
    jid = (rec.execution.scheduler if rec.execution else {}).get("job_id")
    if not jid:
        return True
    out = subprocess.run(["squeue", "-h", "-j", str(jid)], capture_output=True, text=True)
    return out.stdout.strip() == ""


def drive(m: Matrix) -> None:
    """Bring every cell to its outcome: the cancelled cells are cancelled once their user code
    wrote its facts; then every run ends, its job process (and Slurm job) is gone, and nothing
    more is written (the record read afterwards is final)."""
    t0 = time.monotonic()
    for c in m.cells.values():
        c.facts = _wait_for(
            f"the user code of {c.key} to write its facts", lambda c=c: _read_facts(c)
        )
        if c.outcome == "cancelled":
            # a cancel comes a while after the code started, as a person's would: within tens
            # of ms of its facts, ray.cancel(force=True) kills the job before its recorders'
            # next tick (argparse options every 0.2 s, library samples), and the record can
            # only say "not recorded yet"
            time.sleep(CANCEL_AFTER_S)
            c.handle.cancel()
    for c in m.cells.values():
        rec = c.handle.wait(timeout=WAIT_S)
        # a Ray job runs in a worker that lives on after a task that ended by itself
        reused = m.backend == "ray" and c.outcome in ("succeeded", "raised")
        if rec.process is not None and not reused:
            _wait_for(f"the job of {c.key} to end", lambda r=rec: proc.is_alive(r.process) is False)
        if m.backend == "slurm":
            _wait_for(f"the Slurm job of {c.key} to leave the queue", lambda r=rec: _slurm_gone(r))
    time.sleep(3)  # a job's or a backend's last write, if any, is in by now
    m.seconds += time.monotonic() - t0


# -- the checks -----------------------------------------------------------------------------------


@dataclass
class Expected:
    """What one cell's record must say; ``unknown`` lists the facts this cell truly cannot hold,
    each with the reason the record must give ({fact: regex})."""

    cell: Cell
    truth: RepoTruth
    launch_python3: dict[str, Any] | None
    submitter_python: dict[str, Any]
    unknown: dict[str, str] = field(default_factory=dict)


LIB_VERSIONS = {"cuda_runtime": "12.4.127", "cudnn": "9", "nccl": "2"}


def check_cell(store: Any, handle: Any, facts: dict[str, Any], exp: Expected) -> dict[str, str]:
    """Every fact of one cell's record against the ground truth: {fact: "ok" or what is wrong}.
    The caller asserts that none is wrong (all of them are reported at once)."""
    rec = store.load(handle.run_id)
    found: dict[str, str] = {}
    for name, check in (
        ("code", _check_code),
        ("process", _check_process),
        ("interpreter", _check_interpreter),
        ("libs", _check_libs),
        ("state", _check_state),
        ("config", _check_config),
        ("failure_text", _check_failure_text),
    ):
        try:
            problems = check(store, rec, facts, exp)
        except Exception as exc:  # a missing part of the record is a finding, not a crash
            problems = [f"{type(exc).__name__}: {exc}"]
        found[name] = "ok" if not problems else "; ".join(problems)
    return found


def _differ(what: str, recorded: Any, truth: Any) -> list[str]:
    return [] if recorded == truth else [f"{what}: recorded {recorded!r}, ground truth {truth!r}"]


def _check_code(store: Any, rec: Any, facts: dict[str, Any], exp: Expected) -> list[str]:
    t, code = exp.truth, rec.code
    bad = _differ("code.is_repo", code.is_repo, True)
    bad += _differ("code.commit", code.commit, t.commit)
    bad += _differ("code.dirty", code.dirty, t.dirty)
    bad += _differ("code.untracked", sorted(u.path for u in code.untracked), t.untracked)
    patch = store.get_blob(code.patch_blob) if code.patch_blob else b""
    if STORE_DIR.encode() in patch:
        bad.append(f"the patch names the store ({STORE_DIR})")
    clone = Path(store.root).parent.parent / f"clone-{uuid.uuid4().hex[:8]}"
    try:
        git(clone.parent, "clone", "-q", str(Path(store.root).parent), str(clone))
        git(clone, "checkout", "-q", "--detach", t.commit)
        if patch:
            (clone.parent / f"{clone.name}.diff").write_bytes(patch)
            git(clone, "apply", "--binary", str(clone.parent / f"{clone.name}.diff"))
        got = snapshot(clone)
        if got != t.files:
            diff = sorted(k for k in set(got) | set(t.files) if got.get(k) != t.files.get(k))
            bad.append(f"the patch applied at {t.commit[:10]} does not reproduce {diff}")
    finally:
        shutil.rmtree(clone, ignore_errors=True)
    return bad


def _packages(store: Any, blob: str | None) -> dict[str, str]:
    return store.get_obj(blob, dict[str, str]) if blob else {}


def _check_process(store: Any, rec: Any, facts: dict[str, Any], exp: Expected) -> list[str]:
    """The process that ran the user's code: interpreter, version, packages, host, CPUs."""
    node = rec.nodes[0]
    bad = _differ("node.python_executable", node.python_executable, facts["executable"])
    bad += _differ("node.python_version", node.python_version, facts["python_version"])
    pkgs = _packages(store, node.packages_blob)
    for dist, version in facts["packages"].items():
        bad += _differ(f"node packages[{dist}]", pkgs.get(dist), version)
    bad += _differ("node.hostname", node.hostname, facts["hostname"])
    bad += _differ("node.cpu_count", node.cpu_count, facts["cpu_count"])
    bad += _differ("node.cpus_allowed", node.cpus_allowed, facts["cpus_allowed"])
    # drift compares like with like: the same interpreter at launch and on the node
    launch = exp.launch_python3 if exp.cell.entry == "command" else exp.submitter_python
    if launch is not None:
        for dist, version in facts["packages"].items():
            want = (
                None if launch["packages"][dist] == version else [launch["packages"][dist], version]
            )
            bad += _differ(f"node.package_drift[{dist}]", node.package_drift.get(dist), want)
    return bad


def _check_interpreter(store: Any, rec: Any, facts: dict[str, Any], exp: Expected) -> list[str]:
    """How the user code's interpreter was resolved, at launch and on the node."""
    node, env = rec.nodes[0], rec.launch_env
    if exp.cell.entry == "function":
        bad = _differ("node.job_python", node.job_python, facts["executable"])
        li = env.interpreter
        if li is None:
            return [*bad, "launch_env.interpreter: not recorded"]
        bad += _differ("launch_env.interpreter.via", li.via, "function")
        bad += _differ(
            "launch_env.interpreter.python_executable",
            li.python_executable,
            exp.submitter_python["executable"],
        )
        if node.interpreter is not None:
            bad += _differ("node.interpreter.via", node.interpreter.via, "function")
            bad += _differ(
                "node.interpreter.python_executable",
                node.interpreter.python_executable,
                facts["executable"],
            )
        return bad
    # a command: `python3` resolved through PATH on both hosts
    bad = []
    if facts["parent_exe"] is not None:  # the job process is the command's parent
        bad += _differ(
            "node.job_python (resolved)", os.path.realpath(node.job_python), facts["parent_exe"]
        )
    ni = node.interpreter
    if ni is None:
        bad.append("node.interpreter: not recorded")
    else:
        bad += _differ("node.interpreter.argv0", ni.argv0, "python3")
        bad += _differ("node.interpreter.via", ni.via, "PATH")
        bad += _differ("node.interpreter.path", ni.path, facts["python3_on_path"])
        bad += _differ(
            "node.interpreter.python_executable", ni.python_executable, facts["executable"]
        )
        bad += _differ(
            "node.interpreter.python_version", ni.python_version, facts["python_version"]
        )
        pkgs = _packages(store, ni.packages_blob)
        for dist, version in facts["packages"].items():
            bad += _differ(f"node.interpreter packages[{dist}]", pkgs.get(dist), version)
    li, lp = env.interpreter, exp.launch_python3
    if li is None:
        bad.append("launch_env.interpreter: not recorded")
    elif lp is not None:
        bad += _differ("launch_env.interpreter.path", li.path, lp["path"])
        bad += _differ("launch_env.interpreter.via", li.via, "PATH")
        bad += _differ(
            "launch_env.interpreter.python_executable", li.python_executable, lp["executable"]
        )
        pkgs = _packages(store, li.packages_blob)
        for dist, version in lp["packages"].items():
            bad += _differ(f"launch_env.interpreter packages[{dist}]", pkgs.get(dist), version)
    return bad


def _check_libs(store: Any, rec: Any, facts: dict[str, Any], exp: Expected) -> list[str]:
    """CUDA runtime, cuDNN, NCCL as the user process loaded them (its own maps)."""
    rt = rec.nodes[0].runtime
    if "libs" in exp.unknown:  # this cell cannot hold them: empty, and the reason said
        bad = []
        if rt is not None:
            for k in LIB_VERSIONS:
                bad += _differ(f"runtime.{k}", getattr(rt, k), None)
            bad += _differ(
                "runtime.loaded_libraries",
                [p for p in rt.loaded_libraries if p in facts["maps"]],
                [],
            )
        why = rt.sampling.unknown if rt is not None and rt.sampling is not None else None
        if not why or not re.search(exp.unknown["libs"], why):
            bad.append(
                f"runtime.sampling.unknown: recorded {why!r}, expected /{exp.unknown['libs']}/"
            )
        return bad
    if rt is None:
        return ["runtime: not recorded"]
    bad = []
    for k, v in LIB_VERSIONS.items():
        bad += _differ(f"runtime.{k}", getattr(rt, k), v)
    missing = sorted(set(facts["maps"]) - set(rt.loaded_libraries))
    if len(facts["maps"]) != len(fidelity_user.LIBS):
        bad.append(f"the user process mapped only {facts['maps']}")
    if missing:
        bad.append(f"runtime.loaded_libraries lacks {missing} (has {rt.loaded_libraries})")
    s = rt.sampling
    if s is None:
        bad.append("runtime.sampling: not recorded")
    else:
        if not s.times:
            bad.append("runtime.sampling.times: empty")
        if facts["pid"] not in s.pids:
            bad.append(f"runtime.sampling.pids {s.pids} lacks the user process {facts['pid']}")
        bad += _differ("runtime.sampling.unknown", s.unknown, None)
    return bad


def _check_state(store: Any, rec: Any, facts: dict[str, Any], exp: Expected) -> list[str]:
    c, f = exp.cell, rec.failure
    cause = f.cause.value if f is not None else None
    want: tuple[rr.RunState, str | None] = {
        "succeeded": (rr.RunState.SUCCEEDED, None),
        "raised": (rr.RunState.FAILED, "code_error" if c.entry == "function" else "exit_code"),
        "killed": (rr.RunState.FAILED, "timeout"),
        "cancelled": (rr.RunState.CANCELLED, "cancelled"),
    }[c.outcome]
    bad = _differ("(state, failure.cause)", (rec.state, cause), want)
    if rec.ended_at is None or rec.started_at is None:
        bad.append(f"started_at {rec.started_at} / ended_at {rec.ended_at} missing")
    if c.entry == "function":
        bad += _differ("exit_code", rec.exit_code, None)
        if c.outcome == "succeeded":
            value = c.handle.result(timeout=10)
            bad += _differ("result", value, {"lr": LR, "epochs": 3, "marker": c.marker})
    else:
        killed_codes = (None, -signal.SIGTERM, -signal.SIGKILL)  # the script traps no signal
        if c.outcome == "succeeded":
            bad += _differ("exit_code", rec.exit_code, 0)
        elif c.outcome == "raised":
            bad += _differ("exit_code", rec.exit_code, fidelity_user.EXIT_RAISED)
            bad += _differ(
                "failure.exit_code", f.exit_code if f else None, fidelity_user.EXIT_RAISED
            )
        elif rec.exit_code not in killed_codes:
            bad.append(f"exit_code {rec.exit_code} is not one of a signalled script {killed_codes}")
    if c.outcome == "cancelled" and f is not None:
        bad += _differ("failure.by", f.by, current_user())
    return bad


def _check_config(store: Any, rec: Any, facts: dict[str, Any], exp: Expected) -> list[str]:
    got = {k: (e.value, e.source) for k, e in rec.config.items()}
    return _differ("config", got, exp.cell.config)


def _check_failure_text(store: Any, rec: Any, facts: dict[str, Any], exp: Expected) -> list[str]:
    c, f = exp.cell, rec.failure
    if c.outcome != "raised":
        return []
    if f is None:
        return ["failure: not recorded"]
    if c.entry == "command":
        if c.marker not in f.message:
            return [f"failure.message lacks the stderr line {c.marker!r}: {f.message!r}"]
        return []
    bad = _differ("failure.type", f.type, "ValueError") + _differ(
        "failure.message", f.message, c.marker
    )
    if "ValueError" not in f.traceback or c.marker not in f.traceback:
        bad.append(
            f"failure.traceback does not name ValueError({c.marker!r}): {f.traceback[-300:]!r}"
        )
    return bad
