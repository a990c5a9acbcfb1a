"""CURVE security: ZeroMQ's built-in encryption and public-key authentication.

The server holds a key pair and a directory of the public keys of the clients it
accepts; each client holds its own key pair and the server's public key. Keys are
40-character Z85 strings, kept in ZeroMQ certificate files (``NAME.key`` holds the
public key, ``NAME.key_secret`` both keys) made by ``elevator-server keygen``.

>>> keys = CurveKeys.from_files("keys/server.key", "keys/client.key_secret")
>>> E = Elevator(endpoint="tcp://db.example:4141", curve=keys)
"""
from __future__ import annotations

import os
import stat
from typing import Any, List, Set, Tuple, Union

import zmq
import zmq.auth
import zmq.utils.z85

__all__ = ["CurveKeys", "generate_certificates", "load_public_key", "load_key_pair",
           "load_authorized_keys", "permission_problems"]

PathLike = Union[str, "os.PathLike[str]"]

_Z85_KEY_LENGTH = 40


def _key(name: str, value: object) -> bytes:
    if isinstance(value, str):
        try:
            value = value.encode("ascii")
        except UnicodeEncodeError:
            # Never replace: "?" is a Z85 character, and the key would silently differ.
            raise ValueError(f"{name} must be an ASCII Z85 key (as made by elevator-server "
                             "keygen), not a string with non-ASCII characters") from None
    if not isinstance(value, bytes):
        raise TypeError(f"{name} must be a Z85 key (str or bytes), not {type(value).__name__}")
    if len(value) != _Z85_KEY_LENGTH:
        raise ValueError(f"{name} must be a {_Z85_KEY_LENGTH}-character Z85 key "
                         f"(as made by elevator-server keygen), not {len(value)} characters")
    if not value.isascii():
        raise ValueError(f"{name} must be an ASCII Z85 key, not bytes with non-ASCII values")
    try:
        zmq.utils.z85.decode(value)
    except Exception:
        raise ValueError(f"{name} is not valid Z85") from None
    return value


def load_public_key(path: PathLike) -> bytes:
    """The public key of a certificate file (``NAME.key`` or ``NAME.key_secret``).

    Raises OSError when the file cannot be read, ValueError when it holds no key.
    """
    public, _ = zmq.auth.load_certificate(os.fspath(path))
    return _key(f"the public key in {os.fspath(path)}", public)


def load_key_pair(path: PathLike) -> Tuple[bytes, bytes]:
    """``(public, secret)`` from a secret certificate file (``NAME.key_secret``).

    Raises OSError when the file cannot be read, ValueError when it has no secret key.
    """
    public, secret = zmq.auth.load_certificate(os.fspath(path))
    if not secret:
        raise ValueError(f"{os.fspath(path)} holds no secret key: give the NAME.key_secret "
                         "file, not the public NAME.key")
    return (_key(f"the public key in {os.fspath(path)}", public),
            _key(f"the secret key in {os.fspath(path)}", secret))


def load_authorized_keys(directory: PathLike) -> Set[bytes]:
    """The public keys of the ``*.key`` certificate files in ``directory`` (other files are
    ignored), as the server checks them against each request's CURVE key.

    Raises OSError when the directory cannot be read, ValueError naming the first file
    that holds no valid key (a malformed key is never skipped silently).
    """
    directory = os.fspath(directory)
    keys: Set[bytes] = set()
    for entry in sorted(os.listdir(directory)):
        if entry.endswith(".key"):
            path = os.path.join(directory, entry)
            try:
                keys.add(load_public_key(path))
            except ValueError as exc:
                raise ValueError(f"{path}: {exc}") from None
    return keys


def permission_problems(secret_key_file: PathLike, authorized_dir: PathLike) -> List[str]:
    """What is wrong with the modes of the server's key files: a secret key readable by
    group/others, an authorized-keys directory writable by group/others.
    Empty when nothing is; ``authorized_dir`` "*" is not a directory and not checked.

    Raises OSError when a file cannot be stat'ed.
    """
    problems = []
    secret_key_file = os.fspath(secret_key_file)
    mode = stat.S_IMODE(os.stat(secret_key_file).st_mode)
    if mode & 0o077:
        problems.append(f"the secret key {secret_key_file} is readable by group/others "
                        f"(mode {mode:04o}): chmod 600 it")
    authorized_dir = os.fspath(authorized_dir)
    if authorized_dir != "*":
        mode = stat.S_IMODE(os.stat(authorized_dir).st_mode)
        if mode & 0o022:
            problems.append(f"the authorized keys directory {authorized_dir} is writable by "
                            f"group/others (mode {mode:04o}): anyone who can write there can "
                            "let a client in; chmod go-w it")
    return problems


def generate_certificates(directory: PathLike, name: str) -> Tuple[str, str]:
    """Write a new key pair as ``DIRECTORY/NAME.key`` (public, to share) and
    ``DIRECTORY/NAME.key_secret`` (secret, mode 0600). Returns both paths.

    The directory is created if needed. Raises FileExistsError rather than
    overwrite a key, TypeError for a name that is not a str, ValueError for one with a
    path separator.
    """
    if not isinstance(name, str):
        raise TypeError(f"key name must be a str, not {type(name).__name__}")
    if not name or os.sep in name or name.startswith("."):
        raise ValueError(f"key name must be a plain file name, not {name!r}")
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    public_file = os.path.join(directory, f"{name}.key")
    secret_file = public_file + "_secret"
    for path in (public_file, secret_file):
        if os.path.exists(path):
            raise FileExistsError(f"{path} already exists: not overwriting a key")
    # The secret file is created 0600 before zmq writes into it: never world-readable.
    fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    try:
        made = zmq.auth.create_certificates(directory, name)
    except BaseException:
        os.unlink(secret_file)
        raise
    os.chmod(made[1], 0o600)
    return made


class CurveKeys:
    """A client's CURVE configuration: the server's public key and the client's key pair.

    An instance is a socket configurator: pass it as ``curve=`` to :class:`ElevatorPool`
    or :class:`Elevator` (it is then applied to every new socket before it connects).
    Keys are 40-character Z85 strings (str or bytes). The secret key never appears in
    ``repr``.

    Raises TypeError/ValueError for a key that is not Z85 of the right length.
    """

    __slots__ = ("server_public_key", "public_key", "_secret_key")

    def __init__(self, server_public_key: Union[str, bytes], public_key: Union[str, bytes],
                 secret_key: Union[str, bytes]) -> None:
        self.server_public_key = _key("server_public_key", server_public_key)
        self.public_key = _key("public_key", public_key)
        self._secret_key = _key("secret_key", secret_key)

    @classmethod
    def from_files(cls, server_public_file: PathLike, client_secret_file: PathLike) -> "CurveKeys":
        """Keys from certificate files: the server's ``NAME.key`` (its public one) and
        this client's ``NAME.key_secret``. Raises OSError/ValueError for a bad file."""
        public, secret = load_key_pair(client_secret_file)
        return cls(load_public_key(server_public_file), public, secret)

    def __call__(self, sock: zmq.Socket[Any]) -> None:
        """Configure a new socket as a CURVE client of the server."""
        sock.curve_serverkey = self.server_public_key
        sock.curve_publickey = self.public_key
        sock.curve_secretkey = self._secret_key

    def __repr__(self) -> str:
        return (f"CurveKeys(server_public_key={self.server_public_key.decode()!r}, "
                f"public_key={self.public_key.decode()!r}, secret_key=<hidden>)")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CurveKeys):
            return NotImplemented
        return (self.server_public_key, self.public_key, self._secret_key) == \
            (other.server_public_key, other.public_key, other._secret_key)

    # typeshed declares object.__hash__ a method; None (unhashable) is the documented idiom
    __hash__ = None  # type: ignore[assignment]
