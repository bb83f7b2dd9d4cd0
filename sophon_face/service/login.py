"""Login (api/login.md): one account, "admin", initial password "admin" (R41).

The password is kept only as a salted scrypt hash with its parameters (so they can be
raised later without invalidating stored records); hashing runs off the event loop, one
hash at a time; comparisons are constant-time; a wrong user name and a wrong password are
the same PASSWORD_ERROR and cost the same hash. No password is ever logged or returned.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
from typing import Any, Dict, Optional, Tuple

from ..errors import PasswordError
from ..store import credentials
from ..store.env import Store, Txn

log = logging.getLogger(__name__)

USERNAME = "admin"
INITIAL_PASSWORD = "admin"
#: scrypt cost: about 50-100 ms and 16 MiB per check on a small ARM core (a slow hash).
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2 ** 14, 8, 1
SALT_BYTES = 16
HASH_BYTES = 32
#: Salt of the virtual record of the initial password (no record stored yet). It needs no
#: secrecy: the initial password is public; it only makes that check cost a real hash too.
_INITIAL_SALT = b"sophon-face:initial-password"


def _utf8(text: str) -> bytes:
    # surrogatepass: a lone surrogate that arrived in JSON is hashed, not a 500.
    return text.encode("utf-8", "surrogatepass")


def hash_password(password: str, salt: bytes, n: int = SCRYPT_N, r: int = SCRYPT_R,
                  p: int = SCRYPT_P) -> bytes:
    return hashlib.scrypt(_utf8(password), salt=salt, n=n, r=r, p=p,
                          maxmem=256 * 1024 * 1024, dklen=HASH_BYTES)


def _record(password: str, salt: bytes) -> Dict[str, Any]:
    return {"scheme": "scrypt", "n": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P, "salt": salt,
            "hash": hash_password(password, salt)}


def new_record(password: str) -> Dict[str, Any]:
    """What is stored for ``password``: a fresh random salt, the hash and its parameters."""
    return _record(password, os.urandom(SALT_BYTES))


def matches(record: Dict[str, Any], password: str) -> bool:
    if record.get("scheme") != "scrypt":
        raise ValueError(f"unknown password hash scheme {record.get('scheme')!r}")
    digest = hash_password(password, record["salt"], record["n"], record["r"], record["p"])
    return hmac.compare_digest(digest, record["hash"])


class LoginService:
    def __init__(self, store: Store) -> None:
        self._store = store
        #: One hash at a time: a flood of logins queues here instead of filling the read
        #: pool (which serves every LMDB read) with 16 MiB hashes; it also paces guessing.
        #: Password changes hold it from checking the old password to storing the new one.
        self._hashing = asyncio.Lock()
        self._initial: Optional[Dict[str, Any]] = None

    async def _stored_record(self) -> Dict[str, Any]:
        record = await self._store.read(credentials.get)
        if record is not None:
            return record
        if self._initial is None:
            self._initial = await self._store.run_in_read_pool(
                _record, INITIAL_PASSWORD, _INITIAL_SALT)
        return self._initial

    async def _check(self, username: str, password: str) -> None:
        """PASSWORD_ERROR unless the pair is right; the caller holds ``_hashing``."""
        record = await self._stored_record()
        ok = await self._store.run_in_read_pool(matches, record, password)
        if not (hmac.compare_digest(_utf8(username), _utf8(USERNAME)) and ok):
            raise PasswordError()

    async def login(self, body: Dict[str, Any]) -> Dict[str, Any]:
        async with self._hashing:
            await self._check(body["username"], body["password"])
        return {"result": True}

    async def change_password(self, body: Dict[str, Any]) -> Dict[str, Any]:
        async with self._hashing:
            await self._check(body["username"], body["old_password"])
            record = await self._store.run_in_read_pool(new_record, body["new_password"])

            def write(txn: Txn) -> Tuple[None, list]:
                credentials.put(txn, record)
                return None, []

            await self._store.write(write)
        log.info("login: the password of %s was changed", USERNAME)
        return {"result": True}
