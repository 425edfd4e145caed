"""The sitecustomize that records a Python command's argparse options (job/argparse_site.py),
run for real: a real interpreter started by the test with the file first on its PYTHONPATH, as
the job does. Ground truth is what each script itself prints (``vars(args)``, ``sys.path``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from runrec_cluster.job import argparse_capture, argparse_site

TRAIN = """
import argparse, json, sys
p = argparse.ArgumentParser()
p.add_argument("--lr", type=float, default=0.01)
p.add_argument("--epochs", type=int, default=10)
p.add_argument("--batch-size", type=int, default=32)
p.add_argument("--verbose", action="store_true")
p.add_argument("-s", "--seed", type=int, default=7)
p.add_argument("-q", dest="quiet", action="store_true")
p.add_argument("data", nargs="?", default="train.csv")
args = p.parse_args()
json.dump(vars(args), open(sys.argv[0] + ".truth.json", "w"))
"""


def _site(tmp_path):
    d = tmp_path / "site"
    d.mkdir(exist_ok=True)
    shutil.copyfile(argparse_site.__file__, d / "sitecustomize.py")
    return d


def _run(tmp_path, script_text, *args, python=sys.executable, extra_path=None, env=None):
    d = _site(tmp_path)
    script = tmp_path / "script.py"
    script.write_text(script_text)
    out = tmp_path / "argv.json"
    e = dict(os.environ if env is None else env)
    e["PYTHONPATH"] = os.pathsep.join([str(d)] + ([str(extra_path)] if extra_path else []))
    e[argparse_site.ENV_PATH] = str(out)
    e[argparse_site.ENV_PPID] = str(os.getpid())  # this process is the script's parent
    r = subprocess.run(
        [python, str(script), *args], env=e, capture_output=True, text=True, cwd=tmp_path
    )
    doc = json.loads(out.read_text()) if out.exists() else None
    return r, doc, script


def _by_dest(doc):
    return {o["dest"]: o for o in doc["options"]}


def test_given_and_default_match_the_scripts_own_parse(tmp_path):
    # --lr given with a value, --seed given through its short name, --epochs given with the
    # value that is also its default: given, not default
    r, doc, script = _run(tmp_path, TRAIN, "--lr", "0.1", "-s", "3", "--epochs=10")
    assert r.returncode == 0, r.stderr
    truth = json.loads((tmp_path / "script.py.truth.json").read_text())
    opts = _by_dest(doc)
    assert set(opts) == set(truth)
    for dest, value in truth.items():
        assert opts[dest]["value"] == value, dest
    given = {d for d, o in opts.items() if o["given"]}
    assert given == {"lr", "seed", "epochs"}
    keys = {d: o["key"] for d, o in opts.items()}
    assert keys == {
        "lr": "lr",
        "epochs": "epochs",
        "batch_size": "batch-size",  # the long option, as runrec records --batch-size 64
        "verbose": "verbose",
        "seed": "seed",
        "quiet": "quiet",  # short-only: its destination
        "data": "data",
    }
    assert doc["method"] == "seen"


def test_positional_and_flags_given(tmp_path):
    r, doc, _ = _run(tmp_path, TRAIN, "val.csv", "--verbose", "-q")
    assert r.returncode == 0, r.stderr
    truth = json.loads((tmp_path / "script.py.truth.json").read_text())
    opts = _by_dest(doc)
    assert {d: o["value"] for d, o in opts.items()} == truth
    assert {d for d, o in opts.items() if o["given"]} == {"data", "verbose", "quiet"}


def test_another_interpreter_without_runrec(tmp_path):
    # the system's own Python, outside runrec's virtual environment
    other = shutil.which("python3", path="/usr/bin:/usr/local/bin")
    probe = subprocess.run([other or "false", "-c", "import runrec_cluster"], capture_output=True)
    if other is None or probe.returncode == 0:
        pytest.skip("no Python interpreter without runrec on this machine")
    r, doc, _ = _run(tmp_path, TRAIN, "--lr", "0.5", python=other)
    assert r.returncode == 0, r.stderr
    assert _by_dest(doc)["lr"] == {"key": "lr", "dest": "lr", "value": 0.5, "given": True}


def test_subparsers_and_set_defaults(tmp_path):
    text = """
import argparse, json, sys
def train(a): pass
p = argparse.ArgumentParser()
p.add_argument("--device", default="cpu")
sub = p.add_subparsers(dest="cmd")
t = sub.add_parser("train")
t.add_argument("--lr", type=float, default=0.01)
t.add_argument("--steps", type=int, default=100)
t.set_defaults(func=train)
args = p.parse_args()
json.dump({k: v for k, v in vars(args).items() if k != "func"}, open("truth.json", "w"))
"""
    r, doc, _ = _run(tmp_path, text, "train", "--lr", "0.2")
    assert r.returncode == 0, r.stderr
    truth = json.loads((tmp_path / "truth.json").read_text())
    opts = _by_dest(doc)
    for dest, value in truth.items():
        assert opts[dest]["value"] == value
    assert {d for d, o in opts.items() if o["given"]} == {"cmd", "lr"}
    assert opts["func"]["value"] == "<function __main__.train>"  # readable, no address
    assert opts["func"]["given"] is False


def test_two_stage_parse_is_merged(tmp_path):
    # the common pattern: a first parser for --config, then the full one with its defaults
    text = """
import argparse, json
pre = argparse.ArgumentParser(add_help=False)
pre.add_argument("--config", default=None)
known, rest = pre.parse_known_args()
defaults = json.load(open(known.config)) if known.config else {}
p = argparse.ArgumentParser(parents=[pre])
p.add_argument("--lr", type=float, default=0.01)
p.add_argument("--epochs", type=int, default=10)
p.set_defaults(**defaults)
args = p.parse_args()
json.dump(vars(args), open("truth.json", "w"))
"""
    (tmp_path / "c.json").write_text('{"epochs": 4}')
    r, doc, _ = _run(tmp_path, text, "--config", "c.json", "--lr", "0.3")
    assert r.returncode == 0, r.stderr
    truth = json.loads((tmp_path / "truth.json").read_text())
    opts = _by_dest(doc)
    assert {d: o["value"] for d, o in opts.items()} == truth
    assert {d for d, o in opts.items() if o["given"]} == {"config", "lr"}
    assert doc["parses"] == 2


def test_no_argparse_writes_nothing_and_the_script_runs(tmp_path):
    r, doc, _ = _run(tmp_path, "import sys; print('hello', sys.argv[1:])", "--lr", "1")
    assert r.returncode == 0 and "hello ['--lr', '1']" in r.stdout
    assert doc is None


def test_a_parse_error_and_help_write_nothing(tmp_path):
    r, doc, _ = _run(tmp_path, TRAIN, "--lr", "not-a-number")
    assert r.returncode == 2 and "invalid float value" in r.stderr
    assert doc is None
    r, doc, _ = _run(tmp_path, TRAIN, "--help")
    assert r.returncode == 0 and "--batch-size" in r.stdout
    assert doc is None


def test_a_parse_of_other_strings_is_not_the_command_line(tmp_path):
    text = """
import argparse
p = argparse.ArgumentParser()
p.add_argument("--lr", type=float, default=0.01)
p.parse_args(["--lr", "9"])
"""
    r, doc, _ = _run(tmp_path, text, "--other")
    assert r.returncode == 0, r.stderr
    assert doc is None


def test_other_process_parent_is_not_captured(tmp_path):
    # the script is not the job's child (the PPID given is not its parent): nothing recorded
    env = dict(os.environ)
    d = _site(tmp_path)
    script = tmp_path / "script.py"
    script.write_text(TRAIN)
    out = tmp_path / "argv.json"
    env.update(
        PYTHONPATH=str(d),
        **{argparse_site.ENV_PATH: str(out), argparse_site.ENV_PPID: "1"},
    )
    r = subprocess.run([sys.executable, str(script), "--lr", "2"], env=env, capture_output=True)
    assert r.returncode == 0
    assert not out.exists()


def test_existing_sitecustomize_still_runs_and_paths_are_restored(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "sitecustomize.py").write_text(
        "import os\nopen(os.environ['THEIRS_MARK'], 'w').write('ran')\n"
    )
    mark = tmp_path / "mark.txt"
    text = """
import json, os, subprocess, sys, argparse
p = argparse.ArgumentParser(); p.add_argument("--lr", type=float, default=0.01)
args = p.parse_args()
import sitecustomize
child = subprocess.run([sys.executable, "-c", "import os; print(os.environ.get('PYTHONPATH'))"],
                       capture_output=True, text=True).stdout.strip()
json.dump({"sys_path": sys.path, "pythonpath": os.environ.get("PYTHONPATH"),
           "sitecustomize": sitecustomize.__file__, "child_pythonpath": child},
          open("facts.json", "w"))
"""
    env = dict(os.environ, THEIRS_MARK=str(mark))
    r, doc, _ = _run(tmp_path, text, "--lr", "0.2", extra_path=theirs, env=env)
    assert r.returncode == 0, r.stderr
    assert mark.read_text() == "ran"  # the user's own sitecustomize ran
    facts = json.loads((tmp_path / "facts.json").read_text())
    site_dir = str(tmp_path / "site")
    assert site_dir not in facts["sys_path"]
    assert facts["pythonpath"] == str(theirs) == facts["child_pythonpath"]
    assert facts["sitecustomize"] == str(theirs / "sitecustomize.py")
    assert _by_dest(doc)["lr"]["value"] == 0.2


def test_non_json_values_become_text(tmp_path):
    text = """
import argparse, pathlib
p = argparse.ArgumentParser()
p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs/x"))
p.add_argument("--log", type=argparse.FileType("w"), default=None)
p.add_argument("--shape", type=complex, default=1j)
p.parse_args()
"""
    r, doc, _ = _run(tmp_path, text, "--log", "log.txt")
    assert r.returncode == 0, r.stderr
    opts = _by_dest(doc)
    assert opts["out"]["value"] == "runs/x"
    assert opts["log"]["value"] == "log.txt" and opts["log"]["given"]
    assert opts["shape"]["value"] == "1j"


def test_entries_from_a_capture(tmp_path):
    from runrec_cluster.record import ConfigEntry

    doc = {
        "options": [
            {"key": "lr", "dest": "lr", "value": 0.1, "given": True},
            {"key": "epochs", "dest": "epochs", "value": 3, "given": False},
            {"key": "depth", "dest": "depth", "value": 5, "given": False},
            {"key": "api-token", "dest": "api_token", "value": "hunter2hunter2", "given": True},
        ]
    }
    launch = {
        "lr": ConfigEntry(value=0.1, source="given"),
        "epochs": ConfigEntry(
            value=3, source="file:/x/c.toml"
        ),  # the script's default came from it
        "depth": ConfigEntry(value=4, source="file:/x/c.toml"),  # the script did not use it
    }
    out = argparse_capture.entries_from(doc, launch)
    assert out["lr"] == ConfigEntry(value=0.1, source="argv")
    assert "epochs" not in out  # keeps file:/x/c.toml
    assert out["depth"] == ConfigEntry(value=5, source="default")
    assert out["api-token"].value != "hunter2hunter2"  # redacted by its name


@pytest.mark.parametrize(
    ("flag", "env", "expected"),
    [
        (None, {}, True),
        (False, {}, False),
        (True, {}, True),
        (None, {"RUNREC_CAPTURE_ARGPARSE": "0"}, False),
        (True, {"RUNREC_CAPTURE_ARGPARSE": "0"}, False),
    ],
)
def test_enabled(flag, env, expected):
    assert argparse_capture.enabled(flag, env) is expected
