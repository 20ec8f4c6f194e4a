"""``[web]``: who may use the dashboard (``cronqueue web``) and how, and the hashes it keeps.

The file never holds a clear password: a user has a ``password_hash`` (``cronqueue web
--hash-password`` prints one: scrypt, or PBKDF2-SHA256, both from the standard library) and a
token a ``token_hash`` (SHA-256 of a random token: ``cronqueue web --new-token``). Roles:
``read`` (every page) and ``admin`` (also the actions)::

    [web]
    max_bulk = 1000              # tasks one "all matching" action may change
    trusted_origins = []         # e.g. ["https://ops.example.com"] behind a proxy
    cookie_secure = false        # true when served over https
    session_hours = 12
    # secret_key = "..."         # signs the session cookie; default: random per process

    [[web.user]]
    name = "ops"
    password_hash = "scrypt$16384$8$1$..."
    role = "admin"

    [[web.token]]
    name = "prometheus"
    token_hash = "sha256$..."
    role = "read"
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import math
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cronqueue.errors import ConfigError

ROLES = ("read", "admin")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
_SCRYPT = (2**14, 8, 1)  # n, r, p: 16 MiB and ~50 ms per check
_PBKDF2_ITERATIONS = 600_000
_MAX_PASSWORD = 1024  # characters: a longer "password" is refused before it is hashed
MAX_BULK = 100_000
_KEYS = {"max_bulk", "trusted_origins", "cookie_secure", "session_hours", "secret_key",
         "user", "token"}


@dataclass(frozen=True)
class WebUser:
    name: str
    password_hash: str
    role: str


@dataclass(frozen=True)
class WebToken:
    name: str
    token_hash: str
    role: str


@dataclass(frozen=True)
class WebConfig:
    users: tuple[WebUser, ...] = ()
    tokens: tuple[WebToken, ...] = ()
    max_bulk: int = 1000
    trusted_origins: tuple[str, ...] = ()
    cookie_secure: bool = False
    session_hours: float = 12.0
    secret_key: str | None = None

    @property
    def authenticated(self) -> bool:
        """Is any user or token configured (else the dashboard is open, on loopback only)?"""
        return bool(self.users or self.tokens)

    def __repr__(self) -> str:  # no hash or key in a log line or a traceback
        return (f"WebConfig(users={[u.name for u in self.users]}, "
                f"tokens={[t.name for t in self.tokens]}, max_bulk={self.max_bulk})")


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and ``localhost``."""
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def bind_refusal(host: str, web: WebConfig) -> str | None:
    """Why ``cronqueue web`` must not listen on ``host`` (None: it may). Any address but
    loopback needs a user or token configured: an open dashboard on a network is anyone's."""
    if is_loopback(host) or web.authenticated:
        return None
    return (f"--host {host}: not a loopback address, and no [[web.user]] or [[web.token]] is "
            "configured; add one (cronqueue web --hash-password / --new-token) or bind "
            "127.0.0.1")


# -- the hashes ----------------------------------------------------------------------------------

def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str, *, method: str = "scrypt") -> str:
    """``scrypt$n$r$p$salt$hash`` (default) or ``pbkdf2_sha256$iterations$salt$hash``."""
    check_password_text(password)
    salt = secrets.token_bytes(16)
    if method == "scrypt":
        n, r, p = _SCRYPT
        digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=32)
        return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(digest)}"
    if method == "pbkdf2_sha256":
        digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, _PBKDF2_ITERATIONS)
        return f"pbkdf2_sha256${_PBKDF2_ITERATIONS}${_b64(salt)}${_b64(digest)}"
    raise ValueError(f"unknown method {method!r} (scrypt or pbkdf2_sha256)")


def check_password_text(password: str) -> None:
    if not password:
        raise ValueError("empty password")
    if len(password) > _MAX_PASSWORD:
        raise ValueError(f"password longer than {_MAX_PASSWORD} characters")


def _parsed(stored: str) -> tuple[str, list[str]]:
    """The method and fields of a stored hash; ValueError naming what is wrong."""
    method, _, rest = stored.partition("$")
    fields = rest.split("$")
    if method == "scrypt" and len(fields) == 5:
        n, r, p = (_number(f) for f in fields[:3])
        if n < 2**10 or n & (n - 1) or not (1 <= r <= 64 and 1 <= p <= 16) or n * r > 2**24:
            raise ValueError("scrypt parameters out of range")
    elif method == "pbkdf2_sha256" and len(fields) == 3:
        if not 100_000 <= _number(fields[0]) <= 10_000_000:
            raise ValueError("pbkdf2 iterations out of range (100000..10000000)")
    else:
        raise ValueError("not scrypt$n$r$p$salt$hash or pbkdf2_sha256$iterations$salt$hash")
    try:
        salt, digest = _unb64(fields[-2]), _unb64(fields[-1])
    except ValueError:
        raise ValueError("salt or hash is not base64") from None
    if len(digest) < 16 or len(salt) < 8:
        raise ValueError("salt or hash too short")
    return method, fields


def _number(text: str) -> int:
    if not text.isdigit() or len(text) > 9:
        raise ValueError(f"{text!r} is not a number")
    return int(text)


def verify_password(password: str, stored: str) -> bool:
    """Does ``password`` match ``stored`` (constant-time comparison)?"""
    try:
        check_password_text(password)
        method, fields = _parsed(stored)
    except ValueError:
        return False
    if method == "scrypt":
        n, r, p = (int(f) for f in fields[:3])
        want = _unb64(fields[4])
        got = hashlib.scrypt(password.encode(), salt=_unb64(fields[3]), n=n, r=r, p=p,
                             maxmem=2 * 128 * n * r * p + (1 << 20), dklen=len(want))
    else:
        want = _unb64(fields[2])
        got = hashlib.pbkdf2_hmac("sha256", password.encode(), _unb64(fields[1]),
                                  int(fields[0]), dklen=len(want))
    return hmac.compare_digest(got, want)


def new_token() -> tuple[str, str]:
    """A random token (256 bits) and its ``sha256$hex`` hash for the config file."""
    token = secrets.token_urlsafe(32)
    return token, hash_token(token)


def hash_token(token: str) -> str:
    """Tokens are random (not chosen by a person): one SHA-256 is enough to keep the file
    from holding them."""
    return "sha256$" + hashlib.sha256(token.encode()).hexdigest()


def token_matches(token: str, stored: str) -> bool:
    return hmac.compare_digest(hash_token(token[:256]).encode(), stored.encode())


# -- the [web] table ---------------------------------------------------------------------------

def web_from_mapping(table: Mapping[str, Any]) -> WebConfig:
    if "password" in table or isinstance(table.get("token"), str):
        raise ConfigError("web.password: never a clear password or token in the config: "
                          "[[web.user]] password_hash (cronqueue web --hash-password)")
    unknown = sorted(set(table) - _KEYS)
    if unknown:
        raise ConfigError(f"unknown key web.{unknown[0]!r}")
    kw: dict[str, Any] = {}
    if "max_bulk" in table:
        value = table["max_bulk"]
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_BULK:
            raise ConfigError(f"web.max_bulk: must be an integer from 1 to {MAX_BULK}, "
                              f"got {value!r}")
        kw["max_bulk"] = value
    if "trusted_origins" in table:
        origins = table["trusted_origins"]
        if not isinstance(origins, list) or not all(
                isinstance(o, str) and re.fullmatch(r"https?://[^/\s]+", o) for o in origins):
            raise ConfigError("web.trusted_origins: expected a list of origins like "
                              f"\"https://ops.example.com\" (no path), got {origins!r}")
        kw["trusted_origins"] = tuple(o.lower() for o in origins)
    if "cookie_secure" in table:
        if not isinstance(table["cookie_secure"], bool):
            raise ConfigError(f"web.cookie_secure: expected true or false, got "
                              f"{table['cookie_secure']!r}")
        kw["cookie_secure"] = table["cookie_secure"]
    if "session_hours" in table:
        hours = table["session_hours"]
        if isinstance(hours, bool) or not isinstance(hours, int | float) or not (
                math.isfinite(hours) and 0 < hours <= 24 * 31):
            raise ConfigError(f"web.session_hours: must be a number > 0 and <= 744, "
                              f"got {hours!r}")
        kw["session_hours"] = float(hours)
    if "secret_key" in table:
        key = table["secret_key"]
        if not isinstance(key, str) or len(key) < 32:
            raise ConfigError("web.secret_key: expected a random string of at least 32 "
                              "characters (python -c 'import secrets; "
                              "print(secrets.token_urlsafe(32))')")
        kw["secret_key"] = key
    kw["users"] = tuple(_user(i, e) for i, e in enumerate(_list(table, "user")))
    kw["tokens"] = tuple(_token(i, e) for i, e in enumerate(_list(table, "token")))
    names = [u.name for u in kw["users"]] + [t.name for t in kw["tokens"]]
    if len(set(names)) != len(names):
        raise ConfigError("web: a user or token name is given twice")
    return WebConfig(**kw)


def _list(table: Mapping[str, Any], key: str) -> list[Any]:
    value = table.get(key, [])
    if not isinstance(value, list):
        raise ConfigError(f"web.{key}: expected [[web.{key}]] tables")
    return value


def _entry(kind: str, index: int, raw: Any, secret: str) -> tuple[str, str, str]:
    if not isinstance(raw, dict):
        raise ConfigError(f"web.{kind} #{index + 1}: expected a table")
    label = f"web.{kind} #{index + 1}"
    if "password" in raw or "token" in raw:
        raise ConfigError(f"{label}: never a clear password or token in the config: give "
                          f"{secret} (cronqueue web --hash-password / --new-token)")
    unknown = sorted(set(raw) - {"name", secret, "role"})
    if unknown:
        raise ConfigError(f"{label}: unknown key {unknown[0]!r}")
    name, stored, role = raw.get("name"), raw.get(secret), raw.get("role", "read")
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ConfigError(f"{label}: 'name' must be 1-64 of letters, digits and _.@-")
    if role not in ROLES:
        raise ConfigError(f"{label} {name!r}: role must be one of {', '.join(ROLES)}, "
                          f"got {role!r}")
    if not isinstance(stored, str):
        raise ConfigError(f"{label} {name!r}: '{secret}' is required")
    return name, stored, role


def _user(index: int, raw: Any) -> WebUser:
    name, stored, role = _entry("user", index, raw, "password_hash")
    try:
        _parsed(stored)
    except ValueError as exc:
        raise ConfigError(f"web.user {name!r}: password_hash: {exc} (make one with "
                          "`cronqueue web --hash-password`)") from None
    return WebUser(name, stored, role)


def _token(index: int, raw: Any) -> WebToken:
    name, stored, role = _entry("token", index, raw, "token_hash")
    if not re.fullmatch(r"sha256\$[0-9a-f]{64}", stored):
        raise ConfigError(f"web.token {name!r}: token_hash: expected sha256$<64 hex digits> "
                          "(make one with `cronqueue web --new-token`)")
    return WebToken(name, stored, role)
