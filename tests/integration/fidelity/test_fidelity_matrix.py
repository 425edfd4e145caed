"""The fidelity matrix (issue 13): backend {local, slurm, ray} x entry {function, command} x
outcome {succeeded, raised / non-zero exit, killed at the time limit, cancelled}: 24 cells, each
run for real, each checking the same facts against ground truth the test gathers itself
(``fidelity_checks.check_cell``):

- code: dirty flag and untracked files as ``git status --porcelain`` says (the store, inside
  the repository, left out); the recorded patch, applied with ``git apply --binary`` to a clone
  at the recorded commit, reproduces the working tree; the patch never names the store;
- the process that ran the user's code, as it reported itself: interpreter, Python version,
  package versions, host, CPU count and affinity; for a command, ``python3`` resolved through
  PATH (a different interpreter than runrec's is put first on PATH), at launch and on the node;
- CUDA runtime / cuDNN / NCCL as loaded (fake libraries built with ``cc``, loaded with ctypes,
  their paths as the user process's own /proc/self/maps shows them), and how they were sampled;
- state and cause exactly, exit codes, config with provenance, the failure's text.

A fact a cell truly cannot hold must be recorded as unknown with its reason: such cells are
listed in ``UNKNOWN`` below, and the test asserts the empty value and the reason there.

One backend's eight cells are submitted together and driven to their outcomes at once (the time
limits run concurrently); the 24 tests then read the records. docs/fidelity.md shows the matrix.
"""

from __future__ import annotations

import os

import fidelity_checks as fc
import pytest
from helpers import CLUSTER_DOWN

# Facts a cell cannot hold, with the reason its record must give ({fact: regex}); every other
# fact of every cell is checked against the ground truth.
UNKNOWN: dict[tuple[str, str, str], dict[str, str]] = {}

OPTIONS = {
    "local": {},
    "slurm": {},
    # keep the runs off ray/up's oom-test node (as tests/integration/ray does)
    "ray": {"ray_resources": {"runrec-general": 1}},
}
OTHER_PYTHON = "/usr/bin/python3"  # not runrec's venv: what `python3` finds first on PATH


@pytest.fixture(
    scope="module",
    params=[
        pytest.param("local"),
        pytest.param("slurm", marks=pytest.mark.slurm),
        pytest.param("ray", marks=pytest.mark.ray),
    ],
)
def matrix(request, tmp_path_factory, fake_libs):
    """One backend's eight cells, submitted together and driven to their outcomes."""
    backend = request.param
    why = CLUSTER_DOWN[backend]()
    if why:
        pytest.skip(f"no {backend} cluster: {why}")
    base = tmp_path_factory.mktemp(f"fidelity-{backend}")
    with pytest.MonkeyPatch.context() as mp:
        if os.path.exists(OTHER_PYTHON):  # a `python3` that is not runrec's, first on PATH
            shim = base / "bin"
            shim.mkdir()
            (shim / "python3").symlink_to(OTHER_PYTHON)
            mp.setenv("PATH", f"{shim}{os.pathsep}{os.environ['PATH']}")
        m = fc.submit_cells(backend, base, fake_libs, OPTIONS[backend])
    try:
        fc.drive(m)
        yield m
    finally:
        print(f"\nfidelity matrix on {backend}: {m.seconds:.1f} s for 8 cells")
        for c in m.cells.values():
            if not c.handle.record().state.is_terminal():
                c.handle.cancel()


@pytest.mark.parametrize("outcome", fc.OUTCOMES)
@pytest.mark.parametrize("entry", fc.ENTRIES)
def test_cell(matrix, entry, outcome):
    cell = matrix.cells[entry, outcome]
    exp = fc.Expected(
        cell=cell,
        truth=matrix.truth,
        launch_python3=matrix.launch_python3,
        submitter_python=matrix.submitter_python,
        unknown=UNKNOWN.get(cell.key, {}),
    )
    found = fc.check_cell(matrix.store, cell.handle, cell.facts, exp)
    print(f"\n{cell.key} run {cell.handle.run_id}: {found}")
    wrong = {k: v for k, v in found.items() if v != "ok"}
    assert not wrong, f"{cell.key}: " + "\n".join(f"{k}: {v}" for k, v in wrong.items())
