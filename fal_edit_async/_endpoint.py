"""Endpoint ids as fal parses them (protocol reference §1.2).

Submit goes to the full id (``fal-ai/gpt-image-1/edit-image``); status, result and cancel live
under the app root (``fal-ai/gpt-image-1``), with the sub-path dropped. Only ``workflows`` and
``comfy`` are namespaces, which make the root three segments long.
"""

from __future__ import annotations

import functools
import re

import attrs

from ._exceptions import InputError

__all__ = ["DEFAULT_ENDPOINT", "NAMESPACES", "EndpointId"]

#: The endpoint this package is built for.
DEFAULT_ENDPOINT = "fal-ai/gpt-image-1/edit-image"

#: First segments that name a namespace rather than an owner (fal-client's ``APP_NAMESPACES``).
NAMESPACES = frozenset({"workflows", "comfy"})

_LEGACY_ID = re.compile(r"[0-9]+-[A-Za-z0-9-]+")
_SEGMENT = re.compile(r"[A-Za-z0-9._~-]+")


def _segment(part: str) -> bool:
    # Dots may be in a segment, never be one: "." and ".." would move the URL the key is sent
    # to (URLs are normalised), so "fal-ai/../x" would POST to "x". fullmatch, as "$" would
    # let a trailing newline through.
    return _SEGMENT.fullmatch(part) is not None and part not in (".", "..")


_ALLOWED = "an endpoint id like 'fal-ai/gpt-image-1/edit-image'"


@attrs.frozen(kw_only=True)
class EndpointId:
    """A parsed endpoint id: ``[namespace/]owner/alias[/path]``."""

    owner: str
    alias: str
    path: str | None = None
    namespace: str | None = None

    @classmethod
    def parse(cls, endpoint_id: str) -> EndpointId:
        """Parse an id the way fal-client and @fal-ai/client do; raise InputError if invalid."""
        if not isinstance(endpoint_id, str):
            raise InputError("endpoint", endpoint_id, _ALLOWED)
        if cls is EndpointId:  # ids are few and parsed for every submit: parse each once
            return _parsed(endpoint_id)
        return cls._parse(endpoint_id)

    @classmethod
    def _parse(cls, endpoint_id: str) -> EndpointId:
        allowed = _ALLOWED
        parts = endpoint_id.strip("/").split("/")
        if len(parts) == 1:
            if not _LEGACY_ID.fullmatch(parts[0]):
                raise InputError("endpoint", endpoint_id, allowed)
            owner, _, alias = parts[0].partition("-")
            return cls(owner=owner, alias=alias)
        if not all(_segment(p) for p in parts):
            raise InputError("endpoint", endpoint_id, allowed)
        namespace = None
        if parts[0] in NAMESPACES:
            if len(parts) < 3:
                raise InputError("endpoint", endpoint_id, f"{parts[0]}/<owner>/<alias>[/path]")
            namespace, parts = parts[0], parts[1:]
        path = "/".join(parts[2:]) or None
        return cls(owner=parts[0], alias=parts[1], path=path, namespace=namespace)

    @property
    def app_root(self) -> str:
        """The prefix of status, result and cancel URLs: ``[namespace/]owner/alias``."""
        base = f"{self.owner}/{self.alias}"
        return f"{self.namespace}/{base}" if self.namespace else base

    @property
    def submit_path(self) -> str:
        """The path a submit is POSTed to: the full id, sub-path kept."""
        return f"{self.app_root}/{self.path}" if self.path else self.app_root

    def __str__(self) -> str:
        return self.submit_path


@functools.lru_cache(maxsize=64)
def _parsed(endpoint_id: str) -> EndpointId:
    return EndpointId._parse(endpoint_id)
