"""The server's databases: a JSON registry of name -> {path, uid, options}, and the open handles.

The registry file (``DATA_DIR/store.json``) is rewritten atomically (temp file,
fsync, ``os.replace``, fsync of the directory), so uids survive restarts and a
crash never leaves a half-written registry. Named databases live under
``DATA_DIR/dbs/<name>``; a name that is an absolute path registers a LevelDB
there, but only under a root the operator allowed (``--allow-path``).

Handles are reference-counted (:meth:`Store.acquire`/:meth:`Store.release`):
with worker threads, a database is closed (unmount, drop, repair, idle
unmount) only once no request is using it, because plyvel releases the GIL
inside LevelDB calls and closing under a running call is a use-after-free.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from typing import Any, Dict, Iterable, List, Optional

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

_CLOSE_WAIT = 30.0  # seconds a close waits for requests still using the database


class CommandError(Exception):
    """A database operation refused; ``code`` is the protocol ErrorCode to answer with."""

    def __init__(self, message: str, code: int = ErrorCode.DATABASE) -> None:
        super().__init__(message)
        self.code = code


class _Db:
    __slots__ = ("name", "path", "uid", "options", "handle", "users", "last_used")

    def __init__(self, name: str, path: str, uid: str, options: dict) -> None:
        self.name = name
        self.path = path
        self.uid = uid
        self.options = options
        self.handle: Optional[plyvel.DB] = None
        self.users = 0
        self.last_used = time.monotonic()


def _is_strictly_inside(path: str, root: str) -> bool:
    return path != root and os.path.commonpath([path, root]) == root


def _overlaps(a: str, b: str) -> bool:
    """The same directory, or one inside the other (deleting one deletes the other's files)."""
    return a == b or _is_strictly_inside(a, b) or _is_strictly_inside(b, a)


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


class Store:
    """Registry and open handles of the server's databases. Thread-safe."""

    def __init__(self, data_dir: str, *, allowed_roots: Iterable[str] = (),
                 sync: bool = False) -> None:
        self.data_dir = os.path.realpath(data_dir)
        self.dbs_dir = os.path.join(self.data_dir, DBS_DIR)
        self.store_path = os.path.join(self.data_dir, STORE_FILE)
        self.allowed_roots = [os.path.realpath(r) for r in allowed_roots]
        self.sync = sync
        self._lock = threading.Condition()
        self._by_name: Dict[str, _Db] = {}
        self._by_uid: Dict[str, _Db] = {}

    # ------------------------------------------------------------ registry file

    def load(self) -> None:
        """Read the registry (creating the data dir and ``default`` if needed), mount ``default``."""
        os.makedirs(self.dbs_dir, exist_ok=True)
        if os.path.exists(self.store_path):
            with open(self.store_path, encoding="utf-8") as f:
                raw = json.load(f)
            entries = raw.get("databases", raw) if isinstance(raw, dict) else None
            if not isinstance(entries, dict):
                raise ValueError(f"{self.store_path}: not a database registry")
            for name, entry in entries.items():
                db = _Db(name, entry["path"], entry["uid"], dict(entry.get("options") or {}))
                self._by_name[name] = db
                self._by_uid[db.uid] = db
        if DEFAULT_DB not in self._by_name:
            self._register(DEFAULT_DB, os.path.join(self.dbs_dir, DEFAULT_DB), {})
            self._save()
        with self._lock:
            self._open(self._by_name[DEFAULT_DB])

    def _save(self) -> None:
        data = {"version": 1, "databases": {
            db.name: {"path": db.path, "uid": db.uid, "options": db.options}
            for db in self._by_name.values()}}
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

    # ------------------------------------------------------------------ names

    def resolve_path(self, name: str) -> str:
        """The directory of database ``name``; CommandError if the name is not acceptable."""
        if not name or len(name.encode("utf-8")) > MAX_NAME_LENGTH:
            raise CommandError(f"database name must be 1 to {MAX_NAME_LENGTH} bytes long")
        if "\x00" in name:
            raise CommandError("database name may not contain NUL")
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
        if "/" in name or "\\" in name or ".." in name or name == ".":
            raise CommandError(f"invalid database name {name!r}: no path separators and no '..' "
                             "(absolute paths need --allow-path on the server)")
        if any(ord(c) < 0x20 for c in name):
            raise CommandError(f"invalid database name {name!r}: no control characters")
        return os.path.join(self.dbs_dir, name)

    def _may_delete(self, path: str) -> bool:
        real = os.path.realpath(path)
        return any(_is_strictly_inside(real, root)
                   for root in [self.dbs_dir, *self.allowed_roots])

    # ------------------------------------------------------------ open/close

    def _open(self, db: _Db) -> plyvel.DB:
        """Open ``db`` if it is not (caller holds the lock)."""
        if db.handle is None:
            kwargs = {k: v for k, v in db.options.items() if k in LEVELDB_OPTIONS}
            kwargs["create_if_missing"] = True  # registered: exists or is ours to create
            kwargs.pop("error_if_exists", None)  # only meaningful at creation
            try:
                db.handle = plyvel.DB(db.path, **kwargs)
            except plyvel.Error as exc:
                raise CommandError(f"cannot open database {db.name!r}: {exc}") from None
            log.info("mounted %s (%s)", db.name, db.path)
        db.last_used = time.monotonic()
        return db.handle

    def _close(self, db: _Db, *, wait: bool = True) -> None:
        """Close ``db`` once no request uses it (caller holds the lock)."""
        if wait and db.users:
            deadline = time.monotonic() + _CLOSE_WAIT
            while db.users and time.monotonic() < deadline:
                self._lock.wait(deadline - time.monotonic())
            if db.users:
                raise CommandError(f"database {db.name!r} is busy", ErrorCode.RUNTIME)
        if db.handle is not None:
            db.handle.close()
            db.handle = None
            log.info("unmounted %s", db.name)

    def close_all(self) -> None:
        with self._lock:
            for db in self._by_name.values():
                try:
                    self._close(db, wait=True)
                except Exception:  # pragma: no cover - closing at exit is best effort
                    log.exception("closing %s", db.name)

    # -------------------------------------------------------------- requests

    def acquire(self, uid: str) -> plyvel.DB:
        """The open handle of database ``uid`` (mounting it if needed); pair with :meth:`release`."""
        with self._lock:
            db = self._by_uid.get(uid)
            if db is None:
                raise CommandError(f"Database {uid} doesn't exist", ErrorCode.RUNTIME)
            handle = db.handle if db.handle is not None else self._open(db)
            db.users += 1
            db.last_used = time.monotonic()
            return handle

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
            self._open(db)
            return db.uid

    def mount(self, name: str) -> None:
        with self._lock:
            self._open(self._get(name))

    def unmount(self, name: str) -> None:
        with self._lock:
            db = self._get(name)
            if name != DEFAULT_DB:  # default is always mounted: unmounting it is a no-op
                self._close(db)

    def list(self) -> List[str]:
        with self._lock:
            return list(self._by_name)

    def create(self, name: str, options: Any) -> None:
        opts = clean_options(options)
        path = self.resolve_path(name)  # before anything touches the disk
        with self._lock:
            if name in self._by_name:
                raise CommandError(f"Database {name} already exists")
            for other in self._by_name.values():  # another name for (part of) its files
                if _overlaps(path, os.path.realpath(other.path)):
                    raise CommandError(f"database path {path!r} refused: it overlaps database "
                                       f"{other.name!r} at {other.path}")
            if opts.get("error_if_exists") and os.path.exists(os.path.join(path, "CURRENT")):
                raise CommandError(f"Database {name} already exists at {path}")
            db = _Db(name, path, uuid.uuid4().hex, opts)
            try:
                kwargs = dict(opts)
                kwargs["create_if_missing"] = True
                kwargs.pop("error_if_exists", None)
                db.handle = plyvel.DB(path, **kwargs)
            except plyvel.Error as exc:
                raise CommandError(f"cannot create database {name!r}: {exc}") from None
            self._by_name[name] = db
            self._by_uid[db.uid] = db
            try:
                self._save()
            except BaseException:
                del self._by_name[name], self._by_uid[db.uid]
                db.handle.close()
                raise
            log.info("created %s (%s)", name, path)

    def drop(self, name: str) -> None:
        with self._lock:
            db = self._get(name)
            if name == DEFAULT_DB:
                raise CommandError("the default database cannot be dropped")
            may_delete = self._may_delete(db.path)
            if not may_delete:
                raise CommandError(
                    f"not dropping {name!r}: its files at {db.path} are outside the data dir and "
                    "the roots allowed with --allow-path")
            self._close(db)
            del self._by_name[name], self._by_uid[db.uid]
            self._save()
            shutil.rmtree(db.path, ignore_errors=True)
            log.info("dropped %s (%s)", name, db.path)

    def repair(self, uid: str) -> None:
        with self._lock:
            db = self._by_uid.get(uid)
            if db is None:
                raise CommandError(f"Database {uid} doesn't exist", ErrorCode.RUNTIME)
            self._close(db)
            try:
                plyvel.repair_db(db.path)
            except plyvel.Error as exc:
                raise CommandError(f"repair of {db.name!r} failed: {exc}") from None
            finally:
                self._open(db)
            log.info("repaired %s", db.name)

    def unmount_idle(self, idle_seconds: float) -> List[str]:
        """Close databases (but ``default``) unused for ``idle_seconds``; their names."""
        closed = []
        now = time.monotonic()
        with self._lock:
            for db in self._by_name.values():
                if (db.handle is not None and db.name != DEFAULT_DB and not db.users
                        and now - db.last_used >= idle_seconds):
                    self._close(db, wait=False)
                    closed.append(db.name)
        return closed
