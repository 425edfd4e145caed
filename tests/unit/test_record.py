from datetime import UTC, datetime

import msgspec
import pytest

from runrec_cluster.record import (
    SCHEMA_VERSION,
    ConfigEntry,
    Failure,
    FailureCause,
    NodeInfo,
    RecordVersion,
    RunRecord,
    RunState,
    Writer,
    fold,
    fold_patches,
    to_patch,
)
from runrec_cluster.store import codec


def v(seq, patch, run_id="01m8c98spkjwx5becw52s14k16"):
    return RecordVersion(
        run_id=run_id,
        seq=seq,
        written_at=datetime.now(UTC),
        writer=Writer(host="h", pid=1, role="t"),
        event="e",
        patch=patch,
    )


def test_states_never_move_backwards_within_an_attempt():
    cur = fold_patches(
        [
            {"state": "submitted"},
            {"state": "succeeded", "state_source": "job"},
            {"state": "running", "state_source": "job"},
        ]
    )
    assert cur["state"] == "succeeded"


def test_job_verdict_beats_inferred_one_in_any_order():
    a = fold_patches(
        [
            {"state": "failed", "state_source": "inferred"},
            {"state": "succeeded", "state_source": "job"},
        ]
    )
    b = fold_patches(
        [
            {"state": "succeeded", "state_source": "job"},
            {"state": "failed", "state_source": "inferred"},
        ]
    )
    assert a["state"] == b["state"] == "succeeded"


def test_new_attempt_resets_terminal_state():
    cur = fold_patches(
        [
            {
                "state": "failed",
                "state_source": "scheduler",
                "failure": {"cause": "preempted"},
                "attempt": 1,
            },
            {"state": "running", "state_source": "job", "attempt": 2, "started_at": 5},
        ]
    )
    assert (
        cur["state"] == "running"
        and cur["attempt"] == 2
        and "failure" not in cur
        and cur["started_at"] == 5
    )


def test_dicts_merge_and_lists_replace_by_key():
    cur = fold_patches(
        [
            {"metrics": {"a": 1}, "config": {"lr": {"value": 1, "source": "given"}}},
            {"metrics": {"b": 2}, "config": {"seed": {"value": 3, "source": "generated"}}},
            {"artifacts": [{"name": "m", "digest": "1"}]},
            {"artifacts": [{"name": "m", "digest": "2"}, {"name": "n", "digest": "3"}]},
            {"execution": {"backend": "local", "scheduler": {"a": 1}}},
            {"execution": {"scheduler": {"b": 2}}},
        ]
    )
    assert cur["metrics"] == {"a": 1, "b": 2}
    assert set(cur["config"]) == {"lr", "seed"}
    assert [a["digest"] for a in cur["artifacts"]] == ["2", "3"]
    assert cur["execution"] == {"backend": "local", "scheduler": {"a": 1, "b": 2}}


def test_fold_orders_by_seq_not_by_arrival():
    rec = fold(
        [
            v(2, {"metrics": {"x": 2}}),
            v(1, {"run_id": "01m8c98spkjwx5becw52s14k16", "metrics": {"x": 1}}),
        ]
    )
    assert rec.metrics == {"x": 2}


def test_schema_round_trip_through_the_codec():
    rec = RunRecord(
        run_id="01m8c98spkjwx5becw52s14k16",
        name="n",
        tags={"a": "b"},
        created_at=datetime.now(UTC),
        config={"lr": ConfigEntry(value=0.1, source="given")},
        nodes=[NodeInfo(hostname="h", gpu_status="no GPU")],
        state=RunState.FAILED,
        failure=Failure(cause=FailureCause.OUT_OF_MEMORY, message="m"),
        metrics={"acc": 0.5},
    )
    back = codec.decode(codec.encode(rec), RunRecord)
    assert back == rec
    # and through a version patch, as the store writes it
    again = fold([v(1, to_patch(**{f: getattr(rec, f) for f in rec.__struct_fields__}))])
    assert again == rec


def test_unknown_fields_from_a_newer_schema_are_ignored():
    data = codec.encode(
        {
            "schema_version": SCHEMA_VERSION + 1,
            "run_id": "01m8c98spkjwx5becw52s14k16",
            "seq": 1,
            "written_at": datetime.now(UTC),
            "writer": {"host": "h", "pid": 1, "role": "x", "future": 1},
            "event": "launch",
            "patch": {"name": "x", "brand_new_field": {"a": 1}},
            "another": 2,
        }
    )
    ver = codec.decode(data, RecordVersion)
    rec = fold([ver])
    assert rec.name == "x" and rec.schema_version == SCHEMA_VERSION + 1


def test_json_schema_is_generated_from_the_structs():
    schema = msgspec.json.schema(RunRecord)
    props = schema["$defs"]["RunRecord"]["properties"]
    for field in (
        "run_id",
        "code",
        "config",
        "inputs",
        "launch_env",
        "execution",
        "nodes",
        "state",
        "failure",
        "metrics",
        "artifacts",
    ):
        assert field in props


def test_state_enum_terminality():
    assert RunState.SUCCEEDED.is_terminal() and RunState.CANCELLED.is_terminal()
    assert not RunState.RUNNING.is_terminal() and not RunState.UNKNOWN.is_terminal()


def test_corrupt_bytes_raise_our_error():
    from runrec_cluster.errors import CorruptRecord

    with pytest.raises(CorruptRecord):
        codec.decode(b"not zstd at all", RecordVersion, "x")
    with pytest.raises(CorruptRecord):
        codec.decode(codec.encode({"nope": 1}), RecordVersion, "x")


def test_annotations_append_in_history_order_and_old_readers_skip_them():
    a1 = {"id": "01m8c98spkjwx5becw52s14k17", "verdict": "negative", "note": "diverges"}
    a2 = {"id": "01m8c98spkjwx5becw52s14k10", "verdict": "inconclusive", "note": "3 seeds: mixed"}
    rec = fold(
        [
            v(1, {"run_id": "01m8c98spkjwx5becw52s14k16", "state": "failed"}),
            v(2, {"annotations": [a1]}),
            v(3, {"annotations": [a2]}),
        ]
    )
    assert [a.verdict for a in rec.annotations] == ["negative", "inconclusive"]  # not by id
    assert rec.state == RunState.FAILED
    old = msgspec.msgpack.decode(codec.encode_raw(rec), type=dict)
    assert "annotations" in old  # a v1 reader decodes RunRecord and skips the unknown field


def test_merge_context_puts_the_shared_part_underneath():
    from runrec_cluster.record import merge_context

    ctx = {
        "code": {"commit": "abc"},
        "execution": {"backend": "local", "resources": {"cpus": 1}},
        "nodes": [{"hostname": "n1", "os": "Debian"}],
        "tags": {"a": "1"},
    }
    own = {
        "execution": {"log_dir": "/x"},
        "nodes": [{"captured_at": "t"}],
        "tags": {"a": "2"},
        "config": {"lr": 1},
    }
    got = merge_context(ctx, own)
    assert got == {
        "code": {"commit": "abc"},
        "execution": {"backend": "local", "resources": {"cpus": 1}, "log_dir": "/x"},
        "nodes": [{"hostname": "n1", "os": "Debian", "captured_at": "t"}],
        "tags": {"a": "2"},
        "config": {"lr": 1},
    }
    # lists of another length are the version's own
    assert merge_context({"nodes": [{"a": 1}]}, {"nodes": []}) == {"nodes": []}
