"""Attacks (round atk6) on the TLS contexts (_tls) and the sticky-bit temp files (_files).
Each test was a break, now fixed: the process-wide context cache is gone (each client loads
afresh), the load runs in a daemon thread, and the cleaner leaves other users' files alone."""

from __future__ import annotations

import datetime
import os
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fal_edit_async import AiohttpTransport, Request, TransportError
from fal_edit_async.emulator import Emulator

# -- TLS: a real handshake against a loopback server signed by a CA of the test's own -------


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _ca(cn: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _server_files(
    folder: Path, ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey
) -> tuple[Path, Path]:
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = folder / "server.pem", folder / "server.key"
    cert_path.write_bytes(_pem(cert))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def _subject_hash(cert: Path) -> str:
    out = subprocess.run(
        ["openssl", "x509", "-subject_hash", "-noout", "-in", str(cert)],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


class TlsWorld:
    """A loopback HTTPS server whose certificate a CA made here signs; ``ca_pem`` is that
    CA, ``other_pem`` another CA of the same name (what a rotation would put in its place)."""

    def __init__(self, url: str, ca_pem: bytes, other_pem: bytes) -> None:
        self.url = url
        self.ca_pem = ca_pem
        self.other_pem = other_pem


@pytest.fixture
async def tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[TlsWorld]:
    ca, ca_key = _ca("atk6 test CA")
    other, _ = _ca("atk6 test CA")  # same subject: same hash file name in a capath
    cert, key = _server_files(tmp_path, ca, ca_key)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)

    async def ok(request: web.Request) -> web.StreamResponse:
        return web.Response(body=b"ok")

    app = web.Application()
    app.router.add_get("/", ok)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
    await site.start()
    port = runner.addresses[0][1]
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    try:
        yield TlsWorld(f"https://127.0.0.1:{port}/", _pem(ca), _pem(other))
    finally:
        await runner.cleanup()


async def _trusted(url: str) -> bool:
    """True when a fresh client (one request, as a web app makes) completes the handshake."""
    transport = AiohttpTransport()
    try:
        resp = await transport.request(Request(method="GET", url=url))
        assert 200 == resp.status
        return True
    except TransportError:
        return False
    finally:
        await transport.aclose()


async def _fresh_context_trusts(url: str) -> bool:
    """What ``ssl.create_default_context()`` made now says of the server (the control)."""
    import socket

    host, port = url.split("//")[1].rstrip("/").split(":")

    def handshake() -> bool:
        context = ssl.create_default_context()
        with socket.create_connection((host, int(port))) as sock:
            try:
                with context.wrap_socket(sock, server_hostname=host):
                    return True
            except ssl.SSLCertVerificationError:
                return False

    return await anyio.to_thread.run_sync(handshake)


async def test_a_ca_distrusted_inside_ssl_cert_dir_is_distrusted_by_the_next_client(
    tls: TlsWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SSL_CERT_DIR holds the CA as ``<subject hash>.0`` (c_rehash's layout). A client
    trusts the server. Then the admin rotates the CA: the file is rewritten in place with
    the new CA of the same name (``cat new.pem > <hash>.0``; the folder's mtime does not
    change, as with update-ca-certificates' symlinks into /usr/share). A client created now
    must not trust the server signed by the old CA; a context made now does not."""
    capath = tmp_path / "certs"
    capath.mkdir()
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(tls.ca_pem)
    hashed = capath / f"{_subject_hash(ca_file)}.0"
    hashed.write_bytes(tls.ca_pem)
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "none.pem"))  # the folder alone
    monkeypatch.setenv("SSL_CERT_DIR", str(capath))
    assert await _trusted(tls.url)

    with hashed.open("r+b") as f:  # in place: same inode, the folder untouched
        f.truncate(0)
        f.write(tls.other_pem)
    assert not await _fresh_context_trusts(tls.url)  # what a context made now says
    assert not await _trusted(tls.url), "a client made after the rotation trusts the old CA"


async def test_a_ca_removed_from_a_two_folder_ssl_cert_dir_is_distrusted_by_the_next_client(
    tls: TlsWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SSL_CERT_DIR=a:b (OpenSSL reads each); the CA is in b. A client trusts the server;
    the CA's file is deleted from b (its folder's mtime changes); a client made now must not
    trust the server."""
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(tls.ca_pem)
    hashed = second / f"{_subject_hash(ca_file)}.0"
    hashed.write_bytes(tls.ca_pem)
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "none.pem"))
    monkeypatch.setenv("SSL_CERT_DIR", f"{first}{os.pathsep}{second}")
    assert await _trusted(tls.url)
    hashed.unlink()
    assert not await _fresh_context_trusts(tls.url)
    assert not await _trusted(tls.url), "a client made after the CA was removed trusts it"


async def test_a_bundle_rewritten_to_the_same_size_and_mtime_is_read_again(
    tls: TlsWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = tmp_path / "bundle.pem"
    size = max(len(tls.ca_pem), len(tls.other_pem)) + 8
    bundle.write_bytes(tls.ca_pem.ljust(size, b"\n"))
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path / "no-such-dir"))
    assert await _trusted(tls.url)
    before = bundle.stat()
    with bundle.open("r+b") as f:  # the CA rotated: same size, same inode
        f.write(tls.other_pem.ljust(size, b"\n"))
    os.utime(bundle, ns=(before.st_atime_ns, before.st_mtime_ns))  # as cp -p / rsync -t keep it
    after = bundle.stat()
    assert (before.st_ino, before.st_size) == (after.st_ino, after.st_size)
    assert before.st_ctime_ns != after.st_ctime_ns  # the kernel knows it changed
    assert not await _fresh_context_trusts(tls.url)
    assert not await _trusted(tls.url), "a client made after the rotation trusts the old CA"


# -- TLS: a certificate file that blocks on open, seen from a whole program -----------------

_SCRIPT = """
import asyncio, os, sys
from fal_edit_async import AsyncClient, EditImageInput, JobTimeoutError

async def main():
    os.environ["SSL_CERT_FILE"] = os.environ["ATK6_FIFO"]  # after aiohttp's import-time load
    rest = os.environ["FAL_REST_URL"]
    key, queue = os.environ["FAL_KEY"], os.environ["FAL_QUEUE_URL"]
    async with AsyncClient(api_key=key, queue_url=queue, rest_url=rest, api_url=rest) as c:
        try:
            await c.edit(EditImageInput(prompt="p", image_urls=[sys.argv[1]]), timeout=0.3)
        except JobTimeoutError:
            print("timed out", flush=True)
        except BaseException as exc:
            print("raised", type(exc).__name__, exc, flush=True)

asyncio.run(main())
"""


async def test_a_program_whose_deadline_fired_on_a_blocking_cert_file_exits(
    emulator: Emulator, tmp_path: Path, png_data_uri: str
) -> None:
    """A script: asyncio.run(edit(timeout=0.3)) with SSL_CERT_FILE a FIFO nobody writes.
    (Set once imported: aiohttp itself loads SSL_CERT_FILE when imported, and would hang
    there.) The deadline fires (JobTimeoutError is printed); then main() returns, and the
    program must end. It hangs at interpreter exit, joining the thread stuck in open()."""
    fifo = tmp_path / "certs.pem"
    os.mkfifo(fifo)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAL_")}
    env.update(
        ATK6_FIFO=str(fifo),
        FAL_KEY=emulator.api_key,
        FAL_QUEUE_URL=emulator.queue_url,
        FAL_REST_URL=emulator.rest_url,
    )
    process = await anyio.open_process(
        [sys.executable, "-c", _SCRIPT, png_data_uri], env=env, stdout=subprocess.PIPE
    )
    line, exited = b"", False
    try:
        assert process.stdout is not None
        with anyio.move_on_after(20):  # a hang backstop, not a measurement
            while b"\n" not in line:
                line += await process.stdout.receive()
        assert b"timed out\n" == line
        with anyio.move_on_after(20):  # a hang backstop, not a measurement
            await process.wait()
            exited = True
    finally:
        if not exited:
            process.kill()
            _feed(fifo)
        await process.aclose()
    assert exited, "the program printed its JobTimeoutError and then never exited"


def _feed(fifo: Path) -> None:
    """Open the FIFO for writing (non-blocking) and close it: a reader blocked in open()
    goes on, reading nothing."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return
    os.close(fd)


# -- temp files: what a batch starting in a folder removes ----------------------------------

#: Above the largest pid Linux allows (pid_max tops out at 2**22): never alive here.
_DEAD_PID = 2**22 + 1


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to own a file as another user")
def test_a_batch_run_as_root_leaves_another_users_files_alone(tmp_path: Path) -> None:
    """Root opens any file: a file named like a temp file but owned by another user (a dead
    pid, unlocked) is theirs to clean, and stays."""
    from fal_edit_async._files import remove_stale_parts

    theirs = tmp_path / f".holiday_1.fal-edit-{_DEAD_PID}-0.part"
    theirs.write_bytes(b"another user's download, theirs to clean")
    os.chown(theirs, 65534, 65534)  # nobody
    theirs.chmod(0o644)
    remove_stale_parts(tmp_path)
    assert theirs.exists(), "a file owned by another user was removed"
