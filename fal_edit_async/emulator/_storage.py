"""In-memory file storage behind the emulator's CDN: outputs and uploaded inputs.

Files live at ``{cdn_url}/files/{file_id}/{name}``. Uploads arrive either with a CDN token
(``POST /files/upload``, fal_client's default) or on a one-time upload URL handed out by
``/storage/upload/initiate`` (the JS client's path, and fal_client's fallback).
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from urllib.parse import quote, unquote, urlsplit

import attrs

__all__ = ["FileStore", "StoredFile"]

_TOKEN_LIFETIME = timedelta(hours=1)


@attrs.frozen(kw_only=True)
class StoredFile:
    """One file the CDN serves."""

    data: bytes = attrs.field(repr=lambda d: f"<{len(d)} bytes>")
    content_type: str
    name: str


@attrs.define(kw_only=True)
class _PendingUpload:
    file_id: str
    name: str
    content_type: str


class FileStore:
    """Files by id, the CDN tokens handed out, and upload URLs not used yet.

    Args:
        cdn_url: the CDN origin, for building file URLs (set once the site is listening).
    """

    def __init__(self, cdn_url: str = "") -> None:
        self.cdn_url = cdn_url
        self._files: dict[str, StoredFile] = {}
        self._tokens: set[str] = set()
        self._pending: dict[str, _PendingUpload] = {}

    def __len__(self) -> int:
        return len(self._files)

    def put(self, data: bytes, content_type: str, name: str) -> str:
        """Store a file and return its CDN URL."""
        file_id = secrets.token_hex(8)
        self._files[file_id] = StoredFile(data=data, content_type=content_type, name=name)
        return self.url_for(file_id, name)

    def url_for(self, file_id: str, name: str) -> str:
        """The CDN URL of a stored (or announced) file."""
        return f"{self.cdn_url}/files/{file_id}/{quote(name)}"

    def get(self, file_id: str) -> StoredFile | None:
        """The file with this id, or None."""
        return self._files.get(file_id)

    def lookup_url(self, url: str) -> StoredFile | None:
        """The stored file a URL of this CDN points at, or None (also for other hosts)."""
        if not url.startswith(self.cdn_url + "/files/"):
            return None
        parts = urlsplit(url).path.split("/")
        # ["", "files", file_id, name]
        if len(parts) != 4:
            return None
        found = self._files.get(parts[2])
        return found if found is not None and found.name == unquote(parts[3]) else None

    def delete_url(self, url: str) -> bool:
        """Forget the stored file a URL of this CDN points at; False when there is none."""
        found = self.lookup_url(url)
        if found is None:
            return False
        file_id = urlsplit(url).path.split("/")[2]
        del self._files[file_id]
        return True

    def issue_token(self) -> dict[str, str]:
        """A CDN upload token, as ``/storage/auth/token`` returns it."""
        token = secrets.token_urlsafe(24)
        self._tokens.add(token)
        expires = datetime.now(UTC) + _TOKEN_LIFETIME
        return {
            "token": token,
            "token_type": "Bearer",
            "base_url": self.cdn_url,
            "expires_at": expires.isoformat(),
        }

    def is_token(self, authorization: str | None) -> bool:
        """True when an Authorization header carries a CDN token we issued."""
        if not authorization:
            return False
        scheme, _, token = authorization.partition(" ")
        return scheme.lower() == "bearer" and token in self._tokens

    def initiate(self, name: str, content_type: str) -> dict[str, str]:
        """Announce an upload: a one-time ``upload_url`` and the ``file_url`` it will have."""
        upload_id = secrets.token_urlsafe(16)
        file_id = secrets.token_hex(8)
        self._pending[upload_id] = _PendingUpload(
            file_id=file_id, name=name, content_type=content_type
        )
        return {
            "upload_url": f"{self.cdn_url}/uploads/{upload_id}",
            "file_url": self.url_for(file_id, name),
        }

    def complete(self, upload_id: str, data: bytes, content_type: str | None) -> bool:
        """Store the bytes PUT to an upload URL; False when the URL is unknown or used."""
        pending = self._pending.pop(upload_id, None)
        if pending is None:
            return False
        # The type announced at initiate wins over a generic one on the PUT (HTTP clients
        # label raw bytes application/octet-stream unless told otherwise).
        if not content_type or content_type == "application/octet-stream":
            content_type = pending.content_type
        self._files[pending.file_id] = StoredFile(
            data=data, content_type=content_type, name=pending.name
        )
        return True
