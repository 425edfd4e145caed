"""How long `runrec rerun --env recorded` takes to get its environment, against a plain pip.

A source venv with a realistic package set (scikit-learn, pandas, matplotlib, seaborn,
requests, jinja2, pyyaml and runrec itself: >= 40 distributions) is made first; its exact set is
then recreated, side by side in one run, from the same index (PyPI, the user's pip
configuration ignored):

- uv, cold, empty uv cache: ``rerun.envs.ensure_env`` (venv + install + check + rename), every
  wheel downloaded;
- uv, cold env, warm uv cache: the same set built again into a new environment directory;
- uv, warm (cache hit): the same call again: the environment is found, nothing installed;
- pip, empty cache: ``python -m venv`` + ``pip install --no-deps -r reqs`` (+ runrec editable),
  with a new pip cache directory;
- pip, warm cache: the same with pip's cache filled by the previous step.

Usage: python bench/env_recorded.py [--out results.json]   (needs uv and network to PyPI)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

from runrec_cluster.rerun import envs
from runrec_cluster.store import Store

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REQS = ["scikit-learn", "pandas", "matplotlib", "seaborn", "requests", "jinja2", "pyyaml"]
PYPI = "https://pypi.org/simple"


def sh(*cmd: str, env: dict[str, str] | None = None) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True, env=env, timeout=3600)


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    fn()
    return round(time.perf_counter() - t, 3)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    uv = envs.uv_bin()
    work = tempfile.mkdtemp(prefix="rr-env-bench-")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_"))}
    clean["PIP_CONFIG_FILE"] = os.devnull  # the same index for both: PyPI
    pyv = platform.python_version()
    src = os.path.join(work, "src")
    sh(uv, "venv", "-q", "--python", pyv, src, env=clean)
    sh(uv, "pip", "install", "-q", "--python", f"{src}/bin/python", "-e", ROOT, *REQS, env=clean)
    listing = json.loads(
        subprocess.run(
            [f"{src}/bin/python", "-c", envs.LIST_PY], capture_output=True, text=True, check=True
        ).stdout
    )
    pkgs: dict[str, str] = listing["packages"]
    store = Store(os.path.join(work, "store"))
    store.ensure_writable()
    spec = envs.EnvSpec(
        pyv, "bench", {n: v for n, v in pkgs.items() if n != envs.RUNREC_DIST}, {}, {}, {},
        envs.runrec_install()[0], PYPI, "bench",
    )  # fmt: skip
    quiet = lambda _m: None  # noqa: E731
    res: dict[str, float] = {}
    os.environ.update({"PIP_CONFIG_FILE": os.devnull})
    for k in [k for k in os.environ if k.startswith("UV_")]:
        del os.environ[k]

    def uv_build(cache: str, envdir: str) -> float:
        os.environ["UV_CACHE_DIR"] = cache
        os.environ["RUNREC_ENVS_DIR"] = envdir
        return timed(lambda: envs.ensure_env(store, spec, allow_missing=False, echo=quiet))

    res["uv_cold_empty_cache_s"] = uv_build(f"{work}/uvcache", f"{work}/envs1")
    res["uv_cold_warm_cache_s"] = uv_build(f"{work}/uvcache", f"{work}/envs2")
    res["uv_warm_cache_hit_s"] = uv_build(f"{work}/uvcache", f"{work}/envs2")
    reqs = os.path.join(work, "reqs.txt")
    with open(reqs, "w") as f:
        f.write("".join(f"{n}=={v}\n" for n, v in sorted(spec.install.items())))

    def pip_build(dest: str, *cache: str) -> float:
        def go() -> None:
            sh(sys.executable, "-m", "venv", dest, env=clean)
            pip = [f"{dest}/bin/pip", "install", "-q", "--disable-pip-version-check", *cache]
            sh(*pip, "--no-deps", "--index-url", PYPI, "-r", reqs, env=clean)
            sh(*pip, "--no-deps", "-e", ROOT, env=clean)

        return timed(go)

    pcache = ["--cache-dir", f"{work}/pipcache"]
    res["pip_empty_cache_s"] = pip_build(f"{work}/pip1", *pcache)
    res["pip_warm_cache_s"] = pip_build(f"{work}/pip2", *pcache)
    out = {
        "distributions": len(spec.install) + 1,
        "python": pyv,
        "uv": subprocess.run([uv, "--version"], capture_output=True, text=True).stdout.strip(),
        "pip": subprocess.run(
            [f"{work}/pip1/bin/pip", "--version"], capture_output=True, text=True
        ).stdout.split(" from ")[0],
        "cpus": os.cpu_count(),
        **res,
    }
    print(json.dumps(out, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
