"""The CDN origin: output and uploaded files, and uploads. It never asks for the API key."""

from __future__ import annotations

from aiohttp import web

from . import _hostile
from ._engine import Engine
from ._http import BaseApp, abort, json_response, safe_name

__all__ = ["CdnApp", "build_cdn_app"]


class CdnApp(BaseApp):
    """File downloads (``GET /files/{id}/{name}``), token uploads (``POST /files/upload``)
    and one-time upload URLs (``PUT /uploads/{id}``)."""

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        """Route by path; count requests that carry credentials they should not."""
        parts = request.path.split("/")
        engine = self.engine
        authorization = request.headers.get("Authorization")
        is_upload = request.method in ("POST", "PUT") and len(parts) >= 3
        if authorization and not (is_upload and engine.store.is_token(authorization)):
            engine.counters.cdn_auth_requests += 1
        if request.method in ("GET", "HEAD") and len(parts) == 4 and parts[1] == "files":
            return await self._download(request, parts[2], parts[3])
        if request.method == "POST" and request.path == "/files/upload":
            faulted = await self._faulted(request, "upload")
            return faulted if faulted is not None else await self._upload(request)
        if request.method == "PUT" and len(parts) == 3 and parts[1] == "uploads":
            faulted = await self._faulted(request, "upload")
            return faulted if faulted is not None else await self._put(request, parts[2])
        return json_response(404, {"detail": "Not Found"}, None)

    async def _faulted(self, request: web.Request, route: str) -> web.StreamResponse | None:
        fault = self.engine.plan.http_fault(route)
        return None if fault is None else await self.http_fault(fault, request)

    async def _download(self, request: web.Request, file_id: str, name: str) -> web.StreamResponse:
        stored = self.engine.store.get(file_id)
        if stored is None or stored.name != name:
            return json_response(404, {"detail": "File not found"}, None)
        if request.method == "HEAD":
            return web.Response(body=stored.data, content_type=stored.content_type)
        faulted = await self._faulted(request, "download")
        if faulted is not None:
            return faulted
        hostile = self.engine.plan.hostile("download")
        kind = hostile.kind if hostile is not None else None
        if hostile is not None and (early := _hostile.early_answer(hostile, request)):
            return early
        truncate = self.engine.plan.take("truncated_download") is not None
        content_type = "text/html" if kind == "wrong_content_type" else stored.content_type
        counters = self.engine.counters
        counters.download_started()
        self.engine.notify()
        try:
            if kind == "oversized":
                return await _hostile.send_oversized(request, stored.data, content_type)
            return await self._send(request, stored.data, content_type, truncate)
        finally:
            counters.downloads_in_flight -= 1
            self.engine.notify()

    async def _send(
        self, request: web.Request, data: bytes, content_type: str, truncate: bool
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": content_type, "Content-Length": str(len(data))}
        )
        await response.prepare(request)
        await self.engine.download_gate.passage()
        try:
            if truncate:
                await response.write(data[: len(data) // 2])
                abort(request)  # Content-Length promised more: the client sees a short body
                return response
            await response.write(data)
            await response.write_eof()
        except ConnectionError:
            return response
        self.engine.counters.downloads += 1
        return response

    async def _upload(self, request: web.Request) -> web.StreamResponse:
        engine = self.engine
        if not engine.store.is_token(request.headers.get("Authorization")):
            engine.counters.unauthorized += 1
            return json_response(401, {"detail": "Missing or invalid CDN token"}, None)
        try:
            data = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return json_response(413, {"detail": "File too large"}, None)
        content_type = request.headers.get("Content-Type") or "application/octet-stream"
        name = safe_name(request.headers.get("X-Fal-File-Name") or "upload.bin")
        engine.counters.cdn_uploads += 1
        return json_response(200, {"access_url": engine.store.put(data, content_type, name)}, None)

    async def _put(self, request: web.Request, upload_id: str) -> web.StreamResponse:
        try:
            data = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return json_response(413, {"detail": "File too large"}, None)
        self.engine.counters.upload_puts += 1
        if not self.engine.store.complete(upload_id, data, request.headers.get("Content-Type")):
            return json_response(404, {"detail": "Unknown or used upload URL"}, None)
        return json_response(200, {}, None)


def build_cdn_app(engine: Engine, max_body: int) -> web.Application:
    """The CDN application."""
    app = web.Application(client_max_size=max_body)
    app.router.add_route("*", "/{tail:.*}", CdnApp(engine).handle)
    return app
