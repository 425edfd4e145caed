"""`runrec report SWEEP`: a real sweep on the local backend (some runs fail), a real rerun, an
annotation; the page is opened in headless Chromium and its rendered DOM is checked."""

import os
import re
import shutil
import subprocess
import sys

import cloudpickle
import pytest
from helpers import git, run_cli

import runrec_cluster as rr

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def fit(lr, opt="sgd"):
    """A sweep function: diverges (raises) for lr >= 1, else logs two metrics."""
    import runrec_cluster as rr

    if lr >= 1:
        raise FloatingPointError(f"loss diverged at lr={lr}")
    rr.current_run().log_metrics({"acc": round(1 - lr / 2, 4), "loss": round(lr * 3, 4)})
    return lr


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    base = tmp_path_factory.mktemp("rep")
    repo = base / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "fit.py").write_text("# the sweep <script>alert(1)</script>\n")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "first")
    store = rr.Store(base / "store")
    ex = rr.Executor(backend="local", store=store, name="fit <b>", cwd=repo)
    calls = [{"lr": 0.01}, {"lr": 0.1, "opt": "adam"}, {"lr": 0.3}, {"lr": 2.0}]
    hs = ex.map_array(fit, calls)
    for h in hs:
        h.wait(timeout=120)
    rr_annotate = __import__("runrec_cluster.lineage.annotate", fromlist=["annotate"]).annotate
    rr_annotate(store, hs[2].run_id, verdict="negative", note="too slow to converge")
    return store, hs, base


def test_report_content(sweep, tmp_path):
    store, hs, _ = sweep
    sw = hs[0].record().sweep_id
    out = tmp_path / "report.html"
    r = run_cli("report", "--store", store.root, sw[:12], "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert "4 runs" in r.stderr and "4 plots" in r.stderr  # acc, loss x lr, opt
    text = out.read_text()
    assert "<script" not in text.replace("&lt;script", "")  # record text is escaped
    assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in text  # self-contained: no CDN, no external file
    assert text.count("<svg") == 4
    for h in hs:
        assert f"id='run-{h.run_id}'" in text
    assert "FloatingPointError" in text and "negative" in text


def test_report_links_reruns(sweep, tmp_path):
    store, hs, base = sweep
    try:
        new = rr.rerun(
            store, hs[3].run_id, overrides={"lr": 0.5}, reason="lower lr", workdir=base / "wt"
        )
    except rr.RerunError as exc:  # pragma: no cover - the rerun feature decides what it can rerun
        pytest.skip(f"rerun refused here: {exc}")
    new.wait(timeout=120)
    out = tmp_path / "report.html"
    r = run_cli("report", "--store", store.root, hs[0].record().sweep_id, "-o", str(out))
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    assert f'href="#run-{new.run_id}"' in text and f'href="#run-{hs[3].run_id}"' in text
    assert "rerun of" in text and "rerun as" in text


@pytest.mark.skipif(_chromium() is None, reason="needs Chromium (Debian package chromium)")
def test_report_renders_in_chromium(sweep, tmp_path):
    store, hs, _ = sweep
    out = tmp_path / "report.html"
    r = run_cli("report", "--store", store.root, hs[0].record().sweep_id, "-o", str(out))
    assert r.returncode == 0, r.stderr
    profile = tmp_path / "profile"
    cmd = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--dump-dom",
        out.as_uri(),
    ]
    p = subprocess.run(
        cmd, capture_output=True, text=True, timeout=120, env=dict(os.environ, HOME=str(tmp_path))
    )
    assert p.returncode == 0, p.stderr[-2000:]
    dom = p.stdout
    # the table rendered: one row per run, the failed one marked
    rows = re.findall(r"<tr id=\"run-([0-9a-z]{26})\" class=\"([^\"]*)\"", dom)
    assert {rid for rid, _ in rows} >= {h.run_id for h in hs}
    classes = dict(rows)
    assert "failed" in classes[hs[3].run_id] and "negative" in classes[hs[2].run_id]
    # the plots rendered as SVG elements with their points and the failure's cross
    assert dom.count("<svg") == 4
    assert len(re.findall(r"<circle class=\"pt\"", dom)) == 4 * 3
    assert len(re.findall(r"<path class=\"nometric\"", dom)) >= 2
    shot = tmp_path / "shot.png"
    cmd[-2:] = [f"--screenshot={shot}", "--window-size=1200,1600", out.as_uri()]
    p = subprocess.run(
        cmd, capture_output=True, text=True, timeout=120, env=dict(os.environ, HOME=str(tmp_path))
    )
    assert p.returncode == 0 and shot.stat().st_size > 10_000, p.stderr[-2000:]
