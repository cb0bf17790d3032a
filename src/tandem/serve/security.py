"""What keeps the search service's clicks honest: an optional API key, signed request ids, a keyed A/B
routing key, and a bounded memory of served requests against which each click is checked once.

- API key (`TANDEM_API_KEY`): when set, POST /click and the admin routes (/metrics) need it, as
  `X-API-Key: KEY` or `Authorization: Bearer KEY` (401 without, 403 when wrong). Unset, they are open
  (the behaviour before keys) and the service logs a warning at start-up.
- Server secret (`TANDEM_SERVE_SECRET`, else `WORKDIR/serving/secret`, made once with mode 0600): request
  ids are `NONCE.MAC`, the MAC an HMAC of the nonce, the user, the arm and the experiment, so a client
  cannot forge one nor claim another arm for its clicks; users are bucketed by an HMAC of their id, so
  the experiment's salt (which /healthz names by default) does not let a client pick user ids that land in
  the arm it wants. Replicas behind one balancer must share the secret.
- `ClickMemory`: request nonce -> what was served, an LRU bounded by count, age and bytes, each request's
  items kept as 8-byte hashes with a bitmask of the clicked ones: a (request, item) click counts once.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import sys
import threading
import time
from array import array
from collections import OrderedDict
from pathlib import Path

log = logging.getLogger(__name__)

API_KEY_ENV = "TANDEM_API_KEY"
SECRET_ENV = "TANDEM_SERVE_SECRET"
API_KEY_HEADER = "X-API-Key"


class Refused(Exception):
    """A request without the right credentials: 401 (none given) or 403 (wrong, or forged)."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


def api_key(env: dict | None = None) -> str | None:
    """The API key of the environment (`TANDEM_API_KEY`), None when unset or blank."""
    return ((os.environ if env is None else env).get(API_KEY_ENV) or "").strip() or None


def check_key(expected: str | None, headers) -> None:
    """Raise Refused unless `headers` carry `expected` (X-API-Key, or Authorization: Bearer); open when None."""
    if expected is None:
        return
    given = headers.get(API_KEY_HEADER)
    if given is None:
        scheme, _, token = (headers.get("authorization") or "").partition(" ")
        given = token.strip() if scheme.lower() == "bearer" else None
    if not given:
        raise Refused(401, f"this route needs the service's API key: send the header {API_KEY_HEADER}: KEY")
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise Refused(403, "the API key is wrong")


def server_secret(workdir: str | Path, env: dict | None = None) -> bytes:
    """`TANDEM_SERVE_SECRET`, else the secret kept in WORKDIR/serving/secret (made on first use, mode 0600,
    so that restarts keep users in their arms and earlier request ids valid)."""
    given = (os.environ if env is None else env).get(SECRET_ENV)
    if given:
        return given.encode()
    path = Path(workdir) / "serving" / "secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
            log.info("made the service secret %s (set %s to share one between replicas)", path, SECRET_ENV)
    return path.read_text().strip().encode()


class Signer:
    """HMAC-SHA256 under the server secret: request ids and the users' routing keys."""

    def __init__(self, secret: bytes):
        if len(secret) < 16:
            raise ValueError(f"{SECRET_ENV} is too short: give at least 16 characters")
        self._secret = secret

    def _mac(self, *parts: str) -> str:
        message = "\x1f".join(parts).encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()[:32]

    def route_key(self, user_id: str) -> str:
        """What the rollout buckets instead of the user id: a keyed hash no client can compute."""
        return self._mac("route", user_id)

    @staticmethod
    def nonce() -> str:
        return secrets.token_hex(16)

    def request_id(self, nonce: str, user_id: str, arm: str, experiment: str) -> str:
        """The request id `NONCE.MAC` of a new request, binding it to the user and arm it was served."""
        return f"{nonce}.{self._mac('request', nonce, user_id, arm, experiment)}"

    def well_formed(self, request_id: str) -> bool:
        nonce, _, mac = request_id.partition(".")
        return len(nonce) == 32 and len(mac) == 32 and all(c in "0123456789abcdef" for c in nonce + mac)

    def valid(self, request_id: str, user_id: str, arm: str, experiment: str) -> bool:
        nonce, _, mac = request_id.partition(".")
        return hmac.compare_digest(mac, self._mac("request", nonce, user_id, arm, experiment))


def item_hash(item_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(item_id.encode(), digest_size=8).digest(), "big")


class Remembered:
    """One served request, compactly: its user, query, arm and experiment, its items as 8-byte hashes (in
    order), which of them were clicked (a bitmask), and when it is forgotten."""

    __slots__ = ("arm", "clicked", "experiment", "expires", "hashes", "query", "size", "user_id")

    def __init__(self, user_id: str, query: str, arm: str, experiment: str, items, expires: float):
        self.user_id, self.query, self.arm, self.experiment = user_id, query, sys.intern(arm), experiment
        self.hashes = array("Q", (item_hash(i) for i in items))
        self.clicked, self.expires = 0, expires
        self.size = 400 + len(user_id) + len(query) + len(experiment) + 8 * len(self.hashes)  # bytes (tracemalloc: ~)

    def position(self, item_id: str) -> int | None:
        """The item's place in the results, None when the request did not show it."""
        try:
            return self.hashes.index(item_hash(item_id))
        except ValueError:
            return None


class ClickMemory:
    """request id -> Remembered, an LRU bounded by `size` requests, `max_bytes` and `ttl` seconds."""

    def __init__(self, size: int, ttl: float = 3600.0, max_bytes: int = 64 << 20, clock=time.monotonic):
        self.size, self.ttl, self.max_bytes, self.clock = size, ttl, max_bytes, clock
        self._data: OrderedDict[str, Remembered] = OrderedDict()
        self._lock = threading.Lock()
        self.bytes = 0

    def put(self, request_id: str, served) -> None:
        """Remember `served` (anything with user_id, query, arm, experiment, items) under `request_id`."""
        entry = Remembered(
            served.user_id, served.query, served.arm, served.experiment, served.items, self.clock() + self.ttl
        )
        entry.size += len(request_id)
        with self._lock:
            old = self._data.pop(request_id, None)
            self.bytes += entry.size - (old.size if old else 0)
            self._data[request_id] = entry
            now = self.clock()
            while self._data and (len(self._data) > self.size or self.bytes > self.max_bytes):
                self.bytes -= self._data.popitem(last=False)[1].size
            while self._data and next(iter(self._data.values())).expires <= now:  # oldest first: stop at a live one
                self.bytes -= self._data.popitem(last=False)[1].size

    def get(self, request_id: str) -> Remembered | None:
        with self._lock:
            entry = self._data.get(request_id)
            if entry is None:
                return None
            if entry.expires <= self.clock():
                self.bytes -= self._data.pop(request_id).size
                return None
            self._data.move_to_end(request_id)
            return entry

    def claim(self, request_id: str, item_id: str) -> tuple[Remembered | None, int | None, bool]:
        """(the request, the item's position, whether this is the item's first click) in one step, so that
        concurrent replays count once; position None when the request did not show the item."""
        entry = self.get(request_id)
        if entry is None:
            return None, None, False
        position = entry.position(item_id)
        if position is None:
            return entry, None, False
        with self._lock:
            first = not entry.clicked >> position & 1
            entry.clicked |= 1 << position
        return entry, position, first

    def __len__(self) -> int:
        return len(self._data)


def check_click(memory: ClickMemory, signer: Signer, body) -> tuple[Remembered, int, bool]:
    """(the request, the item's position, whether it is the first click on it) for a POST /click `body`;
    raises Refused 403 for a request id this service did not sign, HTTPException 404 for one it no longer
    remembers, 422 for another user or an item the request did not show."""
    from fastapi import HTTPException

    rid = body.request_id
    if not signer.well_formed(rid):
        raise Refused(403, f"request_id {rid!r} was not issued by this service: send the request_id of a response")
    nonce = rid.partition(".")[0]  # the memory's key: a tampered MAC finds its request, and fails the check
    served = memory.get(nonce)
    if served is None:
        raise HTTPException(404, f"request_id {rid!r} is unknown or too old: click items of a recent response")
    if not signer.valid(rid, served.user_id, served.arm, served.experiment):
        raise Refused(403, f"request_id {rid!r} does not carry this service's signature")
    if body.user_id is not None and body.user_id != served.user_id:
        raise HTTPException(422, f"user_id {body.user_id!r} is not the user request {rid} served")
    served, position, first = memory.claim(nonce, body.item_id)
    if served is None:  # forgotten in between
        raise HTTPException(404, f"request_id {rid!r} is unknown or too old: click items of a recent response")
    if position is None:
        raise HTTPException(422, f"item {body.item_id!r} was not among the results of request {rid}")
    return served, position, first
