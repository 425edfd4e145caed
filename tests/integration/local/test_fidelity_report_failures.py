"""Issue 13, repro 12 (the report part): `runrec report SWEEP -o report.html` shows for each
failed run the failure message as recorded, its cause and the annotation note; integers print as
integers (`[2]`, seed `886812345`), also where a run lacks the value. The page is parsed with
html.parser; the expected text is what the test's own function raised and its own annotations."""

from __future__ import annotations

import re
import sys
from html.parser import HTMLParser

import cloudpickle
import pytest
from helpers import git, run_cli

import runrec_cluster as rr
from runrec_cluster.lineage.annotate import annotate

cloudpickle.register_pickle_by_value(sys.modules[__name__])

SEED = 886812345
MESSAGE = "loss diverged at lr=2.0 <inf> & gone"
FAIL_NOTE = "diverged: lower the lr <next time>"
NEG_NOTE = "too slow to converge"


def fit(lr, seed=None):
    import runrec_cluster as rr

    if lr >= 1:
        raise FloatingPointError(MESSAGE)
    rr.current_run().log_metrics({"acc": round(1 - lr / 2, 4)})
    return lr


class _Text(HTMLParser):
    """The text of each element with an id, and of each ``<li>`` of the failures list."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[tuple[str, str | None]] = []
        self.items: dict[str, str] = {}  # li id -> its text
        self.cells: dict[str, list[str]] = {}  # runs table row id -> cell texts
        self.all_text: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "li" and a.get("id"):
            self.items[a["id"]] = ""
        if tag == "tr" and (a.get("id") or "").startswith("run-"):
            self.cells[a["id"]] = []
        if tag == "td" and self._open("tr"):
            self.cells[self._open("tr")].append("")
        self.stack.append((tag, a.get("id")))

    def handle_endtag(self, tag):
        while self.stack:
            t, _ = self.stack.pop()
            if t == tag:
                break

    def _open(self, tag):
        for t, i in reversed(self.stack):
            if t == tag:
                return i if (i or "").startswith(("run-", "failure-")) else None
        return None

    def handle_data(self, data):
        self.all_text.append(data)
        li = self._open("li")
        if li:
            self.items[li] += data
        tr = self._open("tr")
        if tr and self.cells[tr]:
            self.cells[tr][-1] += data


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    base = tmp_path_factory.mktemp("repfail")
    repo = base / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "fit.py").write_text("# the sweep\n")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "first")
    store = rr.Store(base / "store")
    ex = rr.Executor(backend="local", store=store, name="fit", cwd=repo)
    # a run outside any sweep: the index's sweep_index column has a missing value
    ex.submit(fit, 0.05).wait(timeout=120)
    calls = [
        {"lr": 0.1, "seed": SEED},
        {"lr": 0.2, "seed": SEED + 1},
        {"lr": 2.0, "seed": SEED + 2},
        {"lr": 0.3},  # no seed: pandas makes the seed column float
    ]
    hs = ex.map_array(fit, calls)
    for h in hs:
        h.wait(timeout=120)
    annotate(store, hs[2].run_id, verdict="inconclusive", note=FAIL_NOTE)
    annotate(store, hs[3].run_id, verdict="negative", note=NEG_NOTE)
    return store, hs


def test_failure_section_and_integers(sweep, tmp_path):
    store, hs = sweep
    assert [h.record().state.value for h in hs] == ["succeeded"] * 2 + ["failed", "succeeded"]
    out = tmp_path / "report.html"
    sw = hs[0].record().sweep_id
    r = run_cli("report", sw, "-o", str(out), "--store", store.root)
    assert r.returncode == 0, r.stderr
    page = out.read_text()
    p = _Text()
    p.feed(page)

    failed = p.items[f"failure-{hs[2].run_id}"]
    assert "[2]" in failed and "[2.0]" not in failed
    assert "code_error" in failed and "FloatingPointError" in failed
    assert MESSAGE in failed  # the text the function raised, HTML-escaped on the page
    assert FAIL_NOTE in failed and "inconclusive" in failed

    negative = p.items[f"failure-{hs[3].run_id}"]
    assert "[3]" in negative and NEG_NOTE in negative and "negative" in negative
    assert set(p.items) == {f"failure-{hs[2].run_id}", f"failure-{hs[3].run_id}"}

    # integers as integers everywhere: the table's seed and index cells, tooltips, ticks
    text = "".join(p.all_text)
    assert not re.search(r"\d\.\d+e\+0\d", text), "an integer printed in exponent form"
    assert not re.search(r"\[\d+\.0\]", text), "a sweep index printed as a float"
    for i, h in enumerate(hs):
        cells = [c.strip() for c in p.cells[f"run-{h.run_id}"]]
        assert cells[1] == str(i)  # sweep_index, after the run id cell
        seed = [c for c in cells if c.startswith("8868")]
        assert seed == ([str(SEED + i)] if i < 3 else [])
