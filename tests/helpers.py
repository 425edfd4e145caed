"""Helpers shared by the tests (import as `from helpers import ...`)."""

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request


def wait_for(what: str, fn, timeout: float = 60, every: float = 0.2):
    """``fn()``'s first truthy value, polled every ``every`` s; AssertionError naming ``what``
    after ``timeout`` s."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = fn()
        if v:
            return v
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def build_fake_libs(d, names) -> None:
    """Real shared objects named ``names`` (``libcudart.so.12.4.127``...) in directory ``d``,
    one trivial function each, built with ``cc`` (scripts/test-all installs gcc)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc, "cc is needed to build the fake CUDA libraries: apt-get install gcc"
    src = os.path.join(d, "fake.c")
    with open(src, "w") as f:
        f.write("int runrec_fake(void) { return 13; }\n")
    for n in names:
        subprocess.run([cc, "-shared", "-fPIC", "-o", os.path.join(d, n), src], check=True)


def slurm_down() -> str | None:
    """Why the Slurm cluster does not answer (``sinfo``), or None when it does."""
    if not shutil.which("sinfo"):
        return "sinfo not found (run slurm/up)"
    try:
        out = subprocess.run(["sinfo", "-h"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "sinfo timed out"
    return f"sinfo failed: {out.stderr.strip()}" if out.returncode else None


def ray_down() -> str | None:
    """Why the Ray cluster's dashboard ($RAY_DASHBOARD_URL, else 127.0.0.1:8265) does not
    answer, or None when it does."""
    url = os.environ.get("RAY_DASHBOARD_URL", "http://127.0.0.1:8265").rstrip("/")
    try:
        with urllib.request.urlopen(url + "/api/version", timeout=5) as f:
            json.loads(f.read())
    except Exception as exc:
        return f"the Ray dashboard at {url} does not answer ({exc}); run ray/up"
    return None


CLUSTER_DOWN = {"local": lambda: None, "slurm": slurm_down, "ray": ray_down}


def git(cwd, *args: str) -> str:
    env = dict(
        os.environ,
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@x",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@x",
    )
    return subprocess.run(
        ["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True
    ).stdout


def run_cli(*args: str, cwd=None, env=None, input=None):
    """The real `runrec` entry point in a subprocess. Every JSON export it makes (`runrec
    export`, stdout or -o) is validated against `runrec schema --of export` (``check_export``):
    so every export of the test suite is."""
    e = dict(os.environ)
    e.update(env or {})
    out = subprocess.run(
        [sys.executable, "-m", "runrec_cluster", *args],
        cwd=cwd,
        env=e,
        capture_output=True,
        text=True,
        input=input,
        timeout=300,
    )
    if args and args[0] == "export" and out.returncode == 0:
        _check_cli_export(args, out.stdout, cwd)
    return out


def _option(args, *names):
    for i, a in enumerate(args[:-1]):
        if a in names:
            return args[i + 1]
    return None


def _check_cli_export(args, stdout: str, cwd) -> None:
    import json

    if (_option(args, "--format") or "json") != "json":
        return
    path = _option(args, "-o", "--output")
    if path is not None:
        with open(os.path.join(cwd or os.getcwd(), path), encoding="utf-8") as f:
            stdout = f.read()
    check_export(json.loads(stdout))


_SCHEMAS: dict = {}


def json_schema(kind: str) -> dict:
    """`runrec schema --of KIND`, once per test session."""
    import json

    if kind not in _SCHEMAS:
        out = subprocess.run(
            [sys.executable, "-m", "runrec_cluster", "schema", "--of", kind],
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        _SCHEMAS[kind] = json.loads(out.stdout)
    return _SCHEMAS[kind]


def schema_errors(doc, kind: str) -> list[str]:
    """Every way ``doc`` breaks `runrec schema --of KIND` (draft 2020-12, formats checked)."""
    from jsonschema import Draft202012Validator

    v = Draft202012Validator(json_schema(kind), format_checker=Draft202012Validator.FORMAT_CHECKER)
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in v.iter_errors(doc)
    ]


def check_export(doc) -> None:
    """An export document is valid against `runrec schema --of export`, its record against
    `--of record`."""
    bad = schema_errors(doc, "export") + schema_errors(doc.get("record"), "record")
    assert not bad, "export does not match `runrec schema`:\n" + "\n".join(bad[:20])


def write_figures(name: str, what: str, **figures) -> None:
    """One reliability test's figures, as a JSON object in $RUNREC_RELIABILITY_RESULTS (default
    tests/reliability/results/), for tests/reliability/summarize.py and docs/reliability.md."""
    import json

    d = os.environ.get("RUNREC_RELIABILITY_RESULTS") or os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "reliability", "results"
    )
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"{name}.json"), "w") as f:
        json.dump({"what": what, **figures}, f, indent=1, sort_keys=True, default=str)


def store_files_holding(root, *needles) -> dict[str, list[str]]:
    """{file under ``root``: [needles found in its bytes or its zstd-decompressed bytes]}: every
    file of a store read as an outside tool would, for the "no secret in the store" checks."""
    import io

    import zstandard

    found: dict[str, list[str]] = {}
    files = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs]
    assert files, root
    for p in files:
        with open(p, "rb") as f:
            raw = f.read()
        contents = [raw]
        if raw.startswith(b"\x28\xb5\x2f\xfd"):  # a zstd frame: every blob and record file
            with zstandard.ZstdDecompressor().stream_reader(
                io.BytesIO(raw), read_across_frames=True
            ) as r:
                contents.append(r.read())
        hits = [n for n in needles if any(n.encode() in b for b in contents)]
        if hits:
            found[p] = hits
    return found
