"""fal's webhook keys, fetched from its JWKS URL and cached.

fal sends no key id, so a signature no cached key verifies may be signed by a key fal has
rotated in since: the cache then fetches the set again, at most once per ``min_refresh``
seconds (so a flood of forged deliveries cannot turn into a flood of fetches), and tries
again; the same bound holds while no set could be had at all. The set is kept at most
``ttl`` seconds (fal: 24 h at most). A fetch that fails keeps the keys already held; with
none held, verification fails with :class:`WebhookKeysError` (answered 503, so fal retries
the delivery later).
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Self

import aiohttp
import anyio

from .._exceptions import WebhookKeysError, WebhookUnverifiedError
from .._webhook_models import WebhookEvent, WebhookTag
from ._verify import (
    DEFAULT_MAX_BODY,
    DEFAULT_TOLERANCE,
    WebhookKeys,
    check_signature,
    parse_event,
)

__all__ = ["DEFAULT_JWKS_URL", "MAX_TTL", "JwksCache", "jwks_url_for"]

#: Where fal publishes its webhook keys (older docs: ``rest.alpha.fal.ai``).
DEFAULT_JWKS_URL = "https://rest.fal.ai/.well-known/jwks.json"
#: fal: cache the key set for at most 24 hours.
MAX_TTL = 24 * 3600.0
_MAX_JWKS_BYTES = 1 << 20

#: Fetches a URL's body; raises on any failure.
Fetch = Callable[[str], Awaitable[bytes]]


def jwks_url_for(rest_url: str) -> str:
    """The JWKS URL on a REST origin (``https://rest.fal.ai``, or an emulator's)."""
    return rest_url.rstrip("/") + "/.well-known/jwks.json"


class JwksCache:
    """fal's webhook keys, fetched on first use and cached; verifies deliveries with them.

    Args:
        url: the JWKS URL (:data:`DEFAULT_JWKS_URL`; :func:`jwks_url_for` an emulator's).
        ttl: seconds a fetched set is trusted, at most :data:`MAX_TTL`.
        min_refresh: the fewest seconds between two fetches made because no key verified.
        fetch: fetches the URL's body (default: an aiohttp session this cache owns).
        clock: monotonic seconds, for tests.

    Usage::

        async with JwksCache() as jwks:
            event = await jwks.verify(request.headers, await request.read())
    """

    def __init__(
        self,
        url: str = DEFAULT_JWKS_URL,
        *,
        ttl: float = MAX_TTL,
        min_refresh: float = 60.0,
        fetch: Fetch | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"url must be an http(s) URL, got {url!r}")
        if not (0 < ttl <= MAX_TTL) or not (0 <= min_refresh < math.inf):
            raise ValueError("ttl must be in (0, 24 h] and min_refresh finite seconds >= 0")
        self.url = url
        self.ttl = ttl
        self.min_refresh = min_refresh
        self._fetch = fetch
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None
        self._keys: WebhookKeys | None = None
        self._fetched_at = -math.inf
        self._lock = anyio.Lock()
        #: How many times the set was fetched (successfully or not).
        self.fetches = 0

    def __repr__(self) -> str:
        return f"JwksCache({self.url!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the session this cache opened, if any; harmless to call twice."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def keys(self) -> WebhookKeys:
        """The cached keys, fetched first when there are none or they are older than ``ttl``.

        Raises:
            WebhookKeysError: none are held and fetching failed.
        """
        age = self._clock() - self._fetched_at
        # With none held, a fetch that just failed is not retried before min_refresh: else
        # each (forged) delivery during an outage of fal's JWKS would make one fetch.
        stale = age >= self.ttl or (self._keys is None and age >= self.min_refresh)
        if stale:
            await self._refresh(self._fetched_at)
        if self._keys is None:
            raise WebhookKeysError(f"fal's webhook keys could not be fetched from {self.url}")
        return self._keys

    async def refresh(self) -> WebhookKeys:
        """Fetch the set now, whatever its age.

        Raises:
            WebhookKeysError: fetching failed and no keys are held.
        """
        await self._refresh(self._fetched_at, force=True)
        return await self.keys()

    async def _refresh(self, seen: float, *, force: bool = False) -> None:
        async with self._lock:
            if self._fetched_at != seen and not force:
                return  # another task fetched while this one waited
            self.fetches += 1
            try:
                body = await self._get()
                self._keys = WebhookKeys.from_jwks(body)
            except WebhookKeysError:
                pass  # keep what is held: a bad answer must not disarm verification
            except (aiohttp.ClientError, TimeoutError, OSError):
                pass
            finally:
                # Stamped once the fetch ended, so a task arriving meanwhile waits on the
                # lock for this fetch rather than finding "fetched just now" and no keys.
                self._fetched_at = self._clock()

    async def _get(self) -> bytes:
        if self._fetch is not None:
            return await self._fetch(self.url)
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))
        async with self._session.get(self.url, allow_redirects=False) as response:
            if response.status != 200:
                raise WebhookKeysError(f"{self.url} answered {response.status}")
            body = await response.content.read(_MAX_JWKS_BYTES + 1)
            if len(body) > _MAX_JWKS_BYTES:
                raise WebhookKeysError(f"{self.url} sent more than {_MAX_JWKS_BYTES} bytes")
            return body

    async def verify(
        self,
        headers: Mapping[str, str],
        raw_body: bytes,
        *,
        now: float | None = None,
        tolerance: float = DEFAULT_TOLERANCE,
        max_body: int = DEFAULT_MAX_BODY,
        tag: WebhookTag | None = None,
    ) -> WebhookEvent:
        """Verify a delivery with the cached keys, refetching them once if none verifies.

        Raises what :func:`verify` raises, and :class:`WebhookKeysError` when no keys can
        be had at all.
        """
        keys = await self.keys()
        seen = self._fetched_at
        try:
            found = check_signature(
                headers, raw_body, keys, now=now, tolerance=tolerance, max_body=max_body
            )
        except WebhookUnverifiedError:
            if self._clock() - seen < self.min_refresh:
                raise
            await self._refresh(seen)
            found = check_signature(
                headers,
                raw_body,
                await self.keys(),
                now=now,
                tolerance=tolerance,
                max_body=max_body,
            )
        return parse_event(raw_body, *found, tag=tag)
