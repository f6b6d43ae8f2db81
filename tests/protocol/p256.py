"""P-256 curve constants for building invalid points in tests."""

from __future__ import annotations

from spacenb.protocol.crypto import P256_ORDER

N = P256_ORDER
P = 2**256 - 2**224 + 2**192 + 2**96 - 1  # the field prime
B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B  # y^2 = x^3 - 3x + b


def x_without_a_point() -> int:
    """The smallest x for which x^3 - 3x + b is not a square mod p: no y exists."""
    x = 0
    while pow((x**3 - 3 * x + B) % P, (P - 1) // 2, P) == 1:
        x += 1
    return x
