"""Real virtual environments for the `--env recorded` tests, made with uv from the package index
(the test's own ground truth: each environment's Python is asked directly)."""

import json
import os
import platform
import subprocess
import sys

from helpers import git

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UV = os.path.join(os.path.dirname(sys.executable), "uv")
PY = platform.python_version()

WHERE = """\
import json, os, random, sys
import six
import runrec_cluster as rr

run = rr.current_run()
rng = random.Random(1234)
run.log_metrics({"loss": sum(rng.random() for _ in range(1000)) / 1000})
d = os.path.dirname(os.environ["RUNREC_STORE"])
with open(os.path.join(d, "where-" + os.environ["RUNREC_RUN_ID"] + ".json"), "w") as f:
    json.dump({"executable": sys.executable, "prefix": sys.prefix, "six": six.__version__}, f)
"""


def uv(*args: str) -> None:
    subprocess.run([UV, *args], check=True, capture_output=True, text=True, timeout=600)


def make_venv(path, *reqs: str) -> str:
    """A venv at ``path`` with this runrec (editable) and ``reqs``; returns its python."""
    uv("venv", "-q", "--python", PY, str(path))
    py = os.path.join(str(path), "bin", "python")
    uv("pip", "install", "-q", "--python", py, "-e", ROOT, *reqs)
    return py


def install(py: str, *reqs: str) -> None:
    uv("pip", "install", "-q", "--python", py, *reqs)


def dist_version(py: str, name: str) -> str:
    """What ``py`` itself says of ``name`` (importlib.metadata)."""
    return subprocess.run(
        [py, "-c", f"import importlib.metadata as m; print(m.version({name!r}))"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip


def project(path) -> str:
    """A git repository with where.py (a metric, and where its Python is, written by itself)."""
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "where.py"), "w") as f:
        f.write(WHERE)
    git(path, "init", "-q", "-b", "main")
    git(path, "add", ".")
    git(path, "commit", "-qm", "where")
    return str(path)


def runrec(py: str, *args: str, cwd, env=None, timeout=600) -> subprocess.CompletedProcess:
    """The real `runrec` of the venv of ``py`` (its bin first on PATH: the current environment)."""
    e = dict(os.environ, **(env or {}))
    e["PATH"] = os.path.dirname(py) + os.pathsep + e.get("PATH", "")
    return subprocess.run(
        [py, "-m", "runrec_cluster", *args], cwd=cwd, env=e, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def new_id(out: subprocess.CompletedProcess, word: str = "submitted rerun ") -> str:
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout.split(word)[1].split()[0]


def where(store_root: str, run_id: str) -> dict:
    with open(os.path.join(os.path.dirname(store_root), f"where-{run_id}.json")) as f:
        return json.load(f)
