"""Determinism facts: what decides whether a run repeats bit for bit, as the job sees it when
the user's code ends (``job/libs.py`` puts them in the end version, ``NodeInfo.determinism``).

- **Variables, always**: every name in ``ENV_VARS``, its value or None (unset), from the
  environment the user's code ran with: the job process's own for a function run (read at the
  end: a value the function set in ``os.environ`` is seen), the environment the command was
  started with for a command run (what the command does to its own environment afterwards is
  not visible).
- **Library settings, only when the library is loaded** in the process that ran the user's
  code (``sys.modules``; runrec never imports a library to ask it): torch's cuDNN flags,
  deterministic algorithms, TF32 and thread counts; the BLAS/OpenMP thread pools threadpoolctl
  sees, when the user's code imported it (scikit-learn does); Python's own hash randomization.
  A library that is not loaded is ``unknown`` with the reason, never guessed.
- **A command run**: the command is another process; its loaded libraries and their settings
  cannot be read from the job, so every library setting is ``unknown`` and says so (log them
  from the script with ``rr.current_run().log_config``).
- Seeds: only what the user recorded (``log_config``); runrec does not read random states.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from runrec_cluster.record import Determinism

ENV_VARS = (
    "PYTHONHASHSEED",
    "CUBLAS_WORKSPACE_CONFIG",
    "CUDA_LAUNCH_BLOCKING",
    "NVIDIA_TF32_OVERRIDE",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "MKL_CBWR",
    "TF_DETERMINISTIC_OPS",
    "TF_CUDNN_DETERMINISTIC",
    "TF_ENABLE_ONEDNN_OPTS",
    "XLA_FLAGS",
)
LIBRARIES = ("torch", "threadpoolctl", "python")
NOT_LOADED = "{lib} not loaded in the process that ran the user's code (runrec never imports it)"
COMMAND = (
    "a command run: its settings live in the command's own process, which the job cannot read "
    "(record them from the script with rr.current_run().log_config)"
)
JOB_ENV = "the job process (the function's)"
COMMAND_ENV = "the command's environment as it was started"


def capture(
    environ: Mapping[str, str],
    *,
    command: bool,
    modules: Mapping[str, Any] | None = None,
    flags: Any = None,
) -> Determinism:
    """The determinism facts of a run: ``environ`` is the environment the user's code ran
    with; ``command``: it ran in a command's process (library settings unknown); else
    ``modules`` (default ``sys.modules``) and ``flags`` (default ``sys.flags``) are this
    process's, which ran the function."""
    env = {k: environ.get(k) for k in ENV_VARS}
    settings: dict[str, Any] = {}
    unknown: dict[str, str] = {}
    if command:
        unknown = dict.fromkeys(LIBRARIES, COMMAND)
    else:
        mods = sys.modules if modules is None else modules
        fl = sys.flags if flags is None else flags
        settings["python.hash_randomization"] = bool(getattr(fl, "hash_randomization", 1))
        _torch(mods.get("torch"), settings, unknown)
        _threadpools(mods.get("threadpoolctl"), settings, unknown)
    return Determinism(
        env=env,
        env_source=COMMAND_ENV if command else JOB_ENV,
        settings=settings,
        unknown=unknown,
        captured_at=datetime.now(UTC),
    )


_TORCH = (  # (key, how to read it from the torch module)
    ("torch.backends.cudnn.deterministic", lambda t: t.backends.cudnn.deterministic),
    ("torch.backends.cudnn.benchmark", lambda t: t.backends.cudnn.benchmark),
    ("torch.backends.cudnn.allow_tf32", lambda t: t.backends.cudnn.allow_tf32),
    ("torch.backends.cuda.matmul.allow_tf32", lambda t: t.backends.cuda.matmul.allow_tf32),
    ("torch.deterministic_algorithms", lambda t: t.are_deterministic_algorithms_enabled()),
    (
        "torch.deterministic_algorithms_warn_only",
        lambda t: t.is_deterministic_algorithms_warn_only_enabled(),
    ),
    ("torch.num_threads", lambda t: t.get_num_threads()),
    ("torch.num_interop_threads", lambda t: t.get_num_interop_threads()),
)


def _torch(torch: Any, settings: dict[str, Any], unknown: dict[str, str]) -> None:
    if torch is None:
        unknown["torch"] = NOT_LOADED.format(lib="torch")
        return
    for key, read in _TORCH:
        try:
            value = read(torch)
        except Exception as exc:  # an old torch without it, a partly imported module
            unknown[key] = f"reading it failed: {type(exc).__name__}: {exc}"
            continue
        settings[key] = _plain(value)


def _threadpools(tpc: Any, settings: dict[str, Any], unknown: dict[str, str]) -> None:
    """The thread pools threadpoolctl sees (BLAS, OpenMP), when the user's code imported it:
    it reads the libraries already loaded, loading none."""
    if tpc is None:
        unknown["threadpoolctl"] = NOT_LOADED.format(lib="threadpoolctl") + (
            "; BLAS/OpenMP thread counts are known from the variables only"
        )
        return
    try:
        pools = tpc.threadpool_info()
    except Exception as exc:
        unknown["threadpoolctl"] = f"threadpool_info() failed: {type(exc).__name__}: {exc}"
        return
    for p in pools:
        api = p.get("internal_api") or p.get("user_api") or "?"
        lib = str(p.get("filepath", "")).rsplit("/", 1)[-1] or api
        settings[f"threads.{api}.{lib}"] = _plain(p.get("num_threads"))


def _plain(v: Any) -> Any:
    """A value msgpack keeps as it is: bool, int, float, str (else its str)."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return str(v)
