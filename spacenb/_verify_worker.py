"""The worker behind :class:`spacenb.aio.verify_pool.VerifyPool`: ``python -m
spacenb._verify_worker`` reads batches of ``(signing key text, signature, signed bytes)``
from its standard input (a 4-byte length, then a pickle, from its parent only) and answers
each with one byte per check, 1 if the signature verifies. It imports only the protocol's
cryptography, so it starts quickly, and it exits when its parent closes the pipe.
"""

from __future__ import annotations

import pickle
import struct
import sys

_LEN = struct.Struct(">I")


def serve() -> None:
    from .exceptions import SpacenbError
    from .protocol import crypto
    from .protocol.keys import decode_public_key

    cache: dict[str, crypto.PublicKey | None] = {}
    source, sink = sys.stdin.buffer, sys.stdout.buffer
    while True:
        head = source.read(_LEN.size)
        if len(head) < _LEN.size:
            return
        key_texts, items = pickle.loads(source.read(_LEN.unpack(head)[0]))
        keys = []
        for text in key_texts:
            if text not in cache:
                try:
                    cache[text] = decode_public_key(text, "sig")
                except SpacenbError:
                    cache[text] = None
            keys.append(cache[text])
        answer = bytearray(len(items))
        for i, (index, signature, data) in enumerate(items):
            key = keys[index]
            if key is None:
                continue
            try:
                crypto.verify(key, signature, data)
            except SpacenbError:
                continue
            answer[i] = 1
        sink.write(_LEN.pack(len(answer)) + bytes(answer))
        sink.flush()


if __name__ == "__main__":
    serve()
