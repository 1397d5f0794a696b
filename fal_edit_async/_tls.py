"""The TLS context a transport trusts, made once per process for the certificates it names.

Loading the system's certificates costs tens of milliseconds of CPU. A program that makes a
client per request (a web app), or a test suite, would pay it for every client; the context
is shared instead while the certificate locations and their files are unchanged. Blocking:
call it in a worker thread.
"""

from __future__ import annotations

import os
import ssl
import threading

__all__ = ["default_context", "forget_contexts"]

_Key = tuple[object, ...]

_lock = threading.Lock()
_contexts: dict[_Key, ssl.SSLContext] = {}


def _signature(path: str | None) -> tuple[int, int, int] | None:
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _key() -> _Key:
    # OpenSSL reads SSL_CERT_FILE / SSL_CERT_DIR when a context is made, so they are part of
    # the key; so is each location's identity, so that an updated bundle is read again.
    paths = ssl.get_default_verify_paths()
    return (
        os.environ.get(paths.openssl_cafile_env),
        os.environ.get(paths.openssl_capath_env),
        paths.cafile,
        _signature(paths.cafile),
        paths.capath,
        _signature(paths.capath),
    )


def default_context() -> ssl.SSLContext:
    """``ssl.create_default_context()``, shared while its certificates are unchanged."""
    key = _key()
    with _lock:
        context = _contexts.get(key)
    if context is None:
        # Made outside the lock: a load that blocks (a hung mount) must not hold up others.
        context = ssl.create_default_context()
        with _lock:
            context = _contexts.setdefault(key, context)
    return context


def forget_contexts() -> None:
    """Drop the shared contexts (for tests that count loads)."""
    with _lock:
        _contexts.clear()
