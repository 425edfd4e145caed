"""A store shared by a Unix group, written by real users with real uids (issue 8).

The tests that need other users run as root (CI does): they create the group ``rrtest-permlab``
and the users ``rrtest-perm-alice``, ``rrtest-perm-bob`` (members) and ``rrtest-perm-eve`` (not a
member) with groupadd / useradd, idempotently, and run every writer in a child process that has
taken that user's uid, primary gid and groups and a umask (077 or 022) before it touches the store:
the kernel checks it exactly as it checks a login of that user. The child is forked, not exec'ed
(the interpreter may live where the test users cannot read it, e.g. under /root), so the modules
a child needs are imported here, before the fork.

Figures go to ``$RUNREC_RELIABILITY_RESULTS/<test name>.json``.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import traceback

import pytest
import rich.console
import rich.markup  # noqa: F401  (imported before the fork: see the docstring)
from helpers import write_figures as _results

import runrec_cluster as rr
import runrec_cluster.cli._common
import runrec_cluster.lineage.annotate
import runrec_cluster.lineage.criteria
import runrec_cluster.lineage.graph  # noqa: F401  (imported before the fork: see the docstring)
from runrec_cluster.errors import StoreError
from runrec_cluster.job.run import Run
from runrec_cluster.lineage.promote import promote, verify
from runrec_cluster.record import RunState, end_patch
from runrec_cluster.store import layout
from runrec_cluster.store import policy as perms

LAB = "rrtest-permlab"
ALICE, BOB, EVE = "rrtest-perm-alice", "rrtest-perm-bob", "rrtest-perm-eve"
DERIVED = ("changes", "index")  # derived, rebuildable data (the query index's): checked apart

need_root = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(t) for t in ("groupadd", "useradd", "usermod")),
    reason="needs root and groupadd/useradd/usermod, to create real users and a real group "
    "(CI runs the tests as root)",
)


# -- real users --------------------------------------------------------------------------------


def _admin(*cmd: str, ok: tuple[int, ...] = (0,)) -> None:
    """groupadd / useradd / usermod, retried while another process holds /etc/passwd's lock."""
    for _ in range(20):
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode in ok:
            return
        if "lock" not in (p.stderr + p.stdout).lower():
            break
        time.sleep(0.5)
    raise AssertionError(f"{' '.join(cmd)} exited {p.returncode}: {p.stderr.strip()}")


def _members(group: str) -> set[str]:
    return set(grp.getgrnam(group).gr_mem)


@pytest.fixture(scope="module")
def users():
    """uid of each test user; the group exists and only alice and bob are in it."""
    _admin("groupadd", "-f", LAB)
    for user, member in ((ALICE, True), (BOB, True), (EVE, False)):
        try:
            pwd.getpwnam(user)
        except KeyError:
            # --user-group: each has a primary group of their own, as on most clusters, so the
            # lab is a supplementary group and only setgid directories give files to it
            _admin("useradd", "--no-create-home", "--user-group", user, ok=(0, 9))
        if member and user not in _members(LAB):
            _admin("usermod", "-a", "-G", LAB, user)
    assert EVE not in _members(LAB), f"{EVE} must not be in {LAB}"
    return {u: pwd.getpwnam(u).pw_uid for u in (ALICE, BOB, EVE)}


@pytest.fixture
def lab(users):
    """``/tmp/rrtest-perms-*/lab``: the lab's directory, root:rrtest-permlab 2770, as an admin
    makes it on the shared filesystem (pytest's tmp_path is private to root); beside it ``pub``,
    the same but 2775 (everyone may enter)."""
    base = tempfile.mkdtemp(prefix="rrtest-perms-", dir="/tmp")
    os.chmod(base, 0o711)
    d = os.path.join(base, "lab")
    for path, mode in ((d, 0o2770), (os.path.join(base, "pub"), 0o2775)):
        os.mkdir(path)
        os.chown(path, 0, grp.getgrnam(LAB).gr_gid)
        os.chmod(path, mode)
    yield d
    shutil.rmtree(base, ignore_errors=True)


def as_user(user: str | None, umask: int, fn, *args):
    """``fn(*args)`` in a forked child running as ``user`` (None: as this process) with
    ``umask``: its JSON return value as ``{"value": ...}``, or ``{"error": "Type: message"}``."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(r)
            if user is not None:
                pw = pwd.getpwnam(user)
                os.setgroups(os.getgrouplist(user, pw.pw_gid))
                os.setgid(pw.pw_gid)
                os.setuid(pw.pw_uid)
            os.umask(umask)
            out = {"value": fn(*args)}
        except BaseException as exc:  # noqa: BLE001  (reported to the parent)
            out = {"error": f"{type(exc).__name__}: {exc}", "tb": traceback.format_exc()}
        try:
            data = json.dumps(out, default=str).encode()
        except BaseException as exc:  # noqa: BLE001
            data = json.dumps({"error": f"unserializable result: {exc}"}).encode()
        view = memoryview(data)
        while view:
            view = view[os.write(w, view) :]
        os._exit(0)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return json.loads(b"".join(chunks))


def must(res):
    assert "error" not in res, res.get("tb") or res["error"]
    return res["value"]


# -- what the writers do (in the child, as a test user) ----------------------------------------


def w_create(root: str, mode: str, group: str | None) -> str:
    s = rr.Store(root)
    s.ensure_writable(mode=mode, group=group)
    return perms.policy_for(root).describe()


def w_new_run(root: str, name: str, run_id: str | None = None) -> dict:
    perms.forget(root)  # read the settings from the store, as a fresh process does
    s = rr.Store(root)
    rid = run_id or layout.new_id()
    s.write_version(rid, "launch", {"run_id": rid, "name": name}, role="test")
    s.write_version(rid, "metrics", {"metrics": {f"{name}0": os.getuid()}}, role="test")
    digest = s.put_blob(f"{name} {rid}".encode())
    return {"run_id": rid, "blob": digest}


def w_add(root: str, run_id: str, key: str) -> int:
    perms.forget(root)
    s = rr.Store(root)
    return s.write_version(run_id, "metrics", {"metrics": {key: os.getuid()}}, role="test").seq


def w_blob_beside(root: str, digest: str) -> str:
    """A new blob in the same blobs/<aa>/ directory as ``digest`` (made by another user)."""
    import hashlib

    perms.forget(root)
    want = digest.split(":")[1][:2]
    i = 0
    while hashlib.sha256(data := f"beside {os.getuid()} {i}".encode()).hexdigest()[:2] != want:
        i += 1
    return rr.Store(root).put_blob(data)


def w_read(root: str, run_id: str) -> dict:
    s = rr.Store(root)
    rec = s.load(run_id)
    return {"metrics": sorted(rec.metrics), "versions": len(s.versions(run_id))}


def w_outsider(root: str, run_id: str, files: list[str], dirs: list[str]) -> dict:
    """What a user outside the group can get: files read, directories listed, the run loaded,
    a version written (each an error name, or "ok")."""
    read = listed = 0
    for f in files:
        try:
            with open(f, "rb") as fh:
                fh.read(1)
            read += 1
        except PermissionError:
            pass
    for d in dirs:
        try:
            os.listdir(d)
            listed += 1
        except PermissionError:
            pass
    out = {"files_read": read, "dirs_listed": listed}
    s = rr.Store(root)
    for what, call in (
        ("load", lambda: s.load(run_id)),
        ("write", lambda: s.write_version(run_id, "metrics", {"metrics": {"eve": 1}})),
        ("blob", lambda: s.put_blob(b"eve was here")),
    ):
        try:
            call()
            out[what] = "ok"
        except Exception as exc:  # noqa: BLE001
            out[what] = type(exc).__name__
            out[what + "_message"] = str(exc)
    return out


def w_try_write(root: str, run_id: str) -> dict:
    perms.forget(root)
    try:
        rr.Store(root).write_version(run_id, "metrics", {"metrics": {"late": 1}}, role="test")
        return {"ok": True}
    except StoreError as exc:
        return {"ok": False, "message": str(exc)}


def w_cli(*args: str) -> dict:
    """The `runrec` command in this process (its real code path, exit code and output)."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            runrec_cluster.cli.main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return {"code": code, "out": out.getvalue(), "err": err.getvalue()}


def w_promote(root: str, work: str, name: str) -> dict:
    """A run that wrote a directory artifact, succeeded, and is promoted to ``name``."""
    perms.forget(root)
    os.makedirs(os.path.join(work, "model", "sub"), exist_ok=True)
    with open(os.path.join(work, "model", "weights.bin"), "wb") as f:
        f.write(os.urandom(4096))
    with open(os.path.join(work, "model", "sub", "config.json"), "w") as f:
        f.write('{"layers": 3}')
    s = rr.Store(root)
    rid = layout.new_id()
    s.write_version(rid, "launch", {"run_id": rid, "name": "train"}, role="test")
    Run(s, rid).log_artifact(os.path.join(work, "model"), name="model")
    s.write_version(rid, "end", end_patch(None, source="job", state=RunState.SUCCEEDED))
    p = promote(s, rid, "model", to=name)
    return {"version": p.version, "files": p.files}


def w_tamper(vdir: str) -> dict:
    """Every way to change a promoted copy without chmod: each refused?"""
    files = [os.path.join(d, f) for d, _, fs in os.walk(vdir) for f in fs]
    dirs = [d for d, _, _ in os.walk(vdir)]
    out = {"files": len(files), "dirs": len(dirs), "refused": 0, "allowed": []}

    def attempt(what, call):
        try:
            call()
            out["allowed"].append(what)
        except PermissionError:
            out["refused"] += 1

    for f in files:
        attempt(f"write {f}", lambda f=f: open(f, "r+b").close())
        attempt(f"unlink {f}", lambda f=f: os.unlink(f))
        attempt(f"rename {f}", lambda f=f: os.rename(f, f + ".x"))
    for d in dirs:
        attempt(f"create in {d}", lambda d=d: open(os.path.join(d, "new"), "wb").close())
    return out


def w_verify(root: str, name: str) -> list:
    return [(c.ref, c.intact) for c in verify(rr.Store(root), name)]


# -- checks made as root -----------------------------------------------------------------------


def _walk(root: str):
    for d, _dirnames, files in os.walk(root):
        yield d, True
        for f in files:
            yield os.path.join(d, f), False


def _tree_modes(root: str, dir_mode: int, file_mode: int, gid: int, log_mode: int = 0) -> dict:
    """Every entry of the store outside the derived directories: mode and group as the settings
    say (promoted copies: checked by their own test; logs/ files are appendable: ``log_mode``).
    Returns counts and the wrong ones."""
    out = {"dirs": 0, "files": 0, "wrong": [], "tmp_left": 0, "derived": 0, "derived_unshared": []}
    for path, is_dir in _walk(root):
        rel = os.path.relpath(path, root)
        st = os.lstat(path)
        if rel.split(os.sep)[0] in DERIVED:
            out["derived"] += 1
            need = 0o070 if is_dir else 0o040
            if st.st_mode & need != need:
                out["derived_unshared"].append(f"{rel} {stat.S_IMODE(st.st_mode):04o}")
            continue
        if os.path.basename(path).startswith(layout.TMP_PREFIX):
            out["tmp_left"] += 1
        want = dir_mode if is_dir else log_mode if rel.startswith("logs" + os.sep) else file_mode
        out["dirs" if is_dir else "files"] += 1
        if stat.S_IMODE(st.st_mode) != want or st.st_gid != gid:
            out["wrong"].append(f"{rel} {stat.S_IMODE(st.st_mode):04o} gid {st.st_gid}")
    return out


def _cli(*args: str) -> subprocess.CompletedProcess:
    """The real `runrec` binary, as root."""
    return subprocess.run(
        [sys.executable, "-m", "runrec_cluster", *args], capture_output=True, text=True, timeout=120
    )


# -- the tests ---------------------------------------------------------------------------------


@need_root
@pytest.mark.parametrize(
    "mode, alice_umask, bob_umask, made_by",
    [
        ("group", 0o077, 0o022, "admin"),
        ("group", 0o022, 0o077, "alice"),
        ("all", 0o077, 0o077, "alice"),
    ],
    ids=["group-077-022-admin", "group-022-077-alice", "all-077-077-alice"],
)
def test_members_add_to_each_others_runs_and_outsiders_get_what_the_mode_says(
    lab, users, mode, alice_umask, bob_umask, made_by
):
    # a group store lives in the lab's directory; a store everyone reads, where everyone can reach
    root = os.path.join(os.path.dirname(lab), "lab" if mode == "group" else "pub", "store")
    gid = grp.getgrnam(LAB).gr_gid
    if made_by == "admin":
        p = _cli("init", root, "--mode", mode, "--group", LAB)
        assert p.returncode == 0, p.stderr
        assert f"mode {mode}" in p.stdout and LAB in p.stdout
    else:
        assert f"group {LAB}" in must(as_user(ALICE, alice_umask, w_create, root, mode, LAB))

    # alice's run makes the shard directory, the run directory and a blobs/<aa>/ directory
    a = must(as_user(ALICE, alice_umask, w_new_run, root, "alice"))
    # bob: a version in alice's run, a new run in alice's shard, a blob beside alice's
    assert must(as_user(BOB, bob_umask, w_add, root, a["run_id"], "bob")) == 3
    b_id = a["run_id"][:10] + layout.new_id()[10:]  # same millisecond: alice's shard
    b = must(as_user(BOB, bob_umask, w_new_run, root, "bob", b_id))
    beside = must(as_user(BOB, bob_umask, w_blob_beside, root, a["blob"]))
    # alice: a version in bob's run
    assert must(as_user(ALICE, alice_umask, w_add, root, b["run_id"], "alice")) == 3

    for user, umask in ((ALICE, alice_umask), (BOB, bob_umask)):
        for rid, keys in ((a["run_id"], ["alice0", "bob"]), (b["run_id"], ["alice", "bob0"])):
            got = must(as_user(user, umask, w_read, root, rid))
            assert got == {"metrics": keys, "versions": 3}, (user, rid, got)
    store = rr.Store(root)
    assert store.get_blob(beside).startswith(b"beside")
    owners = {os.stat(f).st_uid for f in store.version_files(a["run_id"])}
    assert owners == {users[ALICE], users[BOB]}

    dir_mode, file_mode = (0o2770, 0o440) if mode == "group" else (0o2775, 0o444)
    modes = _tree_modes(root, dir_mode, file_mode, gid)
    assert not modes["wrong"], modes["wrong"]
    assert modes["tmp_left"] == 0
    # the change journal (and the index, when made) are shared with the group as well
    assert modes["derived"] > 0 and not modes["derived_unshared"], modes["derived_unshared"]

    # the outsider tries everything; in mode all, the derived directories (lead's change journal,
    # the query index) are not counted as data (their modes are recorded apart)
    derived = tuple(os.path.join(root, d) for d in DERIVED)
    files = [p for p, is_dir in _walk(root) if not is_dir]
    dirs = [p for p, is_dir in _walk(root) if is_dir]
    if mode == "all":
        files = [p for p in files if not p.startswith(derived)]
        dirs = [p for p in dirs if not p.startswith(derived)]
    eve = must(as_user(EVE, 0o022, w_outsider, root, a["run_id"], files, dirs))
    if mode == "group":
        assert eve["files_read"] == 0 and eve["dirs_listed"] == 0, eve
        assert eve["load"] != "ok" and eve["write"] != "ok" and eve["blob"] != "ok", eve
    else:
        assert eve["files_read"] == len(files) and eve["dirs_listed"] == len(dirs), eve
        assert eve["load"] == "ok", eve
        assert eve["write"] == "StoreError" and "no permission" in eve["write_message"], eve
        assert eve["blob"] == "StoreError", eve
    assert "eve" not in store.load(a["run_id"]).metrics

    _results(
        f"test_permissions_members_and_outsiders_{mode}_{alice_umask:03o}_{bob_umask:03o}",
        f"mode {mode}: two members of the group (umask {alice_umask:03o} and {bob_umask:03o}) "
        "added versions to each other's runs, a run in a shard the other made and a blob in a "
        "blobs/ directory the other made; an outsider tried to read every file and list every "
        "directory, load a run, write a version and a blob",
        mode=mode,
        store_made_by=made_by,
        umasks=[f"{alice_umask:03o}", f"{bob_umask:03o}"],
        writers=2,
        cross_user_writes=4,
        dirs_checked=modes["dirs"],
        files_checked=modes["files"],
        wrong_mode_or_group=len(modes["wrong"]),
        temp_files_left=modes["tmp_left"],
        outsider_files_tried=len(files),
        outsider_files_read=eve["files_read"],
        outsider_dirs_tried=len(dirs),
        outsider_dirs_listed=eve["dirs_listed"],
        outsider_load=eve["load"],
        outsider_write=eve["write"],
        derived_entries=modes["derived"],
        derived_entries_not_group_readable=modes["derived_unshared"],
    )


@need_root
def test_promoted_artifacts_are_read_only_for_everyone(lab, users):
    root = os.path.join(lab, "store")
    assert _cli("init", root, "--mode", "group", "--group", LAB).returncode == 0
    gid = grp.getgrnam(LAB).gr_gid
    works = {}
    for user in (ALICE, BOB):  # each user's own working directory, private (0700)
        works[user] = os.path.join(os.path.dirname(lab), user)
        os.mkdir(works[user], 0o700)
        os.chown(works[user], users[user], -1)
    v1 = must(as_user(ALICE, 0o077, w_promote, root, works[ALICE], "churn"))
    v2 = must(as_user(BOB, 0o022, w_promote, root, works[BOB], "churn"))
    assert (v1["version"], v2["version"]) == (1, 2)  # bob added a version beside alice's

    base = os.path.join(root, "promoted", "churn")
    st = os.stat(base)
    assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o2770, gid)
    entries = wrong = 0
    for v in ("v1", "v2"):
        for path, is_dir in _walk(os.path.join(base, v)):
            st = os.lstat(path)
            entries += 1
            want = 0o2550 if is_dir else 0o440
            if stat.S_IMODE(st.st_mode) != want or st.st_gid != gid:
                wrong += 1
    assert wrong == 0

    v1dir = os.path.join(base, "v1")
    tamper = {u: must(as_user(u, 0o022, w_tamper, v1dir)) for u in (ALICE, BOB)}
    for u, t in tamper.items():
        assert t["allowed"] == [], (u, t["allowed"])
        assert t["refused"] == 3 * t["files"] + t["dirs"]
    assert must(as_user(BOB, 0o022, w_verify, root, "churn")) == [
        ["churn@v1", True],
        ["churn@v2", True],
    ]
    eve = must(as_user(EVE, 0o022, w_outsider, root, layout.new_id(), [], [v1dir]))
    assert eve["dirs_listed"] == 0

    _results(
        "test_permissions_promoted_read_only",
        "two members (umask 077 and 022) promoted versions 1 and 2 of one name in a mode-group "
        "store; the copies' files and directories were checked (0440 / 2550, the store's group), "
        "and each member tried to write, unlink and rename every file of version 1 and create a "
        "file in each of its directories",
        promoters=2,
        versions=2,
        entries_checked=entries,
        wrong_mode_or_group=wrong,
        tamper_attempts={u: 3 * t["files"] + t["dirs"] for u, t in tamper.items()},
        tamper_refused={u: t["refused"] for u, t in tamper.items()},
        verified_by_other_member=2,
    )


@need_root
def test_a_directory_made_without_the_settings_is_named_and_fixed_by_its_owner(lab, users):
    """A tool that ignores the settings (an old runrec, a plain os.makedirs) makes a run
    directory under umask 077: another member is refused with a message that names the
    directory and the fix, and ``runrec init STORE --fix`` by its owner repairs it."""
    root = os.path.join(lab, "store")
    assert _cli("init", root, "--mode", "group", "--group", LAB).returncode == 0
    rid = layout.new_id()
    run_dir = layout.run_dir(root, rid)
    must(as_user(ALICE, 0o077, lambda: os.makedirs(run_dir) or None))
    assert stat.S_IMODE(os.stat(run_dir).st_mode) == 0o2700  # setgid inherited, no group bits

    refused = must(as_user(BOB, 0o022, w_try_write, root, rid))
    assert not refused["ok"]
    msg = refused["message"]
    shard_dir = os.path.dirname(run_dir)  # the first directory that refuses bob
    assert run_dir in msg and f"{shard_dir} belongs to {ALICE}" in msg and "2700" in msg, msg
    assert f"runrec init {root} --fix" in msg and LAB in msg, msg

    by_bob = must(as_user(BOB, 0o022, w_cli, "init", root, "--fix"))
    assert by_bob["code"] == 1 and "belong to other users" in by_bob["err"], by_bob
    by_alice = must(as_user(ALICE, 0o077, w_cli, "init", root, "--fix"))
    assert by_alice["code"] == 0, by_alice
    assert stat.S_IMODE(os.stat(run_dir).st_mode) == 0o2770
    assert must(as_user(BOB, 0o022, w_try_write, root, rid)) == {"ok": True}
    _results(
        "test_permissions_fix_by_owner",
        "a run directory made under umask 077 by a tool that ignored the store's settings: "
        "another member's write was refused with a message naming it; `runrec init --fix` by "
        "that member exited 1 (not theirs), by its owner 0, and the write then succeeded",
        refused_message=msg,
        fix_by_other_exit=by_bob["code"],
        fix_by_owner_exit=by_alice["code"],
        write_after_fix_ok=True,
    )


@need_root
def test_an_existing_umask_store_becomes_group_shared(lab, users):
    root = os.path.join(lab, "store")
    a = must(as_user(ALICE, 0o077, lambda: (rr.Store(root).ensure_writable(), None)[1]))
    assert a is None
    a = must(as_user(ALICE, 0o077, w_new_run, root, "alice"))
    before = must(as_user(BOB, 0o022, w_try_write, root, a["run_id"]))
    assert not before["ok"] and "no permission" in before["message"]

    changed = must(as_user(ALICE, 0o077, w_cli, "init", root, "--mode", "group", "--group", LAB))
    assert changed["code"] == 0, changed
    assert "now mode group" in changed["out"] and "fixed" in changed["out"]
    assert must(as_user(BOB, 0o022, w_try_write, root, a["run_id"])) == {"ok": True}
    again = must(as_user(BOB, 0o022, w_cli, "init", root))
    assert again["code"] == 0 and "mode group" in again["out"]
    gid = grp.getgrnam(LAB).gr_gid
    modes = _tree_modes(root, 0o2770, 0o440, gid)
    assert not modes["wrong"], modes["wrong"]
    _results(
        "test_permissions_umask_store_converted",
        "a store made in mode umask under umask 077 refused another member; `runrec init "
        "--mode group` by its owner fixed every entry and the member could then add a version",
        fixed_line=[ln for ln in changed["out"].splitlines() if "fixed" in ln],
        dirs_checked=modes["dirs"],
        files_checked=modes["files"],
        wrong_mode_or_group=len(modes["wrong"]),
    )


def _interpreters() -> list[tuple[str, str]]:
    """(python, PYTHONPATH) pairs a test user may be able to run jobs with: this interpreter,
    else the system's of the same version with this checkout and its packages on the path (the
    local backend's ``local_python`` option, as on a cluster whose users cannot run the
    admin's interpreter)."""
    import msgspec

    path = os.pathsep.join(
        [
            os.path.dirname(os.path.dirname(rr.__file__)),
            os.path.dirname(os.path.dirname(msgspec.__file__)),
        ]
    )
    v = sys.version_info
    return [(sys.executable, ""), (f"/usr/bin/python{v.major}.{v.minor}", path)]


def w_probe_interpreter() -> dict:
    """The first interpreter this user can start a job process with, or why none."""
    why = []
    for python, path in _interpreters():
        env = dict(os.environ, PYTHONPATH=path) if path else dict(os.environ)
        try:
            p = subprocess.run(
                [python, "-c", "import runrec_cluster.job.execute, msgspec, zstandard"],
                capture_output=True,
                text=True,
                timeout=120,
                env=env,
            )
        except OSError as exc:
            why.append(f"{python}: {exc.strerror}")
            continue
        if p.returncode == 0:
            return {"python": python, "path": path}
        why.append(f"{python}: exit {p.returncode} {p.stderr.strip().splitlines()[-1:]}")
    return {"python": None, "why": "; ".join(why)}


def w_submit(root: str, work: str, a: int, python: str, path: str) -> dict:
    """A real run on the local backend, submitted by this user: a job process of its own."""
    import jobfns

    perms.forget(root)
    os.chdir(work)
    if path:
        os.environ["PYTHONPATH"] = path
    ex = rr.Executor(backend="local", store=root, name="perm", local_python=python)
    h = ex.submit(jobfns.add, a)
    value = h.result(timeout=120)
    logs = rr.Store(root).log_dir(h.run_id)
    return {"run_id": h.run_id, "value": value, "logs": logs}


def w_read_logs(logs: str) -> dict:
    out = {}
    for name in sorted(os.listdir(logs)):
        with open(os.path.join(logs, name), "rb") as f:
            out[name] = len(f.read())
    return out


@need_root
def test_two_members_runs_on_the_local_backend_share_log_directories(
    lab, users, tmp_path, monkeypatch
):
    """Real runs: each member's job process (their uid, umask 077) writes its record and logs;
    the second member's run makes its log directory in the shard log directory the first made,
    and each reads the other's logs."""
    probe = must(as_user(ALICE, 0o077, w_probe_interpreter))
    if probe["python"] is None:
        pytest.skip(f"no interpreter the test users can start job processes with: {probe['why']}")
    py = (probe["python"], probe["path"])
    # the first run loads every module a job submission needs, before the forks
    warm = rr.Store(tmp_path / "warm")
    monkeypatch.chdir(tmp_path)
    import jobfns

    assert rr.Executor(backend="local", store=warm, name="w").submit(jobfns.add, 1).result(60) == 11
    root = os.path.join(lab, "store")
    assert _cli("init", root, "--mode", "group", "--group", LAB).returncode == 0
    works = {}
    for user in (ALICE, BOB):
        works[user] = os.path.join(os.path.dirname(lab), user)
        os.mkdir(works[user], 0o700)
        os.chown(works[user], users[user], -1)
    a = must(as_user(ALICE, 0o077, w_submit, root, works[ALICE], 1, *py))
    b = must(as_user(BOB, 0o077, w_submit, root, works[BOB], 2, *py))
    assert (a["value"], b["value"]) == (11, 12)
    same_shard = a["run_id"][: layout.SHARD_LEN] == b["run_id"][: layout.SHARD_LEN]
    read_by_other = {
        ALICE: must(as_user(BOB, 0o077, w_read_logs, a["logs"])),
        BOB: must(as_user(ALICE, 0o077, w_read_logs, b["logs"])),
    }
    for who in (ALICE, BOB):
        assert {"stdout.txt", "stderr.txt"} <= set(read_by_other[who]), read_by_other
    gid = grp.getgrnam(LAB).gr_gid
    modes = _tree_modes(root, 0o2770, 0o440, gid, log_mode=0o640)
    logs = sum(1 for _ in _walk(os.path.join(root, "logs")))
    assert not modes["wrong"] and modes["tmp_left"] == 0, modes
    for rid, uid in ((a["run_id"], users[ALICE]), (b["run_id"], users[BOB])):
        rec = rr.Store(root).load(rid)
        assert rec.state == rr.RunState.SUCCEEDED
        assert {os.stat(f).st_uid for f in rr.Store(root).version_files(rid)} == {uid}
    _results(
        "test_permissions_local_backend_two_members",
        "two members (umask 077 each) ran a real job each on the local backend in a mode-group "
        "store; each read the other's logs; every directory and file of the store was checked",
        runs=2,
        job_interpreter=py[0],
        same_shard=same_shard,
        logs_read_by_other_member=read_by_other,
        dirs_checked=modes["dirs"],
        files_checked=modes["files"],
        log_entries_checked=logs,
        wrong_mode_or_group=len(modes["wrong"]),
    )


# -- anywhere (no other users needed) -----------------------------------------------------------


def test_the_mode_table():
    table = {
        m: (p.dir_mode, p.file_mode(0o444), p.ro_file_mode, p.ro_dir_mode, p.file_mode(0o644))
        for m in perms.MODES
        for p in [perms.Policy(mode=m, gid=None if m in ("umask", "private") else 1234)]
    }
    assert table == {
        "umask": (None, 0o444, 0o444, 0o555, 0o644),
        "private": (0o700, 0o400, 0o400, 0o500, 0o600),
        "group": (0o2770, 0o440, 0o440, 0o2550, 0o640),
        "all": (0o2775, 0o444, 0o444, 0o2555, 0o644),
    }


def test_settings_are_kept_in_the_store_and_applied_whatever_the_umask(tmp_path):
    my_group = grp.getgrgid(os.getegid()).gr_name
    root = str(tmp_path / "store")
    for umask in (0o077, 0o022, 0o000):
        s = os.path.join(root + f"-{umask:03o}")
        assert "mode group" in must(as_user(None, umask, w_create, s, "group", my_group))
        run = must(as_user(None, umask, w_new_run, s, "me"))
        modes = _tree_modes(s, 0o2770, 0o440, os.getegid())
        assert not modes["wrong"] and modes["files"] >= 3, (umask, modes)
        meta = perms.read_meta(s)
        assert meta["permissions"] == {"mode": "group", "gid": os.getegid(), "group": my_group}
        assert rr.Store(s).load(run["run_id"]).name == "me"
    # private: the owner only, even under umask 000
    p = root + "-private"
    must(as_user(None, 0o000, w_create, p, "private", None))
    must(as_user(None, 0o000, w_new_run, p, "me"))
    assert not _tree_modes(p, 0o700, 0o400, os.stat(p).st_gid)["wrong"]
    # no settings: as before (umask decides), and nothing about permissions in the metadata
    u = root + "-umask"
    must(as_user(None, 0o027, w_create, u, "umask", None))
    run = must(as_user(None, 0o027, w_new_run, u, "me"))
    assert "permissions" not in perms.read_meta(u)
    (version,) = rr.Store(u).version_files(run["run_id"])[:1]
    assert stat.S_IMODE(os.stat(version).st_mode) == 0o444 & ~0o027
    assert stat.S_IMODE(os.stat(os.path.dirname(version)).st_mode) == 0o777 & ~0o027


def test_settings_given_again_must_match(tmp_path):
    root = str(tmp_path / "store")
    s = rr.Store(root)
    s.ensure_writable(mode="group")  # the group of the new directory
    s.ensure_writable(mode="group")
    s.ensure_writable()  # no settings asked: the store's are used
    with pytest.raises(StoreError, match=r"already has the permission settings .*runrec init"):
        s.ensure_writable(mode="all")
    with pytest.raises(rr.ConfigError, match="unknown permission mode 'wide'"):
        rr.Store(str(tmp_path / "other")).ensure_writable(mode="wide")
    with pytest.raises(rr.ConfigError, match="only used by the modes"):
        rr.Store(str(tmp_path / "other")).ensure_writable(mode="private", group="0")


def test_init_command_exit_codes_and_output(tmp_path):
    root = str(tmp_path / "store")
    created = _cli("init", root, "--mode", "all")
    assert created.returncode == 0, created.stderr
    assert "created store" in created.stdout and "mode all" in created.stdout
    shown = _cli("init", "--store", root)
    assert shown.returncode == 0 and "mode all" in shown.stdout
    for args, needle in (
        (["--mode", "wide"], "Invalid value for '--mode'"),
        (["--mode", "private", "--group", "0"], "only used by the modes"),
        (["--group", "rrtest-no-such-group"], "no Unix group named 'rrtest-no-such-group'"),
        (["--store", str(tmp_path / "elsewhere")], "two stores given"),
    ):
        p = _cli("init", root, *args)
        assert p.returncode == 2 and needle in p.stderr, (args, p.returncode, p.stderr)
        assert "Traceback" not in p.stderr
    changed = _cli("init", root, "--mode", "private")
    assert changed.returncode == 0 and "now mode private" in changed.stdout, changed.stderr
    assert stat.S_IMODE(os.stat(root).st_mode) == 0o700
    assert perms.read_meta(root)["permissions"] == {"mode": "private"}
