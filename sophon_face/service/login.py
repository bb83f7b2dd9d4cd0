"""Login (api/login.md): one account, "admin", initial password "admin" (R41).

The password is kept only as a salted scrypt hash with its parameters (so they can be
raised later); hashing runs off the event loop; comparisons are constant-time; a wrong
user name and a wrong password are the same PASSWORD_ERROR. No password is ever logged
or returned.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
from typing import Any, Dict, Optional, Tuple

from ..errors import PasswordError
from ..store import credentials
from ..store.env import Store, Txn

USERNAME = "admin"
INITIAL_PASSWORD = "admin"
#: scrypt cost: about 50 ms and 16 MiB per check on a small ARM core (a slow hash).
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2 ** 14, 8, 1


def hash_password(password: str, salt: bytes, n: int = SCRYPT_N, r: int = SCRYPT_R,
                  p: int = SCRYPT_P) -> bytes:
    return hashlib.scrypt(password.encode("utf-8", "surrogatepass"), salt=salt, n=n, r=r, p=p,
                          maxmem=64 * 1024 * 1024, dklen=32)


def new_record(password: str) -> Dict[str, Any]:
    salt = os.urandom(16)
    return {"scheme": "scrypt", "n": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P, "salt": salt,
            "hash": hash_password(password, salt)}


def matches(record: Optional[Dict[str, Any]], password: str) -> bool:
    if record is None:
        return hmac.compare_digest(password.encode("utf-8", "surrogatepass"),
                                   INITIAL_PASSWORD.encode("utf-8"))
    digest = hash_password(password, record["salt"], record["n"], record["r"], record["p"])
    return hmac.compare_digest(digest, record["hash"])


class LoginService:
    def __init__(self, store: Store) -> None:
        self._store = store
        #: One password change at a time, so two changes cannot both check the old one.
        self._changing = asyncio.Lock()

    async def _check(self, username: str, password: str) -> None:
        record = await self._store.read(credentials.get)
        ok = await self._store.run_in_read_pool(matches, record, password)
        if not (ok and hmac.compare_digest(username.encode("utf-8", "surrogatepass"),
                                           USERNAME.encode("utf-8"))):
            raise PasswordError()

    async def login(self, body: Dict[str, Any]) -> Dict[str, Any]:
        await self._check(body["username"], body["password"])
        return {"result": True}

    async def change_password(self, body: Dict[str, Any]) -> Dict[str, Any]:
        async with self._changing:
            await self._check(body["username"], body["old_password"])
            record = await self._store.run_in_read_pool(new_record, body["new_password"])

            def write(txn: Txn) -> Tuple[None, list]:
                credentials.put(txn, record)
                return None, []

            await self._store.write(write)
        return {"result": True}
