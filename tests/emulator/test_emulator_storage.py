"""Storage: the CDN token and direct upload, the initiate + PUT flow, and CDN credentials."""

from __future__ import annotations

from datetime import UTC, datetime

import aiohttp

from fal_edit_async.emulator import Emulator

from .emu_helpers import png_bytes

TOKEN_URL = "/storage/auth/token?storage_type=fal-cdn-v3"


async def cdn_token(emu: Emulator, http: aiohttp.ClientSession) -> dict[str, str]:
    """Fetch a CDN token from the REST origin."""
    async with http.post(emu.rest_url + TOKEN_URL, json={}) as resp:
        assert 200 == resp.status
        token: dict[str, str] = await resp.json()
        return token


async def test_token_and_direct_upload(emu: Emulator, http: aiohttp.ClientSession) -> None:
    """A CDN token lets fal_client's default path POST bytes to the CDN and get a file URL."""
    token = await cdn_token(emu, http)
    assert ("Bearer", emu.cdn_url) == (token["token_type"], token["base_url"])
    assert datetime.fromisoformat(token["expires_at"]) > datetime.now(UTC)

    data = png_bytes()
    headers = {
        "Authorization": f"Bearer {token['token']}",
        "Content-Type": "image/png",
        "X-Fal-File-Name": "../../cat.png",
    }
    async with aiohttp.ClientSession() as cdn:
        async with cdn.post(emu.cdn_url + "/files/upload", data=data, headers=headers) as resp:
            assert 200 == resp.status
            url = (await resp.json())["access_url"]
        assert url.startswith(emu.cdn_url + "/files/") and url.endswith("/cat.png")
        async with cdn.get(url) as resp:
            assert (data, "image/png") == (await resp.read(), resp.content_type)
    counters = emu.counters
    assert (1, 1, 0) == (counters.token_requests, counters.cdn_uploads, counters.cdn_auth_requests)


async def test_direct_upload_needs_a_cdn_token(emu: Emulator) -> None:
    """Uploading without a CDN token is refused; sending the API key to the CDN is counted."""
    async with aiohttp.ClientSession() as cdn:
        for headers in ({}, {"Authorization": f"Key {emu.api_key}"}, {"Authorization": "Bearer x"}):
            async with cdn.post(emu.cdn_url + "/files/upload", data=b"x", headers=headers) as r:
                assert 401 == r.status
    assert 2 == emu.counters.cdn_auth_requests


async def test_initiate_then_put(emu: Emulator, http: aiohttp.ClientSession) -> None:
    """The initiate flow hands out a one-time CDN upload URL; the file URL serves the bytes."""
    body = {"file_name": "dog.png", "content_type": "image/png"}
    async with http.post(
        emu.rest_url + "/storage/upload/initiate?storage_type=fal-cdn-v3", json=body
    ) as resp:
        urls = await resp.json()
    assert urls["upload_url"].startswith(emu.cdn_url)
    assert urls["file_url"].endswith("/dog.png")
    async with aiohttp.ClientSession() as cdn:
        async with cdn.get(urls["file_url"]) as resp:
            assert 404 == resp.status  # nothing uploaded yet
        async with cdn.put(urls["upload_url"], data=b"woof") as resp:
            assert 200 == resp.status
        async with cdn.put(urls["upload_url"], data=b"again") as resp:
            assert 404 == resp.status  # one-time URL
        async with cdn.get(urls["file_url"]) as resp:
            assert (b"woof", "image/png") == (await resp.read(), resp.content_type)
    assert (1, 2, 0) == (
        emu.counters.upload_initiates,
        emu.counters.upload_puts,
        emu.counters.cdn_auth_requests,
    )


async def test_cdn_downloads_with_credentials_are_counted(emu: Emulator) -> None:
    """Any Authorization header on a CDN download counts: a good client never sends one."""
    async with aiohttp.ClientSession(headers={"Authorization": f"Key {emu.api_key}"}) as leaky:
        async with leaky.get(emu.cdn_url + "/files/a/b.png") as resp:
            assert 404 == resp.status
    assert 1 == emu.counters.cdn_auth_requests


async def test_upload_size_limit() -> None:
    """Uploads above ``max_upload_bytes`` are refused with 413 JSON."""
    async with Emulator(max_upload_bytes=1000) as emu:
        headers = {"Authorization": f"Key {emu.api_key}"}
        async with aiohttp.ClientSession(headers=headers) as http:
            token = await cdn_token(emu, http)
            auth = {"Authorization": f"Bearer {token['token']}"}
            async with http.post(
                emu.cdn_url + "/files/upload", data=b"x" * 2000, headers=auth
            ) as r:
                assert 413 == r.status
            async with http.post(emu.url_for("a/b"), data=b"x" * 2000) as resp:
                assert 413 == resp.status
        assert 0 == emu.counters.submits
