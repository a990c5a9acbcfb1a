"""The server's databases: a JSON registry of name -> {path, uid, options}, and the open handles.

The registry file (``DATA_DIR/store.json``) is rewritten atomically (temp file,
fsync, ``os.replace``, fsync of the directory), so uids survive restarts and a
crash never leaves a half-written registry. Named databases live under
``DATA_DIR/dbs/<name>`` and are recorded relative to the data dir (a copied data
dir serves its own files); a name that is an absolute path registers a LevelDB
there, but only under a root the operator allowed (``--allow-path``), re-checked at
every open.

Only DBCREATE (and the very first start, for ``default``) creates a database: a
registered one whose files are missing is an error naming it, never an empty
replacement. DBCREATE and DBDROP are journaled in the registry (an entry's
``state`` is "creating" or "dropping" while files are touched), so a crash at any
instant is completed or rolled back at the next start. Only LevelDB's own files are
ever deleted.

Handles are reference-counted (:meth:`Store.acquire`/:meth:`Store.release`):
a database is closed (unmount, drop, repair, idle unmount) only once no request is
using it, because plyvel releases the GIL inside LevelDB calls and closing under a
running call is a use-after-free. The global lock guards only short state changes:
LevelDB open/close/repair and file deletion run outside it, under the database's own
``busy`` mark, so a slow command holds only its own database.
"""
from __future__ import annotations

import fnmatch
import itertools
import json
import logging
import os
import tempfile
import threading
import time
import unicodedata
import uuid
from typing import Any, Dict, Iterable, List, Optional, Tuple

import plyvel

from ..protocol import ErrorCode

__all__ = ["Store", "CommandError", "DEFAULT_DB", "MAX_NAME_LENGTH", "LEVELDB_OPTIONS"]

log = logging.getLogger("elevator.server")

DEFAULT_DB = "default"
MAX_NAME_LENGTH = 255
STORE_FILE = "store.json"
DBS_DIR = "dbs"

#: LevelDB options a DBCREATE may pass (others are ignored), with their type.
LEVELDB_OPTIONS = {
    "create_if_missing": bool,
    "error_if_exists": bool,
    "paranoid_checks": bool,
    "bloom_filter_bits": int,
    "lru_cache_size": int,
    "write_buffer_size": int,
    "block_size": int,
    "max_open_files": int,
}

#: the files LevelDB writes in a database directory (and RepairDB's "lost" subdirectory)
LEVELDB_FILES = ("CURRENT", "LOCK", "LOG", "LOG.old", "MANIFEST-*", "*.ldb", "*.sst", "*.log",
                 "*.dbtmp")
_LOST_DIR = "lost"

_CLOSE_WAIT = 30.0  # seconds a close waits for requests still using the database

# Per-database busy marks: short ones a request waits for, slow ones it is refused at once.
_OPENING, _CLOSING = "opening", "closing"
_SLOW = ("DBREPAIR", "DBDROP", "DBCREATE")

# Journal states of a registry entry, and what existed at the path before a DBCREATE.
_CREATING, _DROPPING = "creating", "dropping"
_EXISTED = (None, "empty", "leveldb")


class CommandError(Exception):
    """A database operation refused; ``code`` is the protocol ErrorCode to answer with."""

    def __init__(self, message: str, code: int = ErrorCode.DATABASE, *,
                 detail: Optional[Dict[str, Any]] = None) -> None:
        super().__init__(message)
        self.code = code
        self.detail = detail  # protocol.ERR_DETAIL: the facts a client acts on


def unknown_uid(uid: str, name: Optional[str] = None) -> CommandError:
    """The answer to a request naming a uid that is not (any more) a database's."""
    return CommandError(f"Database {name or uid} doesn't exist", ErrorCode.RUNTIME,
                        detail={"unknown_uid": uid})


#: pairs INFO reads of a mounted database to estimate its key count (a bounded read)
KEYS_SAMPLE = 1000


class _Db:
    __slots__ = ("name", "path", "uid", "options", "handle", "users", "last_used", "busy",
                 "state", "existed", "relative")

    def __init__(self, name: str, path: str, uid: str, options: dict, *,
                 relative: bool = False) -> None:
        self.name = name
        self.path = path  # absolute
        self.uid = uid
        self.options = options
        self.handle: Optional[plyvel.DB] = None
        self.users = 0
        self.last_used = time.monotonic()
        #: None, _OPENING, _CLOSING or the slow command running on it
        self.busy: Optional[str] = None
        #: journal: None, _CREATING or _DROPPING
        self.state: Optional[str] = None
        #: during a create: what was at the path before (None: nothing)
        self.existed: Optional[str] = None
        #: stored relative to the data dir
        self.relative = relative


def _is_strictly_inside(path: str, root: str) -> bool:
    return path != root and os.path.commonpath([path, root]) == root


def _overlaps(a: str, b: str) -> bool:
    """The same directory, or one inside the other (deleting one deletes the other's files)."""
    return a == b or _is_strictly_inside(a, b) or _is_strictly_inside(b, a)


def _is_leveldb_file(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in LEVELDB_FILES)


def clean_options(options: Any) -> dict:
    """DBCREATE options as plyvel keyword arguments: known names, checked types."""
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise CommandError(f"options must be a map, not {type(options).__name__}", ErrorCode.TYPE)
    out = {}
    for key, value in options.items():
        if isinstance(key, bytes):
            key = key.decode("utf-8", "replace")
        kind = LEVELDB_OPTIONS.get(key)
        if kind is None:
            continue  # unknown options are ignored, as LevelDB's own bindings do
        if kind is bool:
            if not isinstance(value, (bool, int)):
                raise CommandError(f"option {key} must be a boolean", ErrorCode.TYPE)
            value = bool(value)
        elif isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise CommandError(f"option {key} must be a non-negative integer", ErrorCode.TYPE)
        out[key] = value
    return out


def check_name(name: str) -> None:
    """CommandError if ``name`` breaks the name rules (length, control characters, and for
    a relative name: no separators, no '..')."""
    if not name or len(name.encode("utf-8")) > MAX_NAME_LENGTH:
        raise CommandError(f"database name must be 1 to {MAX_NAME_LENGTH} bytes long")
    if any(unicodedata.category(c) == "Cc" for c in name):
        raise CommandError(f"invalid database name {name!r}: no control characters")
    if not os.path.isabs(name) and ("/" in name or "\\" in name or ".." in name or name == "."):
        raise CommandError(f"invalid database name {name!r}: no path separators and no '..' "
                           "(absolute paths need --allow-path on the server)")


def _remove_leveldb_files(path: str, *, keep_dir: bool = False) -> List[str]:
    """Delete LevelDB's own files in ``path`` (then the directory, if empty and not
    ``keep_dir``); the names of the other files, which are left alone."""
    try:
        names = os.listdir(path)
    except FileNotFoundError:
        return []
    others = []
    for name in sorted(names, key=lambda n: n == "CURRENT"):  # CURRENT last
        full = os.path.join(path, name)
        if name == _LOST_DIR and os.path.isdir(full) and not os.path.islink(full):
            others += [f"{_LOST_DIR}/{n}" for n in _remove_leveldb_files(full)]
        elif _is_leveldb_file(name) and not os.path.isdir(full):
            try:
                os.unlink(full)
            except FileNotFoundError:
                pass
        else:
            others.append(name)
    if not others and not keep_dir:
        try:
            os.rmdir(path)
        except OSError:
            pass
    return others


class Store:
    """Registry and open handles of the server's databases. Thread-safe."""

    def __init__(self, data_dir: str, *, allowed_roots: Iterable[str] = (),
                 sync: bool = False) -> None:
        self.given_data_dir = os.path.abspath(data_dir)
        self.data_dir = os.path.realpath(data_dir)
        self.dbs_dir = os.path.join(self.data_dir, DBS_DIR)
        self.store_path = os.path.join(self.data_dir, STORE_FILE)
        self.allowed_roots = [os.path.realpath(r) for r in allowed_roots]
        self.sync = sync
        self._lock = threading.Condition()
        self._save_lock = threading.Lock()
        self._by_name: Dict[str, _Db] = {}
        self._by_uid: Dict[str, _Db] = {}

    # ------------------------------------------------------------ registry file

    def load(self) -> None:
        """Read and validate the registry, finish the journaled DBCREATE/DBDROP a crash
        interrupted, mount ``default`` (creating it only on the very first start).

        Raises ValueError naming store.json when the registry is malformed."""
        os.makedirs(self.dbs_dir, exist_ok=True)
        first = not os.path.exists(self.store_path)
        if not first:
            for db in self._read_registry():
                self._by_name[db.name] = db
                self._by_uid[db.uid] = db
            self._recover()
        if DEFAULT_DB not in self._by_name:
            db = self._register(DEFAULT_DB, os.path.join(self.dbs_dir, DEFAULT_DB), {})
            db.relative = True
            if first or not os.path.exists(db.path):
                try:
                    db.handle = plyvel.DB(db.path, create_if_missing=True)
                except plyvel.Error as exc:
                    raise OSError(f"cannot create database 'default' at {db.path}: {exc}") from None
            self._save()
        db = self._by_name[DEFAULT_DB]
        if db.handle is None:
            try:
                db.handle = self._open_handle(db)
            except CommandError as exc:  # logged; the server still serves the others
                log.error("%s", exc)
        for db in self._by_name.values():
            if db.handle is None:
                problem = self._missing(db)
                if problem:
                    log.error("%s", problem)

    def _read_registry(self) -> List[_Db]:
        where = self.store_path

        def bad(what: str) -> ValueError:
            return ValueError(f"{where}: {what}")

        try:
            with open(where, encoding="utf-8") as f:
                raw = json.load(f)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise bad(f"not valid JSON ({exc})") from None
        entries = raw.get("databases", raw) if isinstance(raw, dict) else None
        if not isinstance(entries, dict):
            raise bad("not a database registry (expected a map of databases)")
        dbs: List[_Db] = []
        uids: Dict[str, str] = {}
        paths: Dict[str, str] = {}
        for name, entry in entries.items():
            try:
                check_name(name)
            except CommandError as exc:
                raise bad(f"database name {name!r}: {exc}") from None
            if not isinstance(entry, dict):
                raise bad(f"database {name!r}: entry must be a map, not {type(entry).__name__}")
            path, uid = entry.get("path"), entry.get("uid")
            if not isinstance(path, str) or not path or "\x00" in path:
                raise bad(f"database {name!r}: path must be a non-empty string, not {path!r:.80}")
            if not isinstance(uid, str) or not uid:
                raise bad(f"database {name!r}: uid must be a non-empty string, not {uid!r:.80}")
            options = entry.get("options")
            try:
                options = clean_options(options)
            except CommandError as exc:
                raise bad(f"database {name!r}: options: {exc}") from None
            state, existed = entry.get("state"), entry.get("existed")
            if state not in (None, _CREATING, _DROPPING):
                raise bad(f"database {name!r}: unknown state {state!r:.80}")
            if existed not in _EXISTED:
                raise bad(f"database {name!r}: unknown existed {existed!r:.80}")
            full, relative = self._stored_to_path(path)
            if uid in uids:
                raise bad(f"databases {uids[uid]!r} and {name!r} have the same uid {uid}")
            if full in paths:
                raise bad(f"databases {paths[full]!r} and {name!r} have the same path {path}")
            uids[uid] = paths[full] = name
            db = _Db(name, full, uid, options, relative=relative)
            db.state, db.existed = state, existed
            dbs.append(db)
        return dbs

    def _stored_to_path(self, stored: str) -> Tuple[str, bool]:
        """(absolute path, relative?) of a registry path; an absolute path into this data
        dir's ``dbs/`` (an old registry) counts as relative."""
        if not os.path.isabs(stored):
            full = os.path.normpath(os.path.join(self.data_dir, stored))
            if not _is_strictly_inside(full, self.data_dir):
                raise ValueError(f"{self.store_path}: path {stored!r} leaves the data dir")
            return full, True
        full = os.path.normpath(stored)
        for base in {self.data_dir, self.given_data_dir}:
            dbs = os.path.join(base, DBS_DIR)
            if _is_strictly_inside(full, dbs):
                return os.path.join(self.dbs_dir, os.path.relpath(full, dbs)), True
        return full, False

    def _entry(self, db: _Db) -> dict:
        path = os.path.relpath(db.path, self.data_dir) if db.relative else db.path
        entry: Dict[str, Any] = {"path": path, "uid": db.uid, "options": db.options}
        if db.state:
            entry["state"] = db.state
            entry["existed"] = db.existed
        return entry

    def _save(self) -> None:
        """Write the registry atomically (never call it holding ``_lock``)."""
        with self._save_lock:
            with self._lock:  # the latest state, as the last writer
                data = {"version": 1, "databases": {
                    db.name: self._entry(db) for db in self._by_name.values()}}
            fd, tmp = tempfile.mkstemp(prefix=".store-", suffix=".tmp", dir=self.data_dir)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump(data, f, indent=2, sort_keys=True)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.store_path)
            except BaseException:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise
            dir_fd = os.open(self.data_dir, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def _register(self, name: str, path: str, options: dict) -> _Db:
        db = _Db(name, path, uuid.uuid4().hex, options)
        self._by_name[name] = db
        self._by_uid[db.uid] = db
        return db

    def _unregister(self, db: _Db) -> None:
        self._by_name.pop(db.name, None)
        self._by_uid.pop(db.uid, None)

    def _recover(self) -> None:
        """Finish the drops and roll back the creates a crash interrupted."""
        changed = False
        for db in [d for d in self._by_name.values() if d.state]:
            changed = True
            if db.state == _DROPPING:
                self._delete_files(db)
                log.warning("recovery: finished dropping %s (%s)", db.name, db.path)
            else:
                if db.existed != "leveldb":  # never the files of a LevelDB it was registering
                    self._delete_files(db, keep_dir=db.existed == "empty")
                log.warning("recovery: rolled back the creation of %s (%s)", db.name, db.path)
            self._unregister(db)
        for tmp in os.listdir(self.data_dir):
            if tmp.startswith(".store-") and tmp.endswith(".tmp"):
                try:
                    os.unlink(os.path.join(self.data_dir, tmp))
                except OSError:
                    pass
        if changed:
            self._save()

    # ------------------------------------------------------------------ names

    def resolve_path(self, name: str) -> str:
        """The directory of database ``name``; CommandError if the name is not acceptable."""
        check_name(name)
        if os.path.isabs(name):
            real = os.path.realpath(name)
            if _overlaps(real, self.data_dir):  # its DBDROP would delete the data dir's files
                raise CommandError(f"database path {name!r} refused: it overlaps the server's "
                                   f"data dir {self.data_dir}")
            for root in self.allowed_roots:
                if _is_strictly_inside(real, root):
                    return real
            raise CommandError(
                f"database path {name!r} refused: absolute paths are accepted only under a root "
                "the server allows; start elevator-server with --allow-path DIR "
                "(a parent of the path) to allow it")
        return os.path.join(self.dbs_dir, name)

    def _path_problem(self, db: _Db) -> Optional[str]:
        """Why ``db``'s path may not be used now (a symlink swapped in later...), or None."""
        real = os.path.realpath(db.path)
        roots = list(self.allowed_roots)
        if db.relative:
            roots.append(os.path.realpath(self.dbs_dir))
        elif _overlaps(real, self.data_dir):
            return f"its path {db.path} now overlaps the server's data dir"
        if not any(_is_strictly_inside(real, root) for root in roots):
            return (f"its path {db.path} resolves to {real}, outside the data dir's dbs/ and "
                    "the roots allowed with --allow-path")
        return None

    def _missing(self, db: _Db) -> Optional[str]:
        """The error to give for ``db``'s files (refused path, missing directory, missing
        CURRENT), or None when it can be opened."""
        problem = self._path_problem(db)
        if problem is None:
            if not os.path.isdir(db.path):
                problem = f"its directory {db.path} is missing (restore it, or DBDROP the name)"
            elif not os.path.exists(os.path.join(db.path, "CURRENT")):
                problem = (f"{db.path} has no CURRENT file (repair it with DBREPAIR "
                           f"[{db.name!r}], or restore it)")
        return f"database {db.name!r} cannot be opened: {problem}" if problem else None

    def _may_delete(self, path: str) -> bool:
        real = os.path.realpath(path)
        return any(_is_strictly_inside(real, root)
                   for root in [os.path.realpath(self.dbs_dir), *self.allowed_roots])

    def _delete_files(self, db: _Db, *, keep_dir: bool = False) -> None:
        """Delete ``db``'s LevelDB files (never anything else, never outside the roots)."""
        if self._path_problem(db) or not self._may_delete(db.path):
            log.warning("not deleting the files of %s at %s: outside the allowed roots",
                        db.name, db.path)
            return
        others = _remove_leveldb_files(db.path, keep_dir=keep_dir)
        if others:
            log.warning("left %s in %s: not LevelDB's files", ", ".join(others), db.path)

    @staticmethod
    def _existing_kind(path: str) -> Optional[str]:
        """What is at a path being registered: None (nothing), "empty" or "leveldb";
        CommandError for anything else."""
        if not os.path.lexists(path):
            return None
        if not os.path.isdir(path):
            raise CommandError(f"database path {path!r} refused: it exists and is not a directory")
        names = os.listdir(path)
        if not names:
            return "empty"
        if "CURRENT" in names:
            return "leveldb"
        raise CommandError(f"database path {path!r} refused: the directory is not empty and is "
                           "not a LevelDB (no CURRENT file); use an empty or a new directory")

    # ------------------------------------------------------------ open/close

    def _open_handle(self, db: _Db) -> plyvel.DB:
        """Open ``db``'s existing LevelDB (never creating it). CommandError (DATABASE) naming
        it when its files are missing, refused or damaged."""
        problem = self._missing(db)
        if problem:
            log.error("%s", problem)
            raise CommandError(problem)
        kwargs = {k: v for k, v in db.options.items() if k in LEVELDB_OPTIONS}
        kwargs["create_if_missing"] = False  # registered: a missing one is an error
        kwargs.pop("error_if_exists", None)  # only meaningful at creation
        try:
            handle = plyvel.DB(db.path, **kwargs)
        except plyvel.Error as exc:
            log.error("cannot open database %s: %s", db.name, exc)
            raise CommandError(f"cannot open database {db.name!r}: {exc}") from None
        log.info("mounted %s (%s)", db.name, db.path)
        return handle

    def _wait_usable(self, db: _Db) -> None:
        """Wait (holding the lock) while ``db`` is being opened or closed; CommandError at
        once when a slow command runs on it."""
        deadline = time.monotonic() + _CLOSE_WAIT
        while db.busy is not None:
            if db.busy not in (_OPENING, _CLOSING):
                raise CommandError(f"database {db.name} is busy ({db.busy} in progress)",
                                   ErrorCode.RUNTIME)
            left = deadline - time.monotonic()
            if left <= 0:
                raise CommandError(f"database {db.name} is busy", ErrorCode.RUNTIME)
            self._lock.wait(left)

    def _ensure_open(self, db: _Db, *, use: bool) -> plyvel.DB:
        """``db``'s handle, opened if needed (outside the lock); ``use``: count a user."""
        with self._lock:
            self._wait_usable(db)
            if self._by_uid.get(db.uid) is not db:  # dropped since the caller looked it up
                raise unknown_uid(db.uid, db.name)
            if db.handle is not None:
                if use:
                    db.users += 1
                db.last_used = time.monotonic()
                return db.handle
            db.busy = _OPENING
        try:
            handle = self._open_handle(db)
        except BaseException:
            with self._lock:
                db.busy = None
                self._lock.notify_all()
            raise
        with self._lock:
            db.handle, db.busy = handle, None
            if use:
                db.users += 1
            db.last_used = time.monotonic()
            self._lock.notify_all()
            return handle

    def _take(self, db: _Db, busy: str, *, wait: bool = True) -> Optional[plyvel.DB]:
        """Mark ``db`` busy and take its handle once no request uses it (caller holds the
        lock); CommandError (RUNTIME) if it stays in use, or is busy already."""
        self._wait_usable(db)
        if db.users and not wait:
            raise CommandError(f"database {db.name!r} is in use", ErrorCode.RUNTIME)
        db.busy = busy
        if db.users:
            deadline = time.monotonic() + _CLOSE_WAIT
            while db.users and time.monotonic() < deadline:
                self._lock.wait(deadline - time.monotonic())
            if db.users:
                db.busy = None
                self._lock.notify_all()
                raise CommandError(f"database {db.name!r} is busy", ErrorCode.RUNTIME)
        handle, db.handle = db.handle, None
        return handle

    def _done(self, db: _Db, handle: Optional[plyvel.DB] = None) -> None:
        with self._lock:
            db.busy = None
            if handle is not None:
                db.handle = handle
            self._lock.notify_all()

    def _close(self, db: _Db, *, wait: bool = True) -> None:
        """Close ``db`` once no request uses it (the close itself outside the lock)."""
        with self._lock:
            if db.handle is None:
                return
            handle = self._take(db, _CLOSING, wait=wait)
        try:
            if handle is not None:
                handle.close()
                log.info("unmounted %s", db.name)
        finally:
            self._done(db)

    def close_all(self) -> None:
        with self._lock:
            dbs = list(self._by_name.values())
        for db in dbs:
            try:
                self._close(db, wait=True)
            except Exception:  # pragma: no cover - closing at exit is best effort
                log.exception("closing %s", db.name)

    # -------------------------------------------------------------- requests

    def _by_uid_or_fail(self, uid: str) -> _Db:
        db = self._by_uid.get(uid)
        if db is None:
            raise unknown_uid(uid)
        return db

    def acquire(self, uid: str) -> plyvel.DB:
        """The open handle of database ``uid`` (mounting it if needed); pair with :meth:`release`.

        CommandError: unknown uid (RUNTIME), a slow command running on it (RUNTIME, at
        once), files missing or damaged (DATABASE)."""
        with self._lock:
            db = self._by_uid_or_fail(uid)
            if db.handle is not None and db.busy is None:  # the common case, one lock
                db.users += 1
                db.last_used = time.monotonic()
                return db.handle
        return self._ensure_open(db, use=True)

    def release(self, uid: str) -> None:
        with self._lock:
            db = self._by_uid.get(uid)
            if db is not None:
                db.users -= 1
                db.last_used = time.monotonic()
                if not db.users:
                    self._lock.notify_all()

    def has_uid(self, uid: str) -> bool:
        return uid in self._by_uid

    def name_of(self, uid: str) -> Optional[str]:
        db = self._by_uid.get(uid)
        return db.name if db else None

    def is_mounted(self, name: str) -> bool:
        db = self._by_name.get(name)
        return db is not None and db.handle is not None

    # ------------------------------------------------------------ management

    def _get(self, name: str) -> _Db:
        db = self._by_name.get(name)
        if db is None:
            raise CommandError(f"Database {name} doesn't exist")
        return db

    def connect(self, name: str) -> str:
        with self._lock:
            db = self._get(name)
        self._ensure_open(db, use=False)
        return db.uid

    def mount(self, name: str) -> None:
        with self._lock:
            db = self._get(name)
        self._ensure_open(db, use=False)

    def unmount(self, name: str) -> None:
        with self._lock:
            db = self._get(name)
        if name != DEFAULT_DB:  # default is always mounted: unmounting it is a no-op
            self._close(db)

    def list(self) -> List[str]:
        with self._lock:
            return [db.name for db in self._by_name.values() if db.state is None]

    def describe(self) -> List[Tuple[str, str, bool]]:
        """``(name, absolute path, mounted)`` of every database (any thread may call it)."""
        with self._lock:
            return [(db.name, db.path, db.handle is not None)
                    for db in self._by_name.values() if db.state is None]

    def usage(self, name: str, disk_bytes: Optional[int]) -> Dict[str, Any]:
        """INFO's figures of database ``name``: ``idle`` (seconds since its last use) and,
        when it is mounted (INFO never mounts one to describe it), ``leveldb_stats`` and
        ``keys_estimate``: exact up to KEYS_SAMPLE keys, else ``disk_bytes`` over the mean
        size of the first KEYS_SAMPLE pairs (LevelDB keeps no count; compression on disk
        makes it low). CommandError when ``name`` is gone."""
        with self._lock:
            db = self._get(name)
            out: Dict[str, Any] = {"idle": time.monotonic() - db.last_used,
                                   "leveldb_stats": None, "keys_estimate": None}
            if db.handle is None or db.busy is not None:
                return out
            db.users += 1  # the handle stays open while it is read
            handle = db.handle
        try:
            raw = handle.get_property(b"leveldb.stats")
            keys = sample_bytes = 0
            with handle.iterator(fill_cache=False) as it:
                for key, value in itertools.islice(it, KEYS_SAMPLE):
                    keys += 1
                    sample_bytes += len(key) + len(value)
        finally:
            self.release(db.uid)
        out["leveldb_stats"] = None if raw is None else raw.decode("utf-8", "replace")
        if keys < KEYS_SAMPLE or not disk_bytes:
            out["keys_estimate"] = keys
        else:
            out["keys_estimate"] = max(keys, round(disk_bytes / (sample_bytes / keys)))
        return out

    def create(self, name: str, options: Any) -> None:
        """Register and create database ``name``: a new path, an empty directory or an
        existing LevelDB. CommandError (DATABASE) when refused."""
        opts = clean_options(options)
        path = self.resolve_path(name)  # before anything touches the disk
        with self._lock:
            if name in self._by_name:
                raise CommandError(f"Database {name} already exists")
            for other in self._by_name.values():  # another name for (part of) its files
                if _overlaps(path, os.path.realpath(other.path)):
                    raise CommandError(f"database path {path!r} refused: it overlaps database "
                                       f"{other.name!r} at {other.path}")
            existed = self._existing_kind(path)
            if opts.get("error_if_exists") and existed == "leveldb":
                raise CommandError(f"Database {name} already exists at {path}")
            db = self._register(name, path, opts)
            db.relative = not os.path.isabs(name)
            db.state, db.existed, db.busy = _CREATING, existed, "DBCREATE"
        try:
            self._save()  # the journal: a crash from here on is rolled back at start
        except BaseException:
            with self._lock:
                self._unregister(db)
            raise
        handle = None
        try:
            kwargs = dict(opts)
            kwargs["create_if_missing"] = True
            kwargs.pop("error_if_exists", None)
            try:
                handle = plyvel.DB(path, **kwargs)
            except plyvel.Error as exc:
                raise CommandError(f"cannot create database {name!r}: {exc}") from None
            with self._lock:
                db.state = db.existed = None
            self._save()
        except BaseException:
            if handle is not None:
                handle.close()
            with self._lock:
                db.state = _CREATING
            if existed != "leveldb":
                self._delete_files(db, keep_dir=existed == "empty")
            with self._lock:
                self._unregister(db)
            try:
                self._save()
            except OSError:  # the journal entry stays: the next start rolls it back
                log.exception("saving the registry after a failed create of %s", name)
            raise
        self._done(db, handle)
        log.info("created %s (%s)", name, path)

    def drop(self, name: str) -> None:
        """Unregister ``name`` and delete its LevelDB files (only those). CommandError:
        unknown, ``default``, outside the allowed roots (DATABASE), busy (RUNTIME)."""
        with self._lock:
            db = self._get(name)
            if name == DEFAULT_DB:
                raise CommandError("the default database cannot be dropped")
            if db.state is not None:
                raise CommandError(f"Database {name} doesn't exist")
            if not self._may_delete(db.path):
                raise CommandError(
                    f"not dropping {name!r}: its files at {db.path} are outside the data dir and "
                    "the roots allowed with --allow-path")
            handle = self._take(db, "DBDROP")
            db.state = _DROPPING
        try:
            self._save()  # the journal: a crash from here on finishes the drop at start
        except BaseException:
            with self._lock:
                db.state = None
            self._done(db, handle)
            raise
        if handle is not None:
            handle.close()
        self._delete_files(db)
        with self._lock:
            self._unregister(db)
            db.busy = None
            self._lock.notify_all()
        self._save()
        log.info("dropped %s (%s)", name, db.path)

    def repair(self, uid: Optional[str] = None, *, name: Optional[str] = None) -> None:
        """LevelDB's RepairDB on a database given by uid or by name (a registered one that
        cannot be opened is reachable by name). CommandError: unknown, busy (RUNTIME),
        directory missing or repair failed (DATABASE)."""
        with self._lock:
            if name is not None:
                db = self._get(name)
            else:
                db = self._by_uid_or_fail(uid or "")
            if db.state is not None:
                raise CommandError(f"Database {db.name} doesn't exist")
            handle = self._take(db, "DBREPAIR")
        new = None
        try:
            if handle is not None:
                handle.close()
            problem = self._path_problem(db)
            if problem is None and not os.path.isdir(db.path):
                problem = f"its directory {db.path} is missing"
            if problem:
                raise CommandError(f"cannot repair database {db.name!r}: {problem}")
            try:
                plyvel.repair_db(db.path)
            except plyvel.Error as exc:
                raise CommandError(f"repair of {db.name!r} failed: {exc}") from None
            new = self._open_handle(db)
        finally:
            self._done(db, new)
        log.info("repaired %s", db.name)

    def unmount_idle(self, idle_seconds: float) -> List[str]:
        """Close databases (but ``default``) unused for ``idle_seconds``; their names."""
        now = time.monotonic()
        with self._lock:
            idle = [db for db in self._by_name.values()
                    if db.handle is not None and db.name != DEFAULT_DB and not db.users
                    and db.busy is None and now - db.last_used >= idle_seconds]
        closed = []
        for db in idle:
            try:
                self._close(db, wait=False)
            except CommandError:
                continue
            closed.append(db.name)
        return closed
