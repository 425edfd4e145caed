"""The store: a directory of immutable record versions and content-addressed blobs."""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import socket
import stat
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec

from runrec_cluster import settings
from runrec_cluster.errors import AmbiguousRunId, CorruptRecord, RecordNotFound, StoreError
from runrec_cluster.record import (
    CONTEXT_KEY,
    SCHEMA_VERSION,
    RecordVersion,
    RunRecord,
    Writer,
    fold,
    merge_context,
)
from runrec_cluster.store import codec, fs, layout, packs
from runrec_cluster.store import policy as perms

DEFAULT_STORE = "runrec-store"
# versions written together (``Store.write_versions``: the launch of a map_array, its dispatch)
# go into a pack from this many runs on; fewer stay loose: a pack per small call would leave
# more files at rest than it saves (after `runrec pack`: at most 2 packs per 64 runs)
BATCH_PACK_RUNS = 64


def default_store_path(cwd: str | None = None) -> str:
    """$RUNREC_STORE, else ``store`` of the nearest runrec.toml / pyproject.toml (relative to
    that file; ``runrec_cluster.settings``), else ./runrec-store."""
    return settings.store_location(cwd) or os.path.join(
        os.path.abspath(cwd or os.getcwd()), DEFAULT_STORE
    )


@dataclass(frozen=True)
class ReadProblem:
    """A file that could not be read while listing; listing goes on without it."""

    path: str
    message: str
    run_id: str = ""  # the run it belongs to, where one was being read (``Store.load_all``)


class Store:
    """A run store rooted at a directory (local disk, NFS or Lustre).

    ``Store()`` uses the default location (see ``default_store_path``). ``fsync=True`` (or
    ``RUNREC_FSYNC=1``) makes every write durable across power loss; without it a write is
    still atomic and survives any process crash.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, fsync: bool | None = None):
        self.root = os.path.abspath(os.fspath(path)) if path is not None else default_store_path()
        if fsync is None:
            fsync = os.environ.get("RUNREC_FSYNC", "") not in ("", "0", "false", "no")
        self.fsync = fsync
        self._host = socket.gethostname()
        perms.register(self.root)  # writes apply the store's permission settings (perms.py)
        self._jpid = 0  # change journal of this process (see _journal): its file, kept open
        self._jfd: int | None = None  # for the current UTC hour
        self._jhour = -1
        self._contexts: dict[str, dict[str, Any]] = {}  # shared launch contexts read
        self._inside_ok: set[str] = set()  # directories check_inside found to be no links
        self._jname = ""
        self._packs = packs.PackCache(self.root)  # finished runs' versions in packs (packs.py)

    def __repr__(self) -> str:
        return f"Store({self.root!r})"

    def __fspath__(self) -> str:
        return self.root

    # -- setup -------------------------------------------------------------------------------

    def ensure_writable(self, *, mode: str | None = None, group: str | int | None = None) -> None:
        """Create the store if needed and prove it is writable; clear error otherwise.

        ``mode`` and ``group`` are the permission settings of a new store (``umask``, ``private``,
        ``group``, ``all``: see ``store/perms.py``), kept in its metadata file for every writer.
        Given for an existing store they must be its settings; change those with ``runrec init``.
        """
        if os.path.exists(self.root) and not os.path.isdir(self.root):
            raise StoreError(
                f"store path {self.root} exists and is not a directory. "
                "Pass --store / RUNREC_STORE pointing to a directory."
            )
        meta_path = os.path.join(self.root, layout.META_FILE)
        asked = None
        if mode is not None or group is not None:
            asked = perms.make_policy(self.root, mode, group)
        meta = perms.read_meta(self.root)
        if meta is None:
            pol = asked or perms.UMASK
            perms.remember(self.root, pol)
            fs.makedirs(self.root)
            perms.set_root(self.root, pol)  # also when it existed (made by hand, then init)
            fs.makedirs(os.path.join(self.root, "runs"))
            fs.makedirs(os.path.join(self.root, "blobs"))
            new = {"format": layout.STORE_FORMAT, "created_at": _now()}
            if pol.enforced:
                new["permissions"] = pol.to_meta()
            self.ensure_gitignore()
            if not fs.create_atomic(meta_path, codec.encode(new), fsync=self.fsync):
                meta = perms.read_meta(self.root)  # another process created it first
        if meta is not None:
            pol = perms.policy_from_meta(meta, meta_path)
            perms.remember(self.root, pol)
            if asked is not None and asked != pol:
                raise StoreError(
                    f"store {self.root} already has the permission settings {pol.describe()}, "
                    f"not {asked.describe()}. Use the store as it is, or change its settings "
                    f"with `runrec init {self.root} --mode {asked.mode}"
                    + (f" --group {asked.group}`" if asked.gid is not None else "`")
                    + " (which also fixes the files you own)."
                )
            fs.makedirs(os.path.join(self.root, "runs"))
            fs.makedirs(os.path.join(self.root, "blobs"))
        probe = os.path.join(self.root, "runs", f"{layout.TMP_PREFIX}probe-{secrets.token_hex(4)}")
        try:
            with open(probe, "wb"):
                pass
            os.unlink(probe)
        except OSError as exc:
            raise StoreError(
                f"store {self.root} is not writable ({exc.strerror}). Check its permissions, "
                "or point --store / RUNREC_STORE to a writable directory."
            ) from exc

    def ensure_gitignore(self) -> bool:
        """Put a ``.gitignore`` of ``*`` at the store root unless one is there (never
        overwritten), with the store's file mode; True when this call wrote it. A store made
        inside a git repository then never shows up as a change of the code."""
        path = os.path.join(self.root, layout.GITIGNORE)
        if os.path.lexists(path):
            return False
        self.check_inside(path)
        return fs.create_atomic(path, layout.GITIGNORE_TEXT, fsync=self.fsync)

    def exists(self) -> bool:
        return os.path.isdir(os.path.join(self.root, "runs"))

    # -- blobs -------------------------------------------------------------------------------

    def put_blob(self, data: bytes) -> str:
        """Store bytes once, by content; returns ``sha256:<hex>``."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        path = layout.blob_path(self.root, digest)
        if not os.path.exists(path):
            self.check_inside(os.path.dirname(path))
            fs.write_atomic(path, codec.compress(data), fsync=self.fsync)
        return digest

    def get_blob(self, digest: str) -> bytes:
        """The content of a blob, checked against its hash: the loose file first, then the
        packs (a small blob is packed with the runs that name it, ``store/pack_extras.py``;
        a loose file deleted between the two looks was packed before it was deleted)."""
        path = layout.blob_path(self.root, digest)
        try:
            data = codec.decompress(fs.read_bytes(path), path)
        except FileNotFoundError as exc:
            got = self._packs.blob(layout.digest_hex(digest))
            if got is None:
                raise CorruptRecord(
                    f"blob {digest} is missing from {self.root} (expected at {path}, or in a "
                    "pack). Run `runrec fsck`; the store may have been copied incompletely.",
                    path=path,
                ) from exc
            path, data = got
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise CorruptRecord(f"blob {path} does not match its hash {digest}.", path=path)
        return data

    def has_blob(self, digest: str) -> bool:
        """Whether the blob is in the store, loose or packed (not verified)."""
        if os.path.exists(layout.blob_path(self.root, digest)):
            return True
        return self._packs.blob(layout.digest_hex(digest)) is not None

    def put_obj(self, obj: Any) -> str:
        """A msgpack blob (never a pickle)."""
        return self.put_blob(codec.encode_raw(obj))

    def get_obj(self, digest: str, type: Any = Any) -> Any:
        return codec.unpack(self.get_blob(digest), type, layout.blob_path(self.root, digest))

    # -- versions ----------------------------------------------------------------------------

    def write_version(
        self, run_id: str, event: str, patch: dict[str, Any], *, role: str = "submitter"
    ) -> RecordVersion:
        """Append one immutable version to a run. Never overwrites anything."""
        d = layout.run_dir(self.root, run_id)
        seq = self._next_seq(d, run_id)  # also checks that d is no link out (check_inside)
        version = RecordVersion(
            schema_version=SCHEMA_VERSION,
            run_id=run_id,
            seq=seq,
            written_at=_now(),
            writer=Writer(host=self._host, pid=os.getpid(), role=role),
            event=event,
            patch=patch,
        )
        writer = secrets.token_hex(6)
        fs.write_atomic(
            os.path.join(d, layout.version_name(seq, writer)),
            codec.encode(version),
            fsync=self.fsync,
        )
        self._journal(f"{run_id} {seq}\n".encode())
        return version

    def write_versions(
        self,
        items: Sequence[tuple[str, str, dict[str, Any]]],
        *,
        role: str = "submitter",
        new_runs: bool = False,
    ) -> list[RecordVersion]:
        """Append one version to each of several runs (``(run_id, event, patch)``, one item per
        run), written together: ``BATCH_PACK_RUNS`` or more go into one pack per shard
        (``packs/<shard>/<id>.pack``, docs/store-layout.md *Launch packs*), linked into place
        whole, so that readers see all of them or none, also after a ``kill -9``; fewer are
        written loose, one by one (``write_version``). ``new_runs``: the run ids were just made
        (``layout.new_id``) and have no version yet: each gets seq 1 without a look at the
        store; otherwise each run's seq follows its highest, loose or packed."""
        if len(items) < BATCH_PACK_RUNS:
            return [self.write_version(r, e, p, role=role) for r, e, p in items]
        ids = [layout.check_run_id(r) for r, _, _ in items]
        if len(set(ids)) != len(ids):
            raise ValueError("write_versions takes one version per run; a run id repeats")
        tops = dict.fromkeys(ids, 0) if new_runs else self._top_seqs(ids)
        who = Writer(host=self._host, pid=os.getpid(), role=role)
        at = _now()
        out = []
        shards: dict[str, dict[str, list[packs.Entry]]] = {}
        for run_id, event, patch in items:
            seq = tops[run_id] + 1
            v = RecordVersion(
                schema_version=SCHEMA_VERSION,
                run_id=run_id,
                seq=seq,
                written_at=at,
                writer=who,
                event=event,
                patch=patch,
            )
            raw = codec.encode_raw(v)
            if len(raw) > codec.MAX_RECORD_BYTES:
                codec.encode(v)  # raises the StoreError that says what to do
            name = layout.version_name(seq, secrets.token_hex(6))
            shards.setdefault(run_id[: layout.SHARD_LEN], {})[run_id] = [(name, raw)]
            out.append(v)
        for shard, runs in sorted(shards.items()):
            d = self.check_inside(packs.shard_dir(self.root, shard))
            path = os.path.join(d, f"{layout.new_id()}.pack")
            if not fs.create_atomic(path, packs.encode_pack(runs), fsync=self.fsync):
                raise StoreError(f"cannot write {path}: a file of that name appeared meanwhile.")
        self._journal("".join(f"{v.run_id} {v.seq}\n" for v in out).encode())
        return out

    def _top_seqs(self, run_ids: list[str]) -> dict[str, int]:
        """run id -> its highest seq, loose or packed (``_next_seq``'s rule for many runs)."""
        out = {}
        for run_id in run_ids:
            top = _loose_top(layout.run_dir(self.root, run_id))
            out[run_id] = top or self._packs.max_seq(run_id)
        return out

    def _journal(self, line: bytes) -> None:
        """Append ``<run_id> <seq>`` lines to this process's change journal (after the versions
        are in place), so the query index finds new versions without a stat per run. One file
        per process and UTC hour: a file has one writer, so appends never interleave (also on
        NFS). Best effort: a failure here loses nothing, the index's periodic full scan finds
        the version anyway."""
        pid = os.getpid()
        hour = int(time.time() // 3600)
        # one write: whole, or (kill -9) cut short as the file's last, unterminated line, which
        # readers leave alone; no later append can follow it, the file's one writer is gone
        if self._jfd is not None and self._jpid == pid and self._jhour == hour:
            try:
                os.write(self._jfd, line)  # the usual case: the file of this hour is open
                return
            except OSError:
                pass  # reopened below
        if self._jpid != pid:  # new Store, or a forked child: a file of its own
            if self._jfd is not None:
                _close(self._jfd)  # the parent's file, inherited: not this process's to write
                self._jfd = None
            self._jpid = pid
            self._jname = f"{_safe_host(self._host)}-{pid}-{secrets.token_hex(4)}.log"
        self._close_journal()
        d = os.path.join(layout.changes_dir(self.root), layout.change_bucket(hour * 3600))
        try:
            self.check_inside(d)
            self._jfd = fs.open_append_fd(os.path.join(d, self._jname))  # the store's modes
            self._jhour = hour
            os.write(self._jfd, line)
        except (OSError, StoreError):  # StoreError: a link out of the store, not followed
            self._close_journal()

    def _close_journal(self) -> None:
        if self._jfd is not None:
            _close(self._jfd)
            self._jfd = None

    def __del__(self) -> None:
        try:
            if self._jfd is not None and self._jpid == os.getpid():
                _close(self._jfd)
        except Exception:  # interpreter shutdown: nothing to do
            pass

    def _next_seq(self, d: str, run_id: str) -> int:
        """One more than the highest seq of the run, whose directory ``d`` is then in place
        (checked to be no link out of the store, ``check_inside``). Loose versions first: a
        packer deletes the loose copies in ascending seq, so those left are the newest; only
        when none is left are the packs asked (after the listing: a version deleted meanwhile
        is packed by then).

        A run directory this Store has not seen yet is made first, under a checked parent: when
        the ``mkdir`` succeeds the run had no loose version at that instant, the listing is
        known (empty) and no ``lstat`` is needed (what ``mkdir`` made is no link). The usual
        case: a run's first loose version (after its launch pack, or a new run), one system
        call instead of three. A directory that exists is checked and listed as before."""
        names: list[str] | None = None
        made = False
        if d not in self._inside_ok:
            parent = os.path.dirname(d)
            if parent not in self._inside_ok:
                self.check_inside(parent)  # a planted shard link is refused before the mkdir
            try:
                fs.mkdir(d)
                made = True
                names = []
                self._remember_inside(d)
            except FileExistsError:
                self.check_inside(d)
            except FileNotFoundError:  # a new shard: made with its parents, then listed
                fs.makedirs(d)
                self.check_inside(d)
            except OSError as exc:
                raise StoreError(fs.explain(exc, d, "create the directory")) from exc
        if names is None:
            try:
                names = os.listdir(d)
            except FileNotFoundError:
                names = []
            except OSError as exc:
                raise StoreError(fs.explain(exc, d, "list")) from exc
        top = _top_of(names)
        if top == 0:
            top = self._packs.max_seq(run_id)
        if not names and not made:
            try:  # the usual case (a run's first loose version): its shard exists
                fs.mkdir(d, exist_ok=True)
            except FileNotFoundError:
                fs.makedirs(d)
            except OSError as exc:
                raise StoreError(fs.explain(exc, d, "create the directory")) from exc
        return top + 1

    def version_files(self, run_id: str) -> list[str]:
        d = layout.run_dir(self.root, run_id)
        try:
            names = os.listdir(d)
        except FileNotFoundError:
            return []
        return sorted(os.path.join(d, n) for n in names if layout.VERSION_RE.match(n))

    def versions(
        self, run_id: str, problems: list[ReadProblem] | None = None
    ) -> list[RecordVersion]:
        """Every readable version of a run, loose and packed (``store/packs.py``), a version
        in both places once. With ``problems``, unreadable files are reported there and
        skipped; without it, the first one raises ``CorruptRecord``."""
        out = []
        seen: set[str] = set()
        # loose files first, packs after: a file deleted by a packer in between is in a pack
        for path in self.version_files(run_id):
            try:
                data = codec.decompress(fs.read_bytes(path), path, codec.MAX_RECORD_BYTES)
            except FileNotFoundError:
                continue  # packed and deleted since the listing: read from its pack below
            except CorruptRecord as exc:
                if problems is None:
                    raise
                problems.append(ReadProblem(path, str(exc)))
                continue
            except OSError as exc:
                if problems is None:
                    raise StoreError(f"cannot read {path}: {exc.strerror}") from exc
                problems.append(ReadProblem(path, f"cannot read: {exc.strerror}"))
                continue
            seen.add(os.path.basename(path))
            self._add_version(out, run_id, data, path, problems)
        pack_probs: list[tuple[str, str]] | None = [] if problems is not None else None
        for pack, name, data in self._packs.entries(run_id, pack_probs):
            if name not in seen:
                seen.add(name)
                self._add_version(
                    out, run_id, data, packs.entry_label(pack, run_id, name), problems
                )
        if problems is not None and pack_probs:
            problems += [ReadProblem(p, m) for p, m in pack_probs]
        return out

    def _add_version(
        self,
        out: list[RecordVersion],
        run_id: str,
        data: bytes,
        path: str,
        problems: list[ReadProblem] | None,
    ) -> None:
        """Decode one version (msgpack bytes) of ``run_id`` and append it to ``out``."""
        try:
            v = codec.unpack(data, RecordVersion, path)
        except CorruptRecord as exc:
            if problems is None:
                raise
            problems.append(ReadProblem(path, str(exc)))
            return
        if v.run_id != run_id:
            msg = f"{path}: holds run {v.run_id}, not {run_id}; moved by hand?"
            if problems is None:
                raise CorruptRecord(msg, path=path)
            problems.append(ReadProblem(path, msg))
            return
        if CONTEXT_KEY in v.patch:
            v = self.expand_context(v, path, problems)
        out.append(v)

    def run_signature(self, run_id: str) -> int | None:
        """A number that changes when the run gets a version: the newer of its directory's
        modification time and its newest pack's (ns); None when the run is nowhere."""
        try:
            loose = os.stat(layout.run_dir(self.root, run_id)).st_mtime_ns
        except FileNotFoundError:
            loose = 0
        packed = max((i.mtime_ns for i in self._packs.run_packs(run_id, [])), default=0)
        top = max(loose, packed)
        return top or None

    def pack_indexes(self, shard: str) -> list[packs.PackIndex]:
        """The readable packs of one shard (damaged ones left out: ``runrec fsck`` names them)."""
        return self._packs.shard_indexes(shard, [])

    def pack_signatures(self, shard: str) -> dict[str, int]:
        """run id -> modification time (ns) of the newest pack holding it, for one shard."""
        return self._packs.signatures(shard)

    def shards(self) -> list[str]:
        """The shards that hold runs, loose or packed."""
        try:
            loose = {s for s in os.listdir(layout.runs_dir(self.root)) if layout.SHARD_RE.match(s)}
        except FileNotFoundError:
            loose = set()
        return sorted(loose | set(packs.pack_shards(self.root)))

    def put_context(self, patch: dict[str, Any]) -> str:
        """Store the part of a launch patch that every run of a sweep shares (code, environment,
        inputs, resources...) once, as a blob; the runs' launch versions name it under
        ``CONTEXT_KEY`` and carry only what is their own (schema v2)."""
        return self.put_obj(patch)

    def expand_context(
        self, v: RecordVersion, path: str, problems: list[ReadProblem] | None
    ) -> RecordVersion:
        """A version naming a shared context (``CONTEXT_KEY``), with the context merged under
        its own patch. With ``problems``, a context that cannot be read or merged is reported
        there and the version keeps its own patch; without it, ``CorruptRecord``."""
        digest = v.patch[CONTEXT_KEY]
        ctx = self._contexts.get(digest) if isinstance(digest, str) else None
        if ctx is None:
            try:
                if not (isinstance(digest, str) and layout.DIGEST_RE.match(digest)):
                    raise CorruptRecord(f"{digest!r} is not a blob digest", path=path)
                ctx = self.get_obj(digest, dict[str, Any])
            except (CorruptRecord, msgspec.ValidationError, msgspec.DecodeError, StoreError) as exc:
                msg = (
                    f"{path}: the shared launch context {digest} it names cannot be read ({exc}); "
                    "the run is shown without it (code, environment, inputs). Run `runrec fsck`."
                )
                if problems is None:
                    raise CorruptRecord(msg, path=path) from exc
                problems.append(ReadProblem(path, msg))
                ctx = {}
            else:
                if len(self._contexts) >= 64:
                    self._contexts.clear()
                self._contexts[digest] = ctx
        own = {k: x for k, x in v.patch.items() if k != CONTEXT_KEY}
        try:
            patch = merge_context(ctx, own)
        except RecursionError as exc:
            msg = f"{path}: nested too deeply to merge with its shared context. Run `runrec fsck`."
            if problems is None:
                raise CorruptRecord(msg, path=path) from exc
            problems.append(ReadProblem(path, msg))
            patch = own
        return msgspec.structs.replace(v, patch=patch)

    def load(self, run_id_or_prefix: str, problems: list[ReadProblem] | None = None) -> RunRecord:
        run_id = self.resolve(run_id_or_prefix)
        vs = self.versions(run_id, problems)
        if not vs:
            raise RecordNotFound(
                f"run {run_id} has no readable record in {self.root}. See `runrec fsck`."
            )
        return fold(vs)

    def load_all(self, problems: list[ReadProblem] | None = None) -> list[RunRecord]:
        """Every run that folds into a record, read-only (no backend is asked anything), in run
        id order. Unreadable files and runs whose versions do not fold are left out and
        reported in ``problems`` (path, message); a run with any problem is also named in
        ``problems`` so callers can avoid inferring a verdict from a partial history."""
        return self.load_runs(self.run_ids(), problems)

    def load_runs(
        self, run_ids: Iterable[str], problems: list[ReadProblem] | None = None
    ) -> list[RunRecord]:
        """``load_all`` for the full run ids ``run_ids`` only, in that order: runs that are not
        in the store are left out; problems are reported as ``load_all`` reports them."""
        out: list[RunRecord] = []
        for run_id in run_ids:
            probs: list[ReadProblem] = []
            vs = self.versions(run_id, probs)
            if problems is not None:
                problems += [ReadProblem(p.path, p.message, run_id) for p in probs]
            if not vs:
                continue
            try:
                rec = fold(vs)
            except Exception as exc:  # a version that decodes but does not fold
                if problems is not None:
                    problems.append(
                        ReadProblem(
                            layout.run_dir(self.root, run_id),
                            f"run {run_id} does not fold into a record ({exc}); see `runrec fsck`",
                            run_id,
                        )
                    )
                continue
            out.append(rec)
        return out

    # -- run ids -----------------------------------------------------------------------------

    def run_ids(self) -> Iterator[str]:
        """Every run id, loose or packed, in order (loose listed before the packs)."""
        base = layout.runs_dir(self.root)
        for shard in self.shards():
            try:
                names = {
                    n for n in os.listdir(os.path.join(base, shard)) if layout.RUN_ID_RE.match(n)
                }
            except (NotADirectoryError, FileNotFoundError):
                names = set()
            yield from sorted(names | self._packs.run_ids(shard))

    def resolve(self, prefix: str) -> str:
        """A full run id from an id or any unique prefix (like git)."""
        p = layout.normalize_prefix(prefix)
        if len(p) == layout.RUN_ID_LEN:
            if os.path.isdir(layout.run_dir(self.root, p)) or self._packs.max_seq(p):
                return p
            raise RecordNotFound(f"no run {p} in store {self.root}. List runs with `runrec ls`.")
        if len(p) >= layout.SHARD_LEN:
            d = os.path.join(layout.runs_dir(self.root), p[: layout.SHARD_LEN])
            try:
                loose = {n for n in os.listdir(d) if n.startswith(p)}
            except FileNotFoundError:
                loose = set()
            packed = self._packs.run_ids(p[: layout.SHARD_LEN])
            candidates = sorted(loose | {r for r in packed if r.startswith(p)})
        else:
            candidates = [r for r in self.run_ids() if r.startswith(p)]
        if not candidates:
            raise RecordNotFound(
                f"no run id starts with {p!r} in store {self.root}. List runs with `runrec ls`."
            )
        if len(candidates) > 1:
            shown = ", ".join(sorted(candidates)[:5])
            raise AmbiguousRunId(
                f"run id prefix {p!r} matches {len(candidates)} runs ({shown}"
                f"{', ...' if len(candidates) > 5 else ''}). Give more characters."
            )
        return candidates[0]

    def log_dir(self, run_id: str) -> str:
        return self.check_inside(layout.log_dir(self.root, run_id))

    def read_log(self, run_id: str, name: str, log_dir: str | None = None) -> bytes | None:
        """A run's log file ``name`` (``stdout.txt``, ``stderr.txt``): the file in ``log_dir``
        (default: the store's log directory of the run) first, then the packs (logs of small
        finished runs are packed, ``store/pack_extras.py``); None when neither has it."""
        d = log_dir or layout.log_dir(self.root, run_id)
        try:
            return fs.read_bytes(os.path.join(d, name))
        except FileNotFoundError:
            pass  # packed (and deleted after the pack landed), or never written
        return self._packs.logs(run_id).get(name)

    def check_inside(self, path: str) -> str:
        """``path`` (a place in the store) if, symlinks resolved, it lies inside the store: a
        link planted in the store that points elsewhere is refused (``StoreError``), never
        written through. Cheap when no link is on the way (an lstat per level)."""
        if path in self._inside_ok:
            return path
        parent = os.path.dirname(path)
        if parent in self._inside_ok:  # the usual case: one lstat of the last component
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                return path  # to be made, under a parent known to be no link
            except OSError:
                st = None
            if st is not None and not stat.S_ISLNK(st.st_mode):
                if stat.S_ISDIR(st.st_mode):
                    self._remember_inside(path)
                return path
        rel = os.path.relpath(path, self.root)
        if rel == os.curdir:
            return path
        cur = self.root
        for part in rel.split(os.sep):
            cur = os.path.join(cur, part)
            if cur in self._inside_ok:
                continue  # checked before by this Store (a shard, runs/, changes/<hour>)
            if part == os.pardir or os.path.islink(cur):
                return layout.inside(self.root, path, StoreError)
            if os.path.isdir(cur):
                self._remember_inside(cur)
        return path

    def _remember_inside(self, d: str) -> None:
        if len(self._inside_ok) > 4096:
            self._inside_ok.clear()
        self._inside_ok.add(d)


def _top_of(names: list[str]) -> int:
    """The highest seq among version file names (0: none)."""
    top = 0
    for n in names:
        m = layout.VERSION_RE.match(n)
        if m:
            top = max(top, int(m.group(1)))
    return top


def _loose_top(d: str) -> int:
    """The highest seq of the loose versions in run directory ``d`` (0: none, or no directory)."""
    try:
        return _top_of(os.listdir(d))
    except FileNotFoundError:
        return 0
    except OSError as exc:
        raise StoreError(fs.explain(exc, d, "list")) from exc


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def _safe_host(host: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]", "_", host)[:64] or "host"


def _now() -> datetime:
    return datetime.now(UTC)


def as_store(store: Store | str | os.PathLike[str] | None) -> Store:
    """``store`` itself, or the Store at that path (None: the default location)."""
    if isinstance(store, Store):
        return store
    return Store(store)
