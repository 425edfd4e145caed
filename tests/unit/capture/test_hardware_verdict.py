"""Hardware classes: parsing (on_mismatch, expect keys) and the verdict every view shows."""

from datetime import UTC, datetime

import pytest

from runrec_cluster.capture.hardware import (
    flagged,
    hardware_classes,
    mismatch_failure,
    mismatch_warning,
    node_verdict,
    verdict_text,
)
from runrec_cluster.cli._common import state_text
from runrec_cluster.errors import ConfigError
from runrec_cluster.record import (
    Difference,
    Execution,
    Failure,
    FailureCause,
    GPUInfo,
    NodeInfo,
    RerunInfo,
    RunRecord,
    RunState,
)
from runrec_cluster.views.diff import diff

NODE = NodeInfo(
    hostname="box7",
    cpu_model="Intel Xeon",
    features=["cpu-a", "hwclass-x"],
    scheduler_node="n1",
)


def write(tmp_path, text):
    (tmp_path / "runrec.toml").write_text(text)
    return str(tmp_path)


def test_on_mismatch_defaults_to_flag_and_reads_fail(tmp_path):
    d = write(
        tmp_path,
        "[hardware.a]\nexpect = { gpu_count = 1 }\n"
        '[hardware.b]\nexpect = { cpu_model = "EPYC" }\non_mismatch = "fail"\n'
        '[hardware.c]\nslurm = { constraint = "hwclass-x" }\n',
    )
    hw = hardware_classes(d)
    assert hw["a"].on_mismatch == "flag" and hw["b"].on_mismatch == "fail"
    assert hw["c"].request("slurm") == {"constraint": "hwclass-x"}
    assert hw["c"].request("local") == {} and hw["c"].request("ray") == {}


@pytest.mark.parametrize(
    ("table", "words"),
    [
        ('on_mismatch = "stop"', ["'gpu'", "on_mismatch = 'stop'", '"fail"', '"flag"']),
        ("on_mismatch = true", ["'gpu'", "on_mismatch = True", '"fail"']),
        ('expect = { gpu = "A100" }', ["'gpu'", "unknown expect key", "gpu_name"]),
        ('expect = { gpu_count = "1" }', ["'gpu'", "gpu_count", "whole number"]),
        ('expect = "A100"', ["'gpu'", "expect must be a table"]),
        ('onmismatch = "fail"', ["'gpu'", "unknown keys ['onmismatch']", "on_mismatch"]),
    ],
)
def test_bad_class_is_a_clear_config_error(tmp_path, table, words):
    d = write(tmp_path, f"[hardware.gpu]\n{table}\n")
    with pytest.raises(ConfigError) as e:
        hardware_classes(d)
    msg = str(e.value)
    assert str(tmp_path / "runrec.toml") in msg
    for w in words:
        assert w in msg, (w, msg)


def test_expect_is_checked_against_the_node():
    ex = Execution(backend="slurm", hardware="g", hardware_expect={"gpu_count": 1})
    v = node_verdict(ex, NODE)
    assert v == {
        "hardware_match": False,
        "hardware_mismatches": ["gpu_count: expected at least 1, node has 0"],
    }
    gpu = NodeInfo(hostname="g", gpus=[GPUInfo(index=0, name="NVIDIA A100", uuid="u")])
    assert node_verdict(ex, gpu) == {"hardware_match": True, "hardware_mismatches": []}
    assert node_verdict(Execution(backend="local"), NODE) == {}  # no class: nothing to say
    assert node_verdict(None, NODE) == {}


def test_a_class_that_only_steers_records_where_it_was_placed():
    slurm = Execution(backend="slurm", hardware="x", hardware_request={"constraint": "hwclass-x"})
    text = node_verdict(slurm, NODE)["hardware_placement"]
    assert text.startswith("placed by the scheduler on n1 (slurm constraint=hwclass-x")
    assert "node features: cpu-a, hwclass-x" in text
    ray = Execution(
        backend="ray",
        hardware="r",
        hardware_request={"accelerator_type": "A100", "resources": {"hwclass-cpu": 1}},
    )
    node = NodeInfo(hostname="head", scheduler_node="abcdef0123456789", features=["hwclass-cpu"])
    text = node_verdict(ray, node)["hardware_placement"]
    assert text.startswith("placed by the scheduler on head (Ray node abcdef012345)")
    assert "ray accelerator_type=A100, resources hwclass-cpu=1" in text


def test_fail_mode_makes_a_failure_naming_each_mismatch():
    bad = {"hardware_match": False, "hardware_mismatches": ["gpu_count: expected at least 1"]}
    fail = Execution(hardware="g", hardware_expect={"gpu_count": 1}, hardware_on_mismatch="fail")
    f = mismatch_failure(fail, bad)
    assert f is not None and f.cause == FailureCause.HARDWARE_MISMATCH
    assert "'g'" in f.message and "gpu_count: expected at least 1" in f.message
    assert "did not run" in f.message
    flag = Execution(hardware="g", hardware_expect={"gpu_count": 1}, hardware_on_mismatch="flag")
    assert mismatch_failure(flag, bad) is None
    old = Execution(hardware="g", hardware_expect={"gpu_count": 1})  # before on_mismatch: flag
    assert mismatch_failure(old, bad) is None
    assert mismatch_failure(fail, {"hardware_match": True, "hardware_mismatches": []}) is None


def rec(state=RunState.SUCCEEDED, node=NODE, failure=None, **ex):
    return RunRecord(
        run_id="r1",
        name="n",
        state=state,
        failure=failure,
        nodes=[node] if node else [],
        execution=Execution(backend="slurm", **ex),
        ended_at=datetime.now(UTC) if state.is_terminal() else None,
    )


def test_verdict_words_never_say_not_checked_yet_on_a_run_that_started():
    mism = rec(hardware="g", hardware_match=False, hardware_mismatches=["gpu_count: x"])
    assert flagged(mism) and verdict_text(mism).startswith("DID NOT MATCH: the run went on")
    assert state_text(mism) == "succeeded (hardware mismatch)"
    assert mismatch_warning(mism) == (
        "run r1 ran on hardware that does not match class 'g': gpu_count: x"
    )
    failed = rec(
        RunState.FAILED,
        failure=Failure(cause=FailureCause.HARDWARE_MISMATCH, message="m"),
        hardware="g",
        hardware_match=False,
    )
    assert state_text(failed) == "failed (hardware_mismatch)"
    assert "failed before your code ran" in verdict_text(failed)
    code_err = rec(
        RunState.FAILED,
        failure=Failure(cause=FailureCause.CODE_ERROR),
        hardware="g",
        hardware_match=False,
    )
    assert state_text(code_err) == "failed (code_error, hardware mismatch)"
    ok = rec(hardware="g", hardware_match=True)
    assert not flagged(ok) and verdict_text(ok) == "matched" and state_text(ok) == "succeeded"
    assert mismatch_warning(ok) is None
    placed = rec(hardware="x", hardware_placement="placed by the scheduler on n1 (...)")
    assert verdict_text(placed) == "placed by the scheduler on n1 (...)"
    queued = rec(RunState.SUBMITTED, node=None, hardware="g", hardware_expect={"gpu_count": 1})
    assert verdict_text(queued) == "not checked yet: the run has not started"
    # records written before placements were recorded: finished, and still no "yet"
    for state in (RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED, RunState.RUNNING):
        old = rec(state, hardware="x")
        assert verdict_text(old) == "not checked: the class has no expect (ran on n1)"
        never = rec(state, node=None, hardware="g", hardware_expect={"gpu_count": 1})
        assert "yet" not in verdict_text(never)
    assert verdict_text(rec()) is None  # no class


def test_diff_labels_a_lost_match_incidental_even_when_the_class_change_was_intended():
    a = rec(hardware="cpu-a", hardware_expect={"node_features": "hwclass-x"}, hardware_match=True)
    b = RunRecord(
        run_id="r2",
        name="n",
        state=RunState.SUCCEEDED,
        nodes=[NODE],
        rerun_of="r1",
        rerun=RerunInfo(intended=[Difference(what="hardware", before="cpu-a", after="cpu-b")]),
        execution=Execution(
            backend="slurm",
            hardware="cpu-b",
            hardware_expect={"node_features": "hwclass-y"},
            hardware_match=False,
            hardware_mismatches=["node_features: expected ['hwclass-y']"],
        ),
    )
    labels = {c.key: c for c in diff(None, a, b)}
    assert labels["hardware"].label == "intended"
    assert labels["hardware.expect"].label == "intended"
    assert labels["hardware.match"].label == "incidental"
    assert "no longer meets the class" in labels["hardware.match"].note
    assert labels["hardware.mismatches"].label == "incidental"
