"""Ed25519 signing (RFC 8032), in pure Python: the emulator signs its webhooks with it.

The emulator imports nothing of the client and needs no extra package for this, and the
client verifies with ``cryptography``: two implementations, so a shared mistake cannot pass
as a valid signature. Not constant time; it signs test deliveries, nothing secret.
"""

from __future__ import annotations

import hashlib

__all__ = ["public_key", "sign"]

_P = 2**255 - 19
_L = 2**252 + 27742317777372353535851937790883648493
_D = -121665 * pow(121666, _P - 2, _P) % _P

_Point = tuple[int, int, int, int]  # extended coordinates (X, Y, Z, T), x = X/Z, y = Y/Z


def _add(p: _Point, q: _Point) -> _Point:
    a = (p[1] - p[0]) * (q[1] - q[0]) % _P
    b = (p[1] + p[0]) * (q[1] + q[0]) % _P
    c = 2 * p[3] * q[3] * _D % _P
    d = 2 * p[2] * q[2] % _P
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % _P, g * h % _P, f * g % _P, e * h % _P)


def _base() -> _Point:
    y = 4 * pow(5, _P - 2, _P) % _P
    x2 = (y * y - 1) * pow(_D * y * y + 1, _P - 2, _P) % _P
    x = pow(x2, (_P + 3) // 8, _P)
    if (x * x - x2) % _P:
        x = x * pow(2, (_P - 1) // 4, _P) % _P
    if x & 1:
        x = _P - x
    return (x, y, 1, x * y % _P)


def _table() -> list[_Point]:
    point, table = _base(), []
    for _ in range(255):  # a clamped scalar has bit 254 set
        table.append(point)
        point = _add(point, point)
    return table


_POWERS = _table()  # 2^i * B: a scalar times B is then additions only


def _times_base(scalar: int) -> _Point:
    result: _Point = (0, 1, 1, 0)
    for i, power in enumerate(_POWERS):
        if scalar >> i & 1:
            result = _add(result, power)
    return result


def _encode(point: _Point) -> bytes:
    zinv = pow(point[2], _P - 2, _P)
    x, y = point[0] * zinv % _P, point[1] * zinv % _P
    return (y | (x & 1) << 255).to_bytes(32, "little")


def _expand(seed: bytes) -> tuple[int, bytes]:
    digest = hashlib.sha512(seed).digest()
    a = int.from_bytes(digest[:32], "little")
    a &= (1 << 254) - 8
    a |= 1 << 254
    return a, digest[32:]


def public_key(seed: bytes) -> bytes:
    """The 32-byte public key of a 32-byte secret seed."""
    if len(seed) != 32:
        raise ValueError("an Ed25519 seed is 32 bytes")
    return _encode(_times_base(_expand(seed)[0]))


def sign(seed: bytes, message: bytes) -> bytes:
    """The 64-byte Ed25519 signature of ``message`` under the key of ``seed``."""
    a, prefix = _expand(seed)
    public = _encode(_times_base(a))
    r = int.from_bytes(hashlib.sha512(prefix + message).digest(), "little") % _L
    big_r = _encode(_times_base(r))
    k = int.from_bytes(hashlib.sha512(big_r + public + message).digest(), "little") % _L
    return big_r + ((r + k * a) % _L).to_bytes(32, "little")
