"""Login throttling for the grant service: attackers slow themselves, nobody is locked out.

* Guessable credentials (local password + TOTP) back off per (user, address) pair: after
  ``pair_limit`` failures, that pair may try again only after a delay that doubles with each
  further failure (``pair_base`` .. ``pair_max``). Guessing against alice from one address
  never stops alice, or anyone else, logging in from another address.
* Failures from one address (any user, any method) beyond ``address_limit`` in ``window``
  make that address's *failed* answers late (``answer_delay``), which slows a spray across
  many user names; a correct login is answered at once and is never refused for others'
  failures (a signed OIDC token is checked whatever the address did).
* At most ``in_flight`` logins per address are verified at once (bounding the hashing and
  signature work an unauthenticated address can cause); more get 429 at once.
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field

MAX_KEYS = 100_000


@dataclass
class _Pair:
    failures: int = 0
    next_allowed: float = 0.0


@dataclass
class LoginThrottle:
    pair_limit: int = 5
    pair_base: float = 1.0
    pair_max: float = 900.0
    address_limit: int = 20
    window: float = 300.0
    answer_base: float = 0.25
    answer_max: float = 4.0
    in_flight: int = 8
    clock: object = time.monotonic
    _pairs: OrderedDict[tuple[str, str], _Pair] = field(default_factory=OrderedDict)
    _addresses: OrderedDict[str, deque[float]] = field(default_factory=OrderedDict)
    _busy: Counter[str] = field(default_factory=Counter)

    def _now(self) -> float:
        return self.clock()  # type: ignore[operator]

    # -- guessable credentials, per (user, address)

    def retry_after(self, user: str, address: str) -> float:
        """Seconds until ``user`` may try a password again from ``address`` (0: now)."""
        p = self._pairs.get((user, address))
        return max(0.0, p.next_allowed - self._now()) if p else 0.0

    def pair_failed(self, user: str, address: str) -> None:
        key = (user, address)
        p = self._pairs.pop(key, None) or _Pair()
        p.failures += 1
        if p.failures >= self.pair_limit:
            step = p.failures - self.pair_limit
            p.next_allowed = self._now() + min(self.pair_max, self.pair_base * 2 ** min(step, 20))
        self._pairs[key] = p
        while len(self._pairs) > MAX_KEYS:
            self._pairs.popitem(last=False)

    def pair_succeeded(self, user: str, address: str) -> None:
        self._pairs.pop((user, address), None)

    # -- any failure, per address: late answers

    def address_failed(self, address: str) -> float:
        """Count a failure; how long to wait before answering it."""
        now = self._now()
        q = self._addresses.pop(address, None) or deque()
        while q and q[0] < now - self.window:
            q.popleft()
        q.append(now)
        self._addresses[address] = q
        while len(self._addresses) > MAX_KEYS:
            self._addresses.popitem(last=False)
        over = len(q) - self.address_limit
        if over <= 0:
            return 0.0
        return min(self.answer_max, self.answer_base * 2 ** min(over - 1, 20))

    # -- work in progress, per address

    def begin(self, address: str) -> bool:
        """Start verifying a login from ``address``; False when it has too many in flight."""
        if self._busy[address] >= self.in_flight:
            return False
        self._busy[address] += 1
        return True

    def end(self, address: str) -> None:
        n = self._busy[address] - 1
        if n > 0:
            self._busy[address] = n
        else:
            self._busy.pop(address, None)
