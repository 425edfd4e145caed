"""Property tests (hypothesis) of the record codec and of schema evolution.

- Records and versions of every shape the schema allows, with config and metric values of
  every kind the API accepts (after ``capture.config.plain``), survive msgpack + zstd and the
  fold unchanged.
- Schema evolution (msgspec's rules, docs/record-schema.md): the released v1 store
  (tests/fixtures/store-v1) still reads; fields a future version adds are skipped; a version
  from a newer schema reads with a warning; fields left out take their defaults.

Strategies are built from the Structs themselves (``msgspec.inspect``), so a field added to
the schema is covered without touching this file. Hypothesis runs derandomized with a fixed
number of examples (reproducible, bounded in CI); every test counts the examples it ran and
writes them to ``$RUNREC_RELIABILITY_RESULTS/<test>.json``.
"""

from __future__ import annotations

import glob
import math
import os
import shutil
import subprocess
import sys
from datetime import UTC, date, datetime
from typing import Any

import msgspec
import msgspec.inspect as mi
from helpers import write_figures as _results
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import runrec_cluster as rr
from runrec_cluster.capture.config import plain
from runrec_cluster.errors import ConfigError
from runrec_cluster.record import (
    SCHEMA_VERSION,
    ConfigEntry,
    RecordVersion,
    RunRecord,
    Writer,
    fold,
    to_patch,
)
from runrec_cluster.store import codec, layout

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE_V1 = os.path.join(HERE, "..", "fixtures", "store-v1")


def _settings(examples: int) -> settings:
    """Derandomized, a fixed number of examples, no example database: the same cases on every
    run and every machine."""
    return settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        print_blob=True,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.function_scoped_fixture,
        ],
    )


# ---------------------------------------------------------------------------------------------
# Values the API accepts, and records of every shape the schema allows
# ---------------------------------------------------------------------------------------------

_INT = st.integers(min_value=-(2**63), max_value=2**64 - 1)  # msgpack's range; wider is refused
_FLOAT = st.floats(allow_nan=True, allow_infinity=True)
_TEXT = st.text(max_size=12)  # any code point but lone surrogates (see the report)
_AWARE = st.datetimes(timezones=st.sampled_from([UTC, None]))

_RAW_VALUES = st.recursive(
    st.none() | st.booleans() | _INT | _FLOAT | _TEXT | st.binary(max_size=8) | _AWARE | st.dates(),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(_TEXT | st.integers(-5, 5), inner, max_size=4)
    ),
    max_leaves=12,
)


def _accepted(v: Any) -> Any:
    try:
        return plain("k", v)
    except ConfigError:
        return _REFUSED


_REFUSED = object()
API_VALUES = _RAW_VALUES.map(_accepted).filter(lambda v: v is not _REFUSED)


def _strategy(t: Any) -> st.SearchStrategy[Any]:
    """A strategy for a msgspec type (``msgspec.inspect`` type info)."""
    if isinstance(t, mi.StructType):
        required, optional = {}, {}
        for f in t.fields:
            (required if f.required else optional)[f.name] = _strategy(f.type)
        cls = t.cls
        return st.fixed_dictionaries(required, optional=optional).map(lambda d: cls(**d))
    if isinstance(t, mi.UnionType):
        return st.one_of([_strategy(x) for x in t.types])
    if isinstance(t, mi.ListType):
        return st.lists(_strategy(t.item_type), max_size=3)
    if isinstance(t, mi.DictType):
        return st.dictionaries(_strategy(t.key_type), _strategy(t.value_type), max_size=3)
    if isinstance(t, mi.LiteralType):
        return st.sampled_from(t.values)
    if isinstance(t, mi.EnumType):
        return st.sampled_from(list(t.cls))
    simple = {
        mi.IntType: _INT,
        mi.FloatType: _FLOAT,
        mi.StrType: _TEXT,
        mi.BoolType: st.booleans(),
        mi.NoneType: st.none(),
        mi.DateTimeType: _AWARE,
        mi.AnyType: API_VALUES,
    }
    for kind, strat in simple.items():
        if isinstance(t, kind):
            return strat
    raise TypeError(f"no strategy for {t!r}: extend _strategy when the schema gains a type")


RECORDS = _strategy(mi.type_info(RunRecord))


def _same(expected: Any, got: Any) -> bool:
    """Equal as stored data: NaN equals NaN, a tuple equals a list; a naive datetime or a date
    comes back as its ISO text (msgpack has no type for them)."""
    if isinstance(expected, float) and isinstance(got, float):
        return (math.isnan(expected) and math.isnan(got)) or expected == got
    if isinstance(expected, datetime | date) and isinstance(got, str):
        naive = not isinstance(expected, datetime) or expected.tzinfo is None
        return naive and expected.isoformat() == got
    if isinstance(expected, list | tuple) and isinstance(got, list | tuple):
        return len(expected) == len(got) and all(map(_same, expected, got))
    if isinstance(expected, dict) and isinstance(got, dict):
        return list(expected) == list(got) and all(_same(expected[k], got[k]) for k in expected)
    if isinstance(expected, bool) or isinstance(got, bool):
        return type(expected) is type(got) and expected == got
    return type(expected) is type(got) and expected == got


def _builtins(obj: Any) -> Any:
    return msgspec.to_builtins(obj, builtin_types=(datetime, date, bytes))


# ---------------------------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------------------------


def test_run_records_round_trip_through_the_codec():
    count = {"examples": 0, "nodes": 0, "config_keys": 0, "metric_keys": 0}

    @_settings(150)
    @given(rec=RECORDS)
    def check(rec: RunRecord) -> None:
        count["examples"] += 1
        count["nodes"] += len(rec.nodes)
        count["config_keys"] += len(rec.config)
        count["metric_keys"] += len(rec.metrics)
        data = codec.encode(rec)
        back = codec.decode(data, RunRecord, "mem")
        assert _same(_builtins(rec), _builtins(back))
        # a fixed point: reading and writing again changes no byte
        assert codec.encode_raw(back) == codec.encode_raw(rec)

    check()
    assert count["examples"] >= 150
    _results(
        "test_run_records_round_trip_through_the_codec",
        "RunRecords of every shape the schema allows (strategies built from the Structs), with "
        "config and metric values the API accepts, encoded (msgpack + zstd) and decoded: equal, "
        "and a second pass changes no byte.",
        **count,
    )


def _versions_of(patches: list[dict[str, Any]], run_id: str) -> list[RecordVersion]:
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    return [
        RecordVersion(
            schema_version=SCHEMA_VERSION,
            run_id=run_id,
            seq=i + 1,
            written_at=t0,
            writer=Writer(host="h", pid=i, role="job"),
            event="metrics",
            patch=p,
        )
        for i, p in enumerate(patches)
    ]


def _merge(old: Any, new: Any) -> Any:
    """The fold's rule for dict fields (docs/record-schema.md): key by key, recursively."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = dict(old)
        for k, v in new.items():
            out[k] = _merge(old[k], v) if k in old else v
        return out
    return new


PATCHES = st.lists(
    st.fixed_dictionaries(
        {},
        optional={
            "metrics": st.dictionaries(_TEXT, API_VALUES, max_size=4),
            "config": st.dictionaries(
                _TEXT,
                st.builds(
                    ConfigEntry,
                    value=API_VALUES,
                    source=st.sampled_from(["default", "given", "generated"]),
                ),
                max_size=3,
            ),
            "tags": st.dictionaries(_TEXT, _TEXT, max_size=3),
            "warnings": st.lists(_TEXT, max_size=2),
        },
    ).map(lambda d: to_patch(**d)),
    min_size=1,
    max_size=5,
)


def test_versions_fold_the_same_after_storage():
    count = {"examples": 0, "versions": 0}

    @_settings(150)
    @given(patches=PATCHES)
    def check(patches: list[dict[str, Any]]) -> None:
        count["examples"] += 1
        count["versions"] += len(patches)
        vs = _versions_of(patches, layout.new_id())
        stored = [codec.decode(codec.encode(v), RecordVersion, "mem") for v in vs]
        rec = fold(stored)
        assert codec.encode_raw(rec) == codec.encode_raw(fold(vs))
        metrics: dict[str, Any] = {}
        tags: dict[str, Any] = {}
        config: dict[str, Any] = {}
        for p in patches:
            metrics = _merge(metrics, p.get("metrics", {}))
            tags = _merge(tags, p.get("tags", {}))
            config = _merge(config, p.get("config", {}))
        assert _same(metrics, rec.metrics)
        assert rec.tags == tags
        assert _same(config, _builtins(rec.config))

    check()
    _results(
        "test_versions_fold_the_same_after_storage",
        "Sequences of versions with metrics, config, tags and warnings patches: folded after "
        "msgpack + zstd they give the same record as before, and the dict fields merge key by key.",
        **count,
    )


def test_config_and_metrics_survive_a_real_store(tmp_path):
    store = rr.Store(tmp_path / "store")
    store.ensure_writable()
    count = {"examples": 0, "versions_written": 0}

    @_settings(30)
    @given(patches=PATCHES)
    def check(patches: list[dict[str, Any]]) -> None:
        count["examples"] += 1
        rid = layout.new_id()
        for p in patches:
            store.write_version(rid, "metrics", p, role="job")
            count["versions_written"] += 1
        rec = store.load(rid)
        expected = fold(_versions_of(patches, rid))
        assert codec.encode_raw(rec) == codec.encode_raw(expected)
        assert len(store.version_files(rid)) == len(patches)

    check()
    _results(
        "test_config_and_metrics_survive_a_real_store",
        "Generated patches written as version files by Store.write_version and read back by "
        "Store.load: the record equals the fold of what was written.",
        **count,
    )


# ---------------------------------------------------------------------------------------------
# Schema evolution
# ---------------------------------------------------------------------------------------------


def _fixture_versions() -> list[dict[str, Any]]:
    """The released v1 version files, as plain msgpack maps."""
    paths = sorted(glob.glob(os.path.join(FIXTURE_V1, "runs", "*", "*", "*.msgpack.zst")))
    assert len(paths) == 5
    return [codec.decode(open(p, "rb").read(), Any, p) for p in paths]


def test_released_v1_store_reads_every_file(tmp_path):
    src = tmp_path / "store"
    shutil.copytree(FIXTURE_V1, src)
    store = rr.Store(src)
    (rid,) = list(store.run_ids())
    files = store.version_files(rid)
    versions = [codec.decode(open(p, "rb").read(), RecordVersion, p) for p in files]
    assert [v.schema_version for v in versions] == [1] * 5
    assert [v.event for v in versions] == ["launch", "dispatch", "dispatch", "start", "end"]
    for v in versions:  # every released file is a fixed point of today's codec
        assert codec.decode(codec.encode(v), RecordVersion) == v
    rec = store.load(rid)
    assert rec.state == rr.RunState.SUCCEEDED and rec.name == "fixture-v1"
    assert rec.node is not None and rec.node.hostname and rec.process is not None
    assert store.get_obj(rec.launch_env.packages_blob, dict[str, str])  # the blob verifies
    from runrec_cluster.capture.data import DatasetCache

    (cache,) = glob.glob(os.path.join(src, "cache", "datasets", "*"))
    assert codec.decode(open(cache, "rb").read(), DatasetCache, cache).files
    meta = codec.decode(open(os.path.join(src, layout.META_FILE), "rb").read())
    assert meta["format"] == layout.STORE_FORMAT
    _results(
        "test_released_v1_store_reads_every_file",
        "The store written by the released schema v1 (tests/fixtures/store-v1): every version "
        "file, the package blob, the dataset cache and the store file read with today's code.",
        version_files=len(files),
        blobs=1,
        caches=1,
    )


def _struct_at(t: Any) -> mi.StructType | None:
    if isinstance(t, mi.StructType):
        return t
    if isinstance(t, mi.UnionType):
        for x in t.types:
            if isinstance(x, mi.StructType):
                return x
    return None


def _struct_positions(obj: Any, t: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths to every map in ``obj`` that the schema reads as a Struct, with that Struct."""
    out: list[Any] = []
    s = _struct_at(t)
    if s is not None and isinstance(obj, dict):
        out.append((path, s))
        by_name = {f.name: f.type for f in s.fields}
        for k, v in obj.items():
            if k in by_name:
                out += _struct_positions(v, by_name[k], (*path, k))
    elif isinstance(t, mi.ListType) and isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _struct_positions(v, t.item_type, (*path, i))
    elif isinstance(t, mi.DictType) and isinstance(obj, dict):
        for k, v in obj.items():
            out += _struct_positions(v, t.value_type, (*path, k))
    return out


def _version_positions(v: dict[str, Any]) -> list[tuple[Any, ...]]:
    """The version's own Structs, and the patch read as a (partial) RunRecord."""
    out = [p for p in _struct_positions(v, mi.type_info(RecordVersion)) if p[0][:1] != ("patch",)]
    return out + _struct_positions(v["patch"], mi.type_info(RunRecord), ("patch",))


def _at(obj: Any, path: tuple[Any, ...]) -> Any:
    for k in path:
        obj = obj[k]
    return obj


_NEW_NAMES = st.from_regex(r"[a-z][a-z0-9_]{0,11}", fullmatch=True)


def test_unknown_future_fields_are_skipped():
    base = _fixture_versions()
    count = {"examples": 0, "fields_injected": 0, "positions": 0}
    positions = [_version_positions(v) for v in base]
    count["positions"] = sum(len(p) for p in positions)

    @_settings(80)
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        count["examples"] += 1
        versions = msgspec.msgpack.decode(msgspec.msgpack.encode(base))  # a deep copy
        for i, v in enumerate(versions):
            picks = data.draw(st.lists(st.sampled_from(positions[i]), max_size=6))
            for path, struct in picks:
                known = {f.name for f in struct.fields} | {f.encode_name for f in struct.fields}
                name = data.draw(_NEW_NAMES.filter(lambda n, known=known: n not in known))
                _at(v, path)[name] = data.draw(API_VALUES)
                count["fields_injected"] += 1
        new = [
            codec.decode(codec.compress(msgspec.msgpack.encode(v)), RecordVersion, "mem")
            for v in versions
        ]
        old = [msgspec.convert(v, RecordVersion) for v in base]
        assert [(v.seq, v.event, v.writer) for v in new] == [
            (v.seq, v.event, v.writer) for v in old
        ]
        assert codec.encode_raw(fold(new)) == codec.encode_raw(fold(old))

    check()
    assert count["fields_injected"] > 100
    _results(
        "test_unknown_future_fields_are_skipped",
        "The released v1 versions with fields a future schema might add (random names and "
        "values) injected into every Struct they hold (the version, its writer, the record "
        "fields of the patch and the Structs inside): they decode and fold to the same record.",
        **count,
    )


def test_a_version_from_a_newer_schema_reads_with_a_warning(tmp_path):
    src = tmp_path / "store"
    shutil.copytree(FIXTURE_V1, src)
    store = rr.Store(src)
    (rid,) = list(store.run_ids())
    before = store.load(rid)
    future = {
        "schema_version": SCHEMA_VERSION + 1,
        "run_id": rid,
        "seq": 6,
        "written_at": datetime.now(UTC),
        "writer": {"host": "h", "pid": 1, "role": "future", "cluster": "c9"},
        "event": "verdict",
        "hologram": {"x": 1},
        "patch": {"tags": {"later": "yes"}, "quantum": [1, 2], "failure": None},
    }
    path = os.path.join(layout.run_dir(str(src), rid), layout.version_name(6, "f0f0f0f0f0f0"))
    with open(path, "wb") as f:
        f.write(codec.encode(future))
    rec = store.load(rid)
    assert rec.schema_version == SCHEMA_VERSION + 1
    assert rec.tags == {**before.tags, "later": "yes"}
    assert rec.state == before.state and rec.node == before.node
    exe = os.path.join(os.path.dirname(sys.executable), "runrec")
    cmd = [exe] if os.path.exists(exe) else [sys.executable, "-m", "runrec_cluster"]
    r = subprocess.run(
        [*cmd, "show", "--store", str(src), rid[:10]],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "newer record schema" in r.stderr and "Traceback" not in r.stderr
    assert "fixture-v1" in r.stdout
    _results(
        "test_a_version_from_a_newer_schema_reads_with_a_warning",
        "A version written by schema v2 (unknown fields at three levels) added to the v1 "
        "fixture run: Store.load folds it; `runrec show` exits 0 and warns.",
        cli_runs=1,
        exit_code=r.returncode,
    )


def _default(f: Any) -> Any:
    return f.default_factory() if f.default_factory is not msgspec.NODEFAULT else f.default


def test_fields_left_out_take_their_defaults():
    count = {"examples": 0, "fields_removed": 0}

    @_settings(120)
    @given(rec=RECORDS, data=st.data())
    def check(rec: RunRecord, data: st.DataObject) -> None:
        count["examples"] += 1
        doc = msgspec.msgpack.decode(codec.encode_raw(rec))
        removed = []
        # deepest first: a Struct removed whole takes the removals inside it along
        for path, struct in reversed(_struct_positions(doc, mi.type_info(RunRecord))):
            here = _at(doc, path)
            optional = [f for f in struct.fields if not f.required and f.encode_name in here]
            if not optional:
                continue
            picks = data.draw(st.lists(st.sampled_from(range(len(optional))), unique=True))
            for i in picks:
                name = optional[i].encode_name
                del here[name]
                removed = [r for r in removed if r[0][: len(path) + 1] != (*path, name)]
                removed.append((path, optional[i]))
        count["fields_removed"] += len(removed)
        back = codec.decode(codec.compress(msgspec.msgpack.encode(doc)), RunRecord, "mem")
        for path, f in removed:
            obj = back
            for k in path:
                obj = obj[k] if isinstance(k, int) or isinstance(obj, dict) else getattr(obj, k)
            assert getattr(obj, f.name) == _default(f), (path, f.name)

    check()
    assert count["fields_removed"] > 100
    _results(
        "test_fields_left_out_take_their_defaults",
        "Records of every shape with random optional fields removed at every Struct level "
        "(as an older writer would leave them out): each reads back as its default.",
        **count,
    )


def test_a_minimal_version_reads_with_defaults():
    """The smallest version an old writer could leave: no schema_version (v1 writers omitted
    it as a default), an empty patch."""
    rid = layout.new_id()
    doc = {
        "run_id": rid,
        "seq": 1,
        "written_at": datetime.now(UTC),
        "writer": {"host": "h", "pid": 1, "role": "job"},
        "event": "launch",
        "patch": {},
    }
    v = codec.decode(codec.encode(doc), RecordVersion, "mem")
    assert v.schema_version == 1
    assert fold([v]) == RunRecord(run_id=rid, schema_version=1)
