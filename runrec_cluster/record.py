"""The run record: msgspec Structs, the run states, and how versions fold into a record.

A run is stored as a sequence of immutable *versions* (``RecordVersion``), each written by one
process (the submitter, the job, the backend, a reconcile) as its own file. A version carries a
*patch*: a mapping from top-level ``RunRecord`` field names to new values. ``fold`` applies the
patches in order to produce the ``RunRecord`` a reader sees. No version is ever rewritten, so
concurrent writers never lose each other's updates and the history stays readable.

Schema evolution (as in msgspec's guide): new fields get defaults, a field never changes type,
readers skip unknown fields. ``SCHEMA_VERSION`` counts changes; a record written by a newer
schema still decodes (unknown fields are ignored) and is shown with a warning.
"""

from __future__ import annotations

import enum
import signal
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec

from runrec_cluster.errors import CorruptRecord

SCHEMA_VERSION = 2  # 2: a launch version may name a shared context blob (CONTEXT_KEY)

# A launch version of a sweep's run names the blob holding what all the sweep's runs share
# (code, environment, inputs, resources); a reader merges it under the version's own patch.
CONTEXT_KEY = "context"


class Base(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Base of every persisted Struct."""


class RunState(str, enum.Enum):
    """Where a run is in its life. ``is_terminal()`` says whether it can still change.

    - SUBMITTED: the launch record exists; the job has not started (queued, pending).
    - RUNNING: the job started on a node and wrote its node facts.
    - SUCCEEDED: the job returned (function) or exited 0 (command).
    - FAILED: the job raised, exited non-zero, or was killed (see ``Failure.cause``).
    - CANCELLED: cancelled by a person or by the scheduler on request.
    - UNKNOWN: the backend reported a state we do not know; never guessed.
    """

    SUBMITTED = "submitted"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"

    def is_terminal(self) -> bool:
        return self in (RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED)


# the values of the terminal states, for state text read from a stored patch or an index column
TERMINAL_STATES = frozenset(s.value for s in RunState if s.is_terminal())


class FailureCause(str, enum.Enum):
    """Why a run did not succeed, from what was recorded (the job, the backend, the scheduler)."""

    CODE_ERROR = "code_error"  # the function raised
    EXIT_CODE = "exit_code"  # a command exited non-zero
    # a command's executable was not found on the node (not on PATH, or the path does not exist)
    EXECUTABLE_NOT_FOUND = "executable_not_found"
    KILLED = "killed"  # killed by a signal, or the process vanished (kill -9)
    OUT_OF_MEMORY = "out_of_memory"
    TIMEOUT = "timeout"
    NODE_FAILURE = "node_failure"
    PREEMPTED = "preempted"
    CANCELLED = "cancelled"
    WORKER_CRASHED = "worker_crashed"
    DATA_PROBLEM = "data_problem"
    # the node did not meet the hardware class's expectation and the class says on_mismatch =
    # "fail": the job ended the run before the user's code ran
    HARDWARE_MISMATCH = "hardware_mismatch"
    INFRASTRUCTURE = "infrastructure"
    UNKNOWN = "unknown"


# Who wrote a state. A terminal state written by a more direct witness wins over one inferred.
StateSource = Literal["job", "backend", "scheduler", "inferred", "submitter"]
SOURCE_AUTHORITY: dict[str, int] = {
    "job": 4,
    "backend": 3,
    "scheduler": 2,
    "inferred": 1,
    "submitter": 0,
}


# ---------------------------------------------------------------------------------------------
# Parts of the record
# ---------------------------------------------------------------------------------------------


class UntrackedFile(Base, frozen=True, kw_only=True):
    path: str
    size: int
    digest: str | None = None  # "sha256:<hex>"
    included: bool = False  # True when its content is part of the recorded patch
    reason: str | None = None  # why not included: "binary", "too large", "unreadable"


class Submodule(Base, frozen=True, kw_only=True):
    path: str
    commit: str


class CodeInfo(Base, frozen=True, kw_only=True):
    """Where the code came from. ``is_repo=False`` when the working directory is no git repo."""

    is_repo: bool
    root: str | None = None
    remote_url: str | None = None  # credentials stripped
    branch: str | None = None  # None on a detached HEAD
    detached: bool = False
    commit: str | None = None  # None in a repository with no commit yet
    dirty: bool = False
    untracked: list[UntrackedFile] = []
    patch_blob: str | None = None  # blob digest of `git diff HEAD --binary` + untracked text files
    patch_size: int = 0
    submodules: list[Submodule] = []
    error: str | None = None  # why something could not be captured (never a crash)


class Entrypoint(Base, frozen=True, kw_only=True):
    kind: Literal["function", "command"]
    function: str | None = None  # "module:qualname"
    argv: list[str] = []
    cwd: str = ""
    call_blob: str | None = None  # pickled (fn, args, kwargs); only the job and rerun unpickle it
    # argument paths ("dsn", "conn.password") whose values the redaction rules flag: the call
    # blob holds placeholders there (a command: the items "argv[i]" that argv shows redacted,
    # withheld whole, in argv order), the values wait in an owner-only file in secrets_dir
    # (outside the store) until the job reads and removes it (capture/withhold.py)
    withheld: list[str] = []
    secrets_dir: str | None = None
    # a command run: the job records the parsed argparse options of a Python command
    # (job/argparse_capture.py); False: --no-capture-args / RUNREC_CAPTURE_ARGPARSE=0 at submit
    capture_args: bool = True


class ConfigEntry(Base, frozen=True, kw_only=True):
    value: Any
    # "default" | "given" | "generated" | "file:<path>" | "env:<NAME>" | "argv" (see
    # capture/config_sources.py; a str, so records holding only the first three still read)
    source: str


class InputRef(Base, frozen=True, kw_only=True):
    """A dataset or an artifact consumed by the run."""

    kind: Literal["dataset", "artifact"] = "dataset"
    path: str = ""
    # "blake3:<hex>" of a file, "blake3-tree:<hex>" of a directory's manifest (older records:
    # sha256: / sha256-tree:; the prefix names the algorithm)
    digest: str = ""
    size: int = 0
    file_count: int = 1
    is_dir: bool = False
    version: str | None = None  # the user's own label
    manifest_blob: str | None = None  # for a directory: the (relpath, size, digest) list
    added_by: Literal["submit", "job"] = "submit"
    role: str = ""  # "config": a config file (rr.ConfigFile, runrec submit --config); "": data
    # kind "artifact": what produced it (rr.Artifact("RUN:name") or rr.Artifact("NAME@vN"))
    run_id: str | None = None  # the producing run
    artifact: str | None = None  # the artifact's name in that run
    promoted: str | None = None  # "NAME@vN" when consumed from a promoted version


class ArtifactRef(Base, frozen=True, kw_only=True):
    name: str
    path: str
    digest: str
    size: int
    file_count: int = 1
    is_dir: bool = False
    logged_at: datetime | None = None
    # the kept copy (written by ``log_artifact``, job/artifacts.py; docs/store-layout.md): its
    # place relative to the store, ``artifacts/objects/<algo>/<aa>/<hex>`` (a file) or
    # ``artifacts/trees/<algo>-tree/<aa>/<hex>`` (a directory); None: not kept (``not_kept``)
    kept: str | None = None
    kept_how: str = ""  # "reflink" | "copy" | "existing" (kept already); a directory: "+"-joined
    manifest_blob: str | None = None  # a kept directory: msgpack [(relpath, size, digest)]
    not_kept: str | None = None  # why no copy was kept (over keep_artifacts_max_mb, disabled, ...)


class Interpreter(Base, frozen=True, kw_only=True):
    """The program that ran the user's code, as resolved on one host (capture/interpreter.py).

    Written in the launch record (EnvInfo.interpreter, the submitting host) and by the job
    (NodeInfo.interpreter, the node) so drift compares the same command's interpreter on both.
    """

    argv0: str = ""  # what the command named ("python3", "./train.py"); "" for a function run
    path: str | None = None  # the resolved executable on that host; None: not found
    via: str = ""  # "function" | "PATH" | "path" (argv0 has a slash) | "shebang" | "python -m"
    python_executable: str | None = None  # sys.executable as that interpreter reports it
    python_version: str | None = None  # platform.python_version() of that interpreter
    packages_blob: str | None = None  # msgpack {name: version} of that interpreter's environment
    package_count: int = 0
    unknown: str | None = None  # why a fact above is missing ("not a Python interpreter: ...")


class EnvInfo(Base, frozen=True, kw_only=True):
    python_version: str
    python_executable: str
    platform: str
    hostname: str = ""
    packages_blob: str | None = None  # msgpack {name: version}, content-addressed
    package_count: int = 0
    env_vars: dict[str, str] = {}  # selected, secrets redacted
    interpreter: Interpreter | None = None  # the user code's interpreter on the submitting host


class Resources(Base, frozen=True, kw_only=True):
    timeout_min: float | None = None
    cpus: int | None = None
    mem_gb: float | None = None
    gpus: int | None = None
    nodes: int | None = None


class Allocation(Base, frozen=True, kw_only=True):
    """What the scheduler actually allocated to the job (Slurm: its AllocTRES), next to what
    was requested (``Resources``). Written by the Slurm backend: the batch script's end trap
    (``backends/slurm_end.py``) and the scheduler's verdict; a field it did not say is None."""

    cpus: int | None = None
    mem_mb: int | None = None
    gpus: int | None = None
    nodes: int | None = None
    nodelist: str = ""
    tres: str = ""  # the scheduler's own words ("cpu=2,mem=512M,node=1,billing=2")
    source: str = ""  # who said it: "sacct" | "scontrol" | "pyslurm"


class Execution(Base, frozen=True, kw_only=True):
    backend: str = ""
    resources: Resources = msgspec.field(default_factory=Resources)
    options: dict[str, Any] = {}  # backend-only options as given (slurm_*, ray_*, local_*)
    hardware: str | None = None  # requested hardware class
    hardware_expect: dict[str, Any] = {}  # the class's `expect`, checked by the job on its node
    hardware_match: bool | None = None  # the node matched the class's expectation
    hardware_mismatches: list[str] = []
    # the class's on_mismatch ("fail" | "flag"; None: a record from before it existed = flag)
    hardware_on_mismatch: str | None = None
    # what the class asked this backend's scheduler for ({"constraint": "hwclass-x"}, Ray
    # resources); the job's words on where the scheduler put a run whose class has no `expect`
    hardware_request: dict[str, Any] = {}
    hardware_placement: str | None = None
    scheduler: dict[str, Any] = {}  # job ids, array ids, node ids, pids: filled by the backend
    log_dir: str | None = None
    allocated: Allocation | None = None  # what the scheduler allocated (Slurm); None: not known


class GPUInfo(Base, frozen=True, kw_only=True):
    index: int
    name: str
    uuid: str
    memory_total_mb: int | None = None
    compute_capability: str | None = None
    mig_mode: str | None = None
    pci_bus_id: str | None = None


class LibSampling(Base, frozen=True, kw_only=True):
    """How RuntimeLibs.loaded_libraries was gathered (written by the job, capture/maps.py)."""

    method: str = ""  # "/proc/PID/maps of the command's process tree", "/proc/self/maps (finally)"
    times: list[datetime] = []  # when each sample was taken (UTC)
    pids: list[int] = []  # every pid whose maps were read
    unknown: str | None = None  # why nothing could be sampled
    # why the set may be incomplete although samples were read: the command ended after its
    # last sample, or this is a snapshot taken while the run went on (None: nothing missed)
    gap: str | None = None


class RuntimeLibs(Base, frozen=True, kw_only=True):
    """CUDA-side libraries as actually loaded in the job process."""

    cuda_runtime: str | None = None
    cudnn: str | None = None
    nccl: str | None = None
    frameworks: dict[str, str] = {}  # torch / jax / cupy version, when imported
    sources: dict[str, str] = {}  # where each value came from ("torch", "/proc/self/maps: ...")
    loaded_libraries: list[str] = []
    sampling: LibSampling | None = None  # how and when the libraries above were seen


class Determinism(Base, frozen=True, kw_only=True):
    """What decides whether the user's code repeats bit for bit, as the job saw it when the
    user's code ended (capture/determinism.py). Nothing is guessed: what cannot be known is in
    ``unknown`` with the reason, and no library is ever imported to ask it."""

    env: dict[str, str | None] = {}  # every watched variable: its value; None: unset
    env_source: str = ""  # whose environment ("the job process", "the command's environment")
    settings: dict[str, Any] = {}  # "torch.backends.cudnn.deterministic": true, ...
    unknown: dict[str, str] = {}  # a library or a setting -> why it is not known
    captured_at: datetime | None = None


class NodeInfo(Base, frozen=True, kw_only=True):
    hostname: str
    rank: int = 0
    os: str = ""
    kernel: str = ""
    cpu_model: str = ""
    cpu_count: int = 0
    cpus_allowed: int = 0
    memory_total_mb: int = 0
    gpu_status: str = ""  # "ok", "no NVIDIA driver (...)", "no GPU"
    gpus: list[GPUInfo] = []
    nvidia_driver: str | None = None
    cuda_driver: str | None = None
    cuda_visible_devices: str | None = None
    runtime: RuntimeLibs | None = None
    python_executable: str = ""
    python_version: str = ""
    packages_blob: str | None = None
    package_drift: dict[str, list[str | None]] = {}  # name -> [launch version, node version]
    env_vars: dict[str, str] = {}
    features: list[str] = []  # scheduler node features (slurm), custom resources (ray)
    scheduler_node: str = ""  # the scheduler's name for the node (Slurm node, Ray node id)
    captured_at: datetime | None = None
    # The user code's interpreter resolved on the node (for a command run python_executable,
    # python_version, packages_blob and package_drift above describe it, not runrec's job).
    interpreter: Interpreter | None = None
    job_python: str = ""  # the runrec job process's own sys.executable, always
    # determinism settings at the end of the user's code (the end version writes it; None in
    # records from before it existed, and while the run goes on)
    determinism: Determinism | None = None


class Failure(Base, frozen=True, kw_only=True):
    cause: FailureCause
    type: str = ""  # exception class, or the scheduler state
    message: str = ""
    traceback: str = ""
    exit_code: int | None = None
    signal: int | None = None
    by: str | None = None  # who cancelled, when known
    source: str = "job"
    # a scheduler's verdict: what it was read through ("sacct", "scontrol" from inside the job,
    # "pyslurm"); "" for a failure the job or the backend recorded
    via: str = ""


class Annotation(Base, frozen=True, kw_only=True):
    """What a person concluded about a run (``runrec annotate``), appended as a new version."""

    id: str  # layout.new_id(): unique
    verdict: Literal["negative", "positive", "inconclusive"]
    blocks: Literal["run", "future-work"] | None = None  # what the verdict rules out
    note: str = ""
    by: str = ""
    at: datetime | None = None


class Difference(Base, frozen=True, kw_only=True):
    """One difference a rerun declared on purpose (``runrec diff`` labels it *intended*).

    ``what`` uses the keys ``runrec diff`` prints: ``hardware``, ``backend``, ``config.<key>``,
    ``options.<key>``, ``inputs.<path>``, ``entrypoint.argv``, ``entrypoint.cwd``.
    """

    what: str
    before: Any = None
    after: Any = None
    note: str = ""


class RerunEnv(Base, frozen=True, kw_only=True):
    """The environment a rerun's job ran in (``runrec rerun --env``), written by the rerun.

    ``mode`` "recorded": a virtual environment with the original's distributions and Python
    version, built with uv (or reused from the cache: ``built`` False) under ``dir``; the job's
    interpreter is ``python`` and its ``bin`` is first on the job's PATH. "current": the rerun
    runs in today's environment, declared with ``--env current``."""

    mode: Literal["recorded", "current"] = "current"
    key: str | None = None  # sha256 hex of the package set: Python version + name==version lines
    dir: str | None = None  # the recreated environment (mode "recorded")
    python: str | None = None  # its interpreter: the job's, and a command's `python`
    python_version: str | None = None
    packages_blob: str | None = None  # msgpack {name: version} as the environment's Python lists it
    source: str = ""  # which recorded package list was recreated ("node rank 0", "launch")
    missing: dict[str, str] = {}  # recorded name -> version not installed (--allow-missing)
    provided: dict[str, str] = {}  # recorded name -> what provides it instead
    changed: dict[str, str] = {}  # --with name -> version (declared in ``intended`` too)
    index: str | None = None  # the package index (None: uv's default, PyPI)
    built: bool = False  # True: built for this rerun; False: reused from the cache
    build_s: float | None = None  # seconds to build (or to find) it


class MetricCheck(Base, frozen=True, kw_only=True):
    """One metric of a reproduction check: the original's value ``a``, the rerun's ``b``."""

    name: str
    a: Any = None
    b: Any = None
    verdict: Literal["bit-identical", "within-rtol", "different", "missing"] = "different"
    rel_diff: float | None = None  # |b - a| / |a| for numbers (None: not numbers, or a == 0)


class Reproduction(Base, frozen=True, kw_only=True):
    """The verdict of ``runrec rerun --check``: does this rerun reproduce ``of``? Written on the
    rerun by the checking process once the rerun ended (a later check replaces it)."""

    of: str  # the original run
    verdict: Literal["bit-identical", "within-rtol", "different", "failed"] = "different"
    rtol: float = 0.0
    metrics: list[MetricCheck] = []
    artifacts: Literal["identical", "different", "none"] = "none"
    artifact_changes: list[str] = []  # "name: digest a -> digest b" (or missing on one side)
    incidental: list[str] = []  # the incidental differences that could explain a difference
    intended: list[str] = []  # the rerun's declared changes ("what: before -> after"), env aside
    checked_at: datetime | None = None
    by: str = ""


class RerunInfo(Base, frozen=True, kw_only=True):
    """How a rerun was made (``runrec rerun``); the original is ``RunRecord.rerun_of``."""

    reason: str = ""
    intended: list[Difference] = []
    pinned: dict[str, Any] = {}  # generated config values given back by run.log_config
    code_from: Literal["checkout", "worktree", "directory", "unpinned"] = "checkout"
    code_dir: str | None = None  # where the code was materialized (worktree / directory)
    function_from: Literal["name", "pickle"] | None = None  # function runs: how fn was loaded
    by: str = ""
    env: RerunEnv | None = None  # --env recorded / --env current (None: not asked, today's)


class ResultRef(Base, frozen=True, kw_only=True):
    blob: str
    format: Literal["msgpack", "pickle"]
    type: str = ""
    summary: str = ""  # a short repr, for people


class Process(Base, frozen=True, kw_only=True):
    """A process identity that survives PID reuse: PID + start time + boot id + host."""

    host: str
    pid: int
    start_ticks: int
    boot_id: str


class RunRecord(Base, frozen=True, kw_only=True):
    """What a reader sees of a run: every version folded in order."""

    # the default is 1 forever: a v1 file omits it (omit_defaults), so an absent value means 1
    schema_version: int = 1
    run_id: str
    name: str = ""
    sweep_id: str | None = None
    sweep_index: int | None = None
    user: str = ""
    submit_host: str = ""
    tags: dict[str, str] = {}
    created_at: datetime | None = None
    code: CodeInfo | None = None
    entrypoint: Entrypoint | None = None
    config: dict[str, ConfigEntry] = {}
    inputs: list[InputRef] = []
    launch_env: EnvInfo | None = None
    execution: Execution | None = None
    nodes: list[NodeInfo] = []
    state: RunState = RunState.SUBMITTED
    state_source: str = "submitter"
    attempt: int = 1
    submitted_at: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    process: Process | None = None
    failure: Failure | None = None
    exit_code: int | None = None
    metrics: dict[str, Any] = {}
    artifacts: list[ArtifactRef] = []
    result: ResultRef | None = None
    warnings: list[str] = []
    annotations: list[Annotation] = []
    rerun_of: str | None = None  # the run this one reran (runrec rerun)
    rerun_root: str | None = None  # the first run of a chain of reruns
    rerun: RerunInfo | None = None
    reproduction: Reproduction | None = None  # runrec rerun --check: the verdict on this rerun

    @property
    def node(self) -> NodeInfo | None:
        """The rank-0 node (the only one for single-node runs)."""
        return self.nodes[0] if self.nodes else None

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None:
            return None
        end = self.ended_at
        if end is None:
            return None
        d = (end - self.started_at).total_seconds()
        return d if d >= 0 else None  # an end recorded by a host whose clock is behind: unknown


class Writer(Base, frozen=True, kw_only=True):
    host: str
    pid: int
    role: str  # "submitter", "job", "backend", "reconcile", "cli"


class RecordVersion(Base, frozen=True, kw_only=True):
    """One immutable update of one run, as stored in one file."""

    schema_version: int = 1  # 1 forever, as in RunRecord; writers set SCHEMA_VERSION
    run_id: str
    seq: int
    written_at: datetime
    writer: Writer
    event: str  # "launch", "dispatch", "start", "config", "metrics", "artifact", "end", ...
    patch: dict[str, Any]


# ---------------------------------------------------------------------------------------------
# Folding versions into a record
# ---------------------------------------------------------------------------------------------

# dict fields merge key by key (recursively for nested dicts)
_DICT_FIELDS = frozenset({"tags", "config", "metrics", "execution"})
# list fields append, later entries with the same key replace earlier ones
_LIST_KEYS: dict[str, tuple[str, ...]] = {
    "inputs": ("kind", "path", "digest"),
    "artifacts": ("name",),
    "nodes": ("rank", "hostname", "scheduler_node"),
    "warnings": (),
    "annotations": (),  # append-only: a verdict is never rewritten, a later one is added
}
_STATE_FIELDS = frozenset({"state", "state_source", "failure", "ended_at", "exit_code"})
_STATE_RANK = {"submitted": 0, "unknown": 0, "running": 1}


def _deep_merge(old: Any, new: Any) -> Any:
    if isinstance(old, dict) and isinstance(new, dict):
        out = dict(old)
        for k, v in new.items():
            out[k] = _deep_merge(out.get(k), v) if k in out else v
        return out
    return new


def merge_context(ctx: dict[str, Any], own: dict[str, Any]) -> dict[str, Any]:
    """A version's patch with its shared context underneath: the version's own values win,
    nested dicts (``execution``) merge key by key, and two lists of dicts of the same length
    (``nodes``: a node's facts shared, its capture time its own) merge item by item."""
    out = dict(ctx)
    for k, v in own.items():
        out[k] = _context_merge(out[k], v) if k in out else v
    return out


def _context_merge(old: Any, new: Any) -> Any:
    if isinstance(old, dict) and isinstance(new, dict):
        return merge_context(old, new)
    if (
        isinstance(old, list)
        and isinstance(new, list)
        and len(old) == len(new)
        and all(isinstance(x, dict) for x in old + new)
    ):
        return [merge_context(a, b) for a, b in zip(old, new, strict=True)]
    return new


def _merge_list(old: list[Any], new: list[Any], key: tuple[str, ...]) -> list[Any]:
    if not key:
        return old + [x for x in new if x not in old]
    out = list(old)
    index = {tuple(_get(x, k) for k in key): i for i, x in enumerate(out)}
    for item in new:
        k = tuple(_get(item, f) for f in key)
        if k in index:
            out[index[k]] = item
        else:
            index[k] = len(out)
            out.append(item)
    return out


def _get(x: Any, k: str) -> Any:
    return x.get(k) if isinstance(x, dict) else None


def _rank(state: str) -> int:
    return _STATE_RANK.get(state, 2)


def _state_wins(cur: dict[str, Any], patch: dict[str, Any]) -> bool:
    """Whether a patch's state replaces the current one.

    Attempts move forward only (a requeue starts a new attempt and resets the state). Within an
    attempt a state never moves backwards (running never undoes succeeded, whatever the clocks
    say); once terminal, a later terminal state wins only from a more direct witness (the job
    beats the backend beats the scheduler beats an inference).
    """
    new_attempt = patch.get("attempt", cur.get("attempt", 1))
    cur_attempt = cur.get("attempt", 1)
    if new_attempt > cur_attempt:
        return True
    if new_attempt < cur_attempt:
        return False
    old_state = cur.get("state", "submitted")
    new_state = patch["state"]
    old_rank, new_rank = _rank(old_state), _rank(new_state)
    if old_rank < 2:
        return new_rank >= old_rank
    if new_rank < 2:
        return False
    if _refines(cur.get("failure"), patch.get("failure")):
        return True
    if _refines(patch.get("failure"), cur.get("failure")):
        return False  # a bare kill never undoes the cause recorded for it (a cancel first)
    old_auth = SOURCE_AUTHORITY.get(cur.get("state_source", "submitter"), 0)
    new_auth = SOURCE_AUTHORITY.get(patch.get("state_source", "submitter"), 0)
    return new_auth > old_auth


# A process that saw its job die of a signal records KILLED without knowing why; the
# scheduler's specific cause (out of memory, timeout...) or a recorded cancel (the backend's
# "cancel" version) refines it, whoever wrote first: in either order the specific cause stands.
_SPECIFIC_CAUSES = frozenset({"out_of_memory", "timeout", "node_failure", "preempted", "cancelled"})


def _refines(old: Any, new: Any) -> bool:
    return (
        isinstance(old, dict)
        and isinstance(new, dict)
        and old.get("cause") == "killed"
        and new.get("cause") in _SPECIFIC_CAUSES
    )


def needs_verdict(rec: RunRecord) -> bool:
    """Not terminal, or ended KILLED without a cause: worth asking the backend about."""
    if not rec.state.is_terminal():
        return True
    f = rec.failure
    return f is not None and f.cause == FailureCause.KILLED and f.source != "scheduler"


def fold_patches(patches: list[dict[str, Any]]) -> dict[str, Any]:
    """Apply patches (already in order) to an empty record; returns plain builtins."""
    cur: dict[str, Any] = {}
    for patch in patches:
        if "state" in patch:
            if _state_wins(cur, patch):
                if patch.get("attempt", cur.get("attempt", 1)) > cur.get("attempt", 1):
                    for f in ("failure", "ended_at", "exit_code", "result", "started_at"):
                        cur.pop(f, None)
                for f in _STATE_FIELDS | {"attempt"}:
                    if f in patch:
                        cur[f] = patch[f]
        for field, value in patch.items():
            if field in _STATE_FIELDS or field == "attempt":
                continue
            if field in _DICT_FIELDS and isinstance(value, dict):
                cur[field] = _deep_merge(cur.get(field, {}), value)
            elif field in _LIST_KEYS and isinstance(value, list):
                cur[field] = _merge_list(cur.get(field, []), value, _LIST_KEYS[field])
            elif field == "started_at" and "started_at" in cur:
                continue  # the first start of the attempt stays
            else:
                cur[field] = value
    return cur


def fold(versions: list[RecordVersion]) -> RunRecord:
    """The record a reader sees: versions sorted by (seq, written_at, writer) and folded."""
    if not versions:
        raise ValueError("a run needs at least one version")
    try:
        ordered = sorted(versions, key=lambda v: (v.seq, v.written_at, v.writer.host, v.writer.pid))
        merged = fold_patches([v.patch for v in ordered])
        merged.setdefault("run_id", ordered[0].run_id)
        merged["schema_version"] = max(v.schema_version for v in ordered)
        return msgspec.convert(merged, RunRecord, strict=False)
    except (TypeError, ValueError, AttributeError, RecursionError) as exc:
        # a version that decodes but holds values of the wrong shape (msgspec's
        # ValidationError is a ValueError): the documented error, naming the run
        raise CorruptRecord(
            f"run {versions[0].run_id}: its versions do not fold into a record ({exc}); a "
            "record file holds values of the wrong type. Run `runrec fsck`."
        ) from exc


# values to_builtins returns as they are: skipped (a patch is built for every version written)
_AS_IS = frozenset({str, int, float, bool, datetime})


def to_patch(**fields: Any) -> dict[str, Any]:
    """Builtins for a patch: Structs and enums become plain msgpack-friendly values."""
    return {
        k: v if type(v) in _AS_IS else msgspec.to_builtins(v, builtin_types=(datetime,))
        for k, v in fields.items()
        if v is not None
    }


def end_patch(
    failure: Failure | None,
    *,
    source: str,
    state: RunState = RunState.FAILED,
    ended_at: datetime | None = None,
) -> dict[str, Any]:
    """The patch that ends a run: the state, who says so, why, and when."""
    return to_patch(
        state=state, state_source=source, failure=failure, ended_at=ended_at or datetime.now(UTC)
    )


def signal_failure(signum: int, what: str, *, source: str) -> Failure:
    """``what`` ("the command", "the job process") was killed by signal ``signum``."""
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = "unknown"
    return Failure(
        cause=FailureCause.KILLED,
        type="Signal",
        message=f"{what} was killed by signal {signum} ({name})",
        signal=signum,
        source=source,
    )


# ---------------------------------------------------------------------------------------------
# Lineage records: promotions and retirements (stored apart from runs, immutable)
# ---------------------------------------------------------------------------------------------

RetirementState = Literal["superseded", "invalidated", "withdrawn"]


class Promotion(Base, frozen=True, kw_only=True):
    """One promoted version, as stored in ``promoted/NAME/vN/promotion.msgpack.zst``."""

    name: str
    version: int
    run_id: str
    run_name: str = ""
    artifact: str  # the artifact's name in the run
    digest: str  # the content hash the run recorded, and the copy has
    size: int
    file_count: int = 1
    is_dir: bool = False
    source_path: str  # where the run wrote it
    files: str  # the copy, relative to the version directory ("files/model.pt")
    # the run's kept copy the promoted copy was made from (relative to the store), when the
    # file at source_path had changed or vanished; None: copied from source_path
    from_kept: str | None = None
    criteria: str | None = None
    values: dict[str, Any] = {}  # every metric the criteria named, as the run recorded it
    approved_by: str  # a person or a process; defaults to the promoting user
    promoted_by: str = ""
    host: str = ""
    promoted_at: datetime

    @property
    def ref(self) -> str:
        return f"{self.name}@v{self.version}"


class Retirement(Base, frozen=True, kw_only=True):
    """One retirement, as stored in ``retirements/<id>.msgpack.zst``."""

    id: str  # layout.new_id(): unique, sorts by time
    target: str  # the lineage node id: "run:<id>", "dataset:<digest>", "artifact:<run>:<name>",
    #               "promoted:<name>@v<n>"
    target_label: str = ""  # what a person recognizes (a path, a run's name)
    state: RetirementState
    reason: str
    superseded_by: str | None = None  # a node id
    by: str = ""
    host: str = ""
    at: datetime
    downstream: list[str] = []  # node ids downstream when it was retired (for the record;
    #                             suspicion is recomputed at read time)
