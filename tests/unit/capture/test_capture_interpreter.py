"""capture.interpreter: which program runs a command (PATH, paths, shebangs, env, python -m),
and the probe of a Python interpreter with its per-host cache. Real files and a real second
Python environment (Debian's python3 in a venv)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from runrec_cluster.capture import interpreter as it


def _exe(path, text="#!/bin/sh\nexit 0\n"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chmod(path, 0o755)
    return path


@pytest.fixture
def bins(tmp_path):
    """Two PATH directories with a fake `python3` each (only resolution is tested here)."""
    a, b = tmp_path / "a", tmp_path / "b"
    _exe(a / "python3")
    _exe(b / "python3")
    _exe(b / "tool")
    return a, b


def test_path_lookup_takes_the_first(bins, tmp_path):
    a, b = bins
    r = it.resolve(["python3", "x.py"], f"{a}:{b}", str(tmp_path))
    assert (r.argv0, r.path, r.via) == ("python3", str(a / "python3"), "PATH")
    r = it.resolve(["python3", "x.py"], f"{b}:{a}", str(tmp_path))
    assert r.path == str(b / "python3")


def test_relative_and_absolute_paths(bins, tmp_path):
    a, _ = bins
    r = it.resolve(["a/python3"], "", str(tmp_path))
    assert (r.path, r.via) == (str(a / "python3"), "path")
    r = it.resolve([str(a / "python3")], "", "/")
    assert (r.path, r.via) == (str(a / "python3"), "path")


def test_python_m(bins, tmp_path):
    a, _ = bins
    r = it.resolve(["python3", "-m", "pkg.train", "--lr", "1"], str(a), str(tmp_path))
    assert (r.path, r.via) == (str(a / "python3"), "python -m")


def test_shebang_env_and_absolute(bins, tmp_path):
    a, b = bins
    s1 = _exe(tmp_path / "train.py", "#!/usr/bin/env python3\nprint(1)\n")
    r = it.resolve(["./train.py"], f"{b}:{a}", str(tmp_path))
    assert (r.argv0, r.path, r.via) == ("./train.py", str(b / "python3"), "shebang")
    s2 = _exe(tmp_path / "t2.py", f"#!{a / 'python3'} -u\nprint(1)\n")
    r = it.resolve([str(s2)], str(b), "/")
    assert (r.path, r.via) == (str(a / "python3"), "shebang")
    s3 = _exe(tmp_path / "t3.py", "#!/usr/bin/env -S python3 -u\nprint(1)\n")
    assert it.resolve([str(s3)], str(a), "/").path == str(a / "python3")
    # a console script on PATH (torchrun, accelerate): its shebang's interpreter
    _exe(b / "trainer", f"#!{a / 'python3'}\nimport sys\n")
    assert it.resolve(["trainer"], str(b), "/").path == str(a / "python3")
    assert s1.exists()


def test_env_prefix_is_looked_through(bins, tmp_path):
    a, _ = bins
    r = it.resolve(
        ["env", "OMP_NUM_THREADS=1", "-u", "X", "python3", "t.py"], f"{a}:/usr/bin:/bin", "/"
    )
    assert r.path == str(a / "python3")


def test_not_found_and_non_python(bins, tmp_path):
    a, b = bins
    r = it.resolve(["no-such-prog-d13"], str(a), "/")
    assert r.path is None and "no-such-prog-d13" in r.unknown and "PATH" in r.unknown
    r = it.resolve(["./missing.py"], str(a), str(tmp_path))
    assert r.path is None and "does not exist" in r.unknown
    # a shell script: its shebang's program runs it
    info, pkgs = it.capture(["tool", "x"], environ={"PATH": str(b)}, cwd="/")
    assert (info.path, info.via) == ("/bin/sh", "shebang") and pkgs is None
    assert info.unknown == "not a Python interpreter: /bin/sh"
    info, _ = it.capture(["true"], environ={"PATH": "/usr/bin:/bin"}, cwd="/")
    assert info.path and os.path.basename(info.path) == "true" and info.via == "PATH"
    info, _ = it.capture(["/bin/sh", "-c", "true"], environ={"PATH": "/bin"}, cwd="/")
    assert info.unknown == "not a Python interpreter: /bin/sh"


def test_python_names():
    for n in ("python", "python3", "python3.12", "pypy3", "python3.13t", "/x/bin/python3.11"):
        assert it.is_python_name(n), n
    for n in ("sh", "bash", "torchrun", "pythonista", "ipython"):
        assert not it.is_python_name(n), n


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    d = tmp_path_factory.mktemp("ivenv") / "env"
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", str(d)], check=True)
    sp = subprocess.run(
        [str(d / "bin" / "python3"), "-c", "import site; print(site.getsitepackages()[0])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return d, sp


def _dist(sp, name, version):
    info = os.path.join(sp, f"{name}-{version}.dist-info")
    os.makedirs(info)
    with open(os.path.join(info, "METADATA"), "w") as f:
        f.write(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


def test_probe_and_its_cache(venv, tmp_path, monkeypatch):
    d, sp = venv
    monkeypatch.setenv("RUNREC_CACHE_DIR", str(tmp_path / "cache"))
    py = str(d / "bin" / "python3")
    truth = json.loads(
        subprocess.run(
            [
                py,
                "-c",
                "import sys, json, platform; print(json.dumps([sys.executable, platform.python_version()]))",
            ],
            check=True,
            capture_output=True,
            cwd=tmp_path,
        ).stdout
    )
    env = {"PATH": f"{d / 'bin'}:/usr/bin:/bin"}
    _dist(sp, "Alpha_One", "1.0")
    info, pkgs = it.capture(["python3", "t.py"], environ=env, cwd=str(tmp_path))
    assert [info.python_executable, info.python_version] == truth
    assert pkgs == {"alpha-one": "1.0"} and info.package_count == 1
    with open(it.cache_path()) as f:
        assert len(json.load(f)) == 1  # probed once, cached
    # the cache answers while nothing changed: prove it by editing the cached answer
    with open(it.cache_path()) as f:
        data = json.load(f)
    (entry,) = data.values()
    entry["facts"]["version"] = "cached"
    with open(it.cache_path(), "w") as f:
        json.dump(data, f)
    assert it.capture(["python3"], environ=env, cwd="/")[0].python_version == "cached"
    # installing a distribution changes site-packages' time: probed again
    time_before = os.stat(sp).st_mtime_ns
    _dist(sp, "beta", "2.0")
    if os.stat(sp).st_mtime_ns == time_before:  # a coarse clock: make the change visible
        os.utime(sp, ns=(time_before + 1_000_000_000, time_before + 1_000_000_000))
    info, pkgs = it.capture(["python3"], environ=env, cwd="/")
    assert info.python_version == truth[1] and pkgs == {"alpha-one": "1.0", "beta": "2.0"}


def test_probe_of_a_broken_interpreter(tmp_path, monkeypatch):
    monkeypatch.setenv("RUNREC_CACHE_DIR", str(tmp_path / "cache"))
    _exe(tmp_path / "bin" / "python3", "#!/bin/sh\necho boom >&2\nexit 5\n")
    info, pkgs = it.capture(["python3"], environ={"PATH": str(tmp_path / "bin")}, cwd="/")
    assert pkgs is None and info.path == str(tmp_path / "bin" / "python3")
    assert "failed the probe (exit 5): boom" in info.unknown


def test_probe_lists_what_importlib_metadata_lists(tmp_path, monkeypatch):
    """The probe reads headers only; on a real environment (the one running this test, with
    ~100 distributions) it must list exactly what importlib.metadata does there."""
    import sys

    monkeypatch.setenv("RUNREC_CACHE_DIR", str(tmp_path / "cache"))
    truth = json.loads(
        subprocess.run(
            [
                sys.executable,
                "-c",
                "import json, sys\nfrom importlib import metadata\n"
                "out = {}\n"
                "for d in metadata.distributions(path=[p for p in sys.path if p]):\n"
                "    n = d.metadata['Name']\n"
                "    out.setdefault(n.lower().replace('_', '-').replace('.', '-'), d.version)\n"
                "print(json.dumps(out))\n",
            ],
            check=True,
            capture_output=True,
            cwd=tmp_path,
        ).stdout
    )
    facts, why = it.probe(sys.executable, dict(os.environ), use_cache=False)
    assert why == "" and facts is not None
    assert facts["packages"] == truth and len(truth) > 10
