"""The TLS context a transport trusts, loaded off the event loop in a daemon thread.

Loading the system's certificates blocks for tens of milliseconds, and for ever when a
certificate file is a FIFO nobody writes or sits on a hung network mount. The caller's wait
can be cancelled (a deadline, Ctrl-C); the thread is a daemon, so a load that never ends does
not keep the program from exiting either (anyio's worker threads are joined at exit).

Each call loads afresh: a context shared by later clients would keep trusting what it read
first (OpenSSL caches the certificates it finds in ``SSL_CERT_DIR`` as handshakes need them),
and a client made after the certificates change must see the change.
"""

from __future__ import annotations

import ssl
import threading

import anyio
import anyio.from_thread
import anyio.lowlevel

__all__ = ["load_default_context"]


async def load_default_context() -> ssl.SSLContext:
    """``ssl.create_default_context()``, made in a daemon thread; cancelling the wait
    abandons the load."""
    token = anyio.lowlevel.current_token()
    done = anyio.Event()
    outcome: list[ssl.SSLContext | BaseException] = []

    def load() -> None:
        try:
            outcome.append(ssl.create_default_context())
        except BaseException as exc:  # handed to the waiting task, raised there
            outcome.append(exc)
        try:
            anyio.from_thread.run_sync(done.set, token=token)
        except Exception:  # the loop is gone (the wait was abandoned): nobody to tell
            pass

    threading.Thread(target=load, name="fal-edit-certificates", daemon=True).start()
    await done.wait()
    (result,) = outcome
    if isinstance(result, BaseException):
        raise result
    return result
