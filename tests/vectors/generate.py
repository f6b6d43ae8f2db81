"""Regenerate spacenb's protocol test vectors (PROTOCOL.md, "Test vectors").

    python tests/vectors/generate.py          # rewrite the JSON files beside this script
    python tests/vectors/generate.py --check  # exit 1 if a file would change

Every input is fixed: keys come from seeds (``IdentityKeys.from_seed``,
``SpaceKeyPair.from_seed``), and message ids, IVs, ephemeral scalars and the clock are
constants below. ECDSA signatures are randomized, so a signature already stored in a file
is kept as long as it still verifies over the freshly computed signed bytes; only a change
to what is signed produces a new one. Running the script twice therefore changes nothing,
and ``tests/protocol/test_vectors.py`` checks that it reproduces the committed files byte
for byte.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from spacenb.clock import FixedClock
from spacenb.exceptions import IntegrityError
from spacenb.protocol import crypto
from spacenb.protocol.encoding import b64d, b64e, canonical_json, lp_encode
from spacenb.protocol.envelope import Envelope, envelope_aad, seal_envelope
from spacenb.protocol.filecodec import FileEncoder, segment_aad, segment_key
from spacenb.protocol.frames import Auth, auth_signed_bytes, create_space_signed_bytes
from spacenb.protocol.keys import IdentityKeys, SpaceKeyPair, decode_public_key, scalar_from_seed
from spacenb.protocol.tickets import issue_ticket
from spacenb.protocol.wrap import WrappedKey, wrap_group_key

VECTOR_DIR = Path(__file__).resolve().parent

# ---------------------------------------------------------------- fixed inputs

IDENTITY_SEEDS = {
    "alice": b"spacenb test vector: alice",
    "bob": b"spacenb test vector: bob",
    "keeper": b"spacenb test vector: keeper",
    "relay": b"spacenb test vector: relay",
}
SPACE_SEEDS = {
    "static": b"spacenb test vector: static space",
    "rotate": b"spacenb test vector: rotate space",
}
CLOCK_START_US = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z
STATIC_KEY = bytes(range(32))  # group key, static space, epoch 0
ROTATE_KEY_3 = bytes(range(32, 64))  # group key, rotate space, epoch 3
AUTH_NONCE = bytes(range(0xA0, 0xC0))
APP_KEY = "spacenb-test-app-key"


def identities() -> dict[str, IdentityKeys]:
    return {name: IdentityKeys.from_seed(seed) for name, seed in IDENTITY_SEEDS.items()}


def spaces() -> dict[str, SpaceKeyPair]:
    return {name: SpaceKeyPair.from_seed(seed) for name, seed in SPACE_SEEDS.items()}


# ---------------------------------------------------------------- signature reuse

Previous = dict[str, dict[str, Any]]  # file name -> {vector name -> vector}


def _previous_vectors(previous: dict[str, Any], filename: str) -> dict[str, dict[str, Any]]:
    doc = previous.get(filename) or {}
    return {v["name"]: v for v in doc.get("vectors", []) if isinstance(v, dict) and "name" in v}


def _stable_signature(
    old: dict[str, Any] | None,
    key: crypto.PublicKey,
    signed: bytes,
    fresh: Callable[[], bytes],
    field: str = "signature_hex",
) -> bytes:
    """The stored signature if it still verifies over ``signed``, else a fresh one."""
    if old is not None and isinstance(old.get(field), str):
        try:
            stored = bytes.fromhex(old[field])
            crypto.verify(key, stored, signed)
            return stored
        except (ValueError, IntegrityError):
            pass
    return fresh()


# ---------------------------------------------------------------- the vector files


def identity_vectors() -> dict[str, Any]:
    vectors = []
    for name, keys in identities().items():
        blob = keys.to_bytes()
        vectors.append(
            {
                "name": name,
                "seed_hex": IDENTITY_SEEDS[name].hex(),
                "signing_scalar_hex": blob[1:33].hex(),
                "ecdh_scalar_hex": blob[33:].hex(),
                "signing_key": keys.signing_key,
                "ecdh_key": keys.ecdh_key,
                "signing_point_hex": crypto.public_key_to_point(
                    decode_public_key(keys.signing_key, "sig")
                ).hex(),
                "ecdh_point_hex": crypto.public_key_to_point(
                    decode_public_key(keys.ecdh_key, "dh")
                ).hex(),
                "fingerprint": keys.fingerprint,
                "private_blob_hex": blob.hex(),
                "private_text": keys.to_text(),
            }
        )
    return {
        "description": "Identity keys derived from seeds: scalars, public key texts, "
        "fingerprint (sig key text, dh key text), private blob and its text form.",
        "vectors": vectors,
    }


def space_key_vectors() -> dict[str, Any]:
    vectors = []
    for name, pair in spaces().items():
        point = crypto.public_key_to_point(decode_public_key(pair.space_id, "spc"))
        vectors.append(
            {
                "name": name,
                "seed_hex": SPACE_SEEDS[name].hex(),
                "scalar_hex": pair.to_bytes().hex(),
                "space_id": pair.space_id,
                "encoded_hex": (bytes([1, 1]) + point).hex(),
                "point_hex": point.hex(),
            }
        )
    return {
        "description": "Space key pairs derived from seeds; the space id is the 'spc' text "
        "form of the public key (version 1, suite 1, compressed point).",
        "vectors": vectors,
    }


def _field_json(value: bytes | str | int) -> dict[str, Any]:
    if isinstance(value, int):
        return {"int": value}
    if isinstance(value, str):
        return {"text": value}
    return {"hex": value.hex()}


def encoding_vectors() -> dict[str, Any]:
    lp_cases: list[tuple[str, tuple[bytes | str | int, ...]]] = [
        ("protocol example", ("ab", 1)),
        ("no fields", ()),
        ("empty text and bytes", ("", b"")),
        ("u64 extremes", (0, 2**64 - 1)),
        ("utf-8 text", ("héllo ✓",)),
        ("label with bytes", ("spacenb/v1/auth", bytes(range(8)))),
    ]
    b64_cases = [b"", b"\x00", b"\xff\xfe", b"\x00\x01\x02", bytes(range(0xF8, 0x100)), b"?>?"]
    canonical = {"ts": 1, "id": "x", "body": {"b": [1, "é", None], "a": True}}
    return {
        "description": "Canonical length-prefixed encoding (lp_encode), unpadded base64url, "
        "and canonical JSON.",
        "lp_encode": [
            {
                "name": name,
                "fields": [_field_json(f) for f in fields],
                "encoded_hex": lp_encode(*fields).hex(),
            }
            for name, fields in lp_cases
        ],
        "base64url": [{"bytes_hex": data.hex(), "text": b64e(data)} for data in b64_cases],
        "base64url_invalid": [
            {"text": "AA==", "why": "padding"},
            {"text": "AAA=", "why": "padding"},
            {"text": "A", "why": "impossible length"},
            {"text": "AB", "why": "non-canonical: trailing bits set"},
            {"text": "AAB", "why": "non-canonical: trailing bits set"},
            {"text": "+/8", "why": "standard alphabet, not url-safe"},
            {"text": "AA AA", "why": "character outside the alphabet"},
        ],
        "canonical_json": [
            {"value": canonical, "canonical_hex": canonical_json(canonical).hex()},
        ],
    }


def _wire_envelope(env: Envelope) -> dict[str, Any]:
    return {
        "kind": env.kind,
        "source": env.source,
        "target": env.target,
        "subject": env.subject,
        "epoch": env.epoch,
        "content_type": env.content_type,
        "iv": b64e(env.iv),
        "ciphertext": b64e(env.ciphertext),
        "signature": b64e(env.signature),
    }


def envelope_vectors(previous: dict[str, Any]) -> dict[str, Any]:
    ids, sp = identities(), spaces()
    old = _previous_vectors(previous, "envelopes.json")
    cases = [
        {
            "name": "channel message",
            "sender": "alice",
            "group_key": STATIC_KEY,
            "kind": "msg",
            "target": sp["static"].space_id,
            "subject": "default",
            "epoch": 0,
            "content_type": "text/plain",
            "body": {"text": "hello, bob 👋", "n": 1},
            "message_id": "00112233445566778899aabbccddeeff",
            "iv": bytes.fromhex("000102030405060708090a0b"),
        },
        {
            "name": "ephemeral signal",
            "sender": "bob",
            "group_key": ROTATE_KEY_3,
            "kind": "eph",
            "target": sp["rotate"].space_id,
            "subject": "typing",
            "epoch": 3,
            "content_type": None,
            "body": True,
            "message_id": "ffeeddccbbaa99887766554433221100",
            "iv": bytes.fromhex("f0f1f2f3f4f5f6f7f8f9fafb"),
        },
    ]
    vectors = []
    for case in cases:
        sender = ids[case["sender"]]
        env, message = seal_envelope(
            sender,
            case["group_key"],
            kind=case["kind"],
            source=case["sender"],
            target=case["target"],
            subject=case["subject"],
            epoch=case["epoch"],
            content_type=case["content_type"],
            body=case["body"],
            clock=FixedClock(CLOCK_START_US),
            message_id=case["message_id"],
            iv=case["iv"],
        )
        signed = env.signed_bytes()
        signature = _stable_signature(
            old.get(case["name"]),
            decode_public_key(sender.signing_key, "sig"),
            signed,
            lambda env=env: env.signature,
        )
        env = Envelope(
            env.kind, env.source, env.target, env.subject, env.epoch, env.content_type,
            env.iv, env.ciphertext, signature,
        )  # fmt: skip
        vectors.append(
            {
                "name": case["name"],
                "sender": case["sender"],
                "sender_signing_key": sender.signing_key,
                "group_key_hex": case["group_key"].hex(),
                "kind": env.kind,
                "source": env.source,
                "target": env.target,
                "subject": env.subject,
                "epoch": env.epoch,
                "content_type": env.content_type,
                "body": message.body,
                "message_id": message.id,
                "sent_at_ms": message.sent_at_ms,
                "iv_hex": env.iv.hex(),
                "plaintext_hex": message.to_bytes().hex(),
                "aad_hex": envelope_aad(
                    env.kind, env.source, env.target, env.subject, env.epoch, env.content_type
                ).hex(),
                "ciphertext_hex": env.ciphertext.hex(),
                "signed_hex": signed.hex(),
                "signature_hex": signature.hex(),
                "wire": _wire_envelope(env),
            }
        )
    return {
        "description": "Sealed and signed envelopes. Everything but the signature is "
        "deterministic; the signature is randomized ECDSA and must verify over signed_hex.",
        "clock_us": CLOCK_START_US,
        "vectors": vectors,
    }


def wrap_vectors(previous: dict[str, Any]) -> dict[str, Any]:
    ids, sp = identities(), spaces()
    old = _previous_vectors(previous, "wraps.json")
    cases = [
        ("static space, epoch 0", "static", 0, STATIC_KEY, "bob", "keeper", "wrap/static"),
        ("rotate space, epoch 3", "rotate", 3, ROTATE_KEY_3, "bob", "alice", "wrap/rotate"),
    ]
    vectors = []
    for name, space, epoch, group_key, recipient, wrapper, eph_label in cases:
        space_id = sp[space].space_id
        recipient_dh = decode_public_key(ids[recipient].ecdh_key, "dh")
        eph_scalar = scalar_from_seed(eph_label.encode(), "wrap/ephemeral")
        iv = crypto.sha256(eph_label.encode())[: crypto.GCM_IV_SIZE]
        wrapped = wrap_group_key(
            group_key,
            space_id=space_id,
            epoch=epoch,
            recipient=recipient,
            recipient_ecdh=recipient_dh,
            wrapper=wrapper,
            wrapper_identity=ids[wrapper],
            ephemeral_scalar=eph_scalar,
            iv=iv,
        )
        signed = wrapped.signed_bytes()
        signature = _stable_signature(
            old.get(name),
            decode_public_key(ids[wrapper].signing_key, "sig"),
            signed,
            lambda w=wrapped: w.signature,
        )
        wrapped = WrappedKey(space_id, epoch, recipient, wrapper, wrapped.blob, signature)
        eph = crypto.private_key_from_bytes(eph_scalar)
        eph_point = crypto.public_key_to_point(eph.public_key())
        recipient_point = crypto.public_key_to_point(recipient_dh)
        info = lp_encode("spacenb/v1/wrap", space_id, epoch, recipient)
        shared = crypto.ecdh(eph, recipient_dh)
        vectors.append(
            {
                "name": name,
                "space_id": space_id,
                "epoch": epoch,
                "recipient": recipient,
                "recipient_ecdh_key": ids[recipient].ecdh_key,
                "wrapper": wrapper,
                "wrapper_signing_key": ids[wrapper].signing_key,
                "group_key_hex": group_key.hex(),
                "ephemeral_scalar_hex": eph_scalar.hex(),
                "ephemeral_point_hex": eph_point.hex(),
                "iv_hex": iv.hex(),
                "info_hex": info.hex(),
                "salt_hex": (eph_point + recipient_point).hex(),
                "shared_secret_hex": shared.hex(),
                "kek_hex": crypto.hkdf_sha256(
                    shared, salt=eph_point + recipient_point, info=info
                ).hex(),
                "blob_hex": wrapped.blob.hex(),
                "signed_hex": signed.hex(),
                "signature_hex": signature.hex(),
                "wire": {
                    "space_id": space_id,
                    "epoch": epoch,
                    "recipient": recipient,
                    "wrapper": wrapper,
                    "blob": b64e(wrapped.blob),
                    "signature": b64e(signature),
                },
            }
        )
    return {
        "description": "Group keys wrapped by ECIES for one recipient and signed by the "
        "wrapper. Deterministic given the ephemeral scalar and IV, except the signature.",
        "vectors": vectors,
    }


def create_space_vectors(previous: dict[str, Any]) -> dict[str, Any]:
    sp = spaces()
    old = _previous_vectors(previous, "create_space.json")
    cases: list[tuple[str, str, str, bool, bool, str | None]] = [
        ("public static channel", "static", "static", False, False, "general"),
        ("private rotate space, manual admit", "rotate", "rotate", True, True, None),
    ]
    vectors = []
    for name, space, policy, private, manual_admit, channel in cases:
        pair = sp[space]
        signed = create_space_signed_bytes(
            pair.space_id, "alice", policy, private, manual_admit, channel
        )
        signature = _stable_signature(
            old.get(name),
            decode_public_key(pair.space_id, "spc"),
            signed,
            lambda pair=pair, signed=signed: pair.sign(signed),
        )
        vectors.append(
            {
                "name": name,
                "space_id": pair.space_id,
                "owner": "alice",
                "policy": policy,
                "private": private,
                "manual_admit": manual_admit,
                "channel_name": channel,
                "signed_hex": signed.hex(),
                "signature_hex": signature.hex(),
            }
        )
    return {
        "description": "Proof of holding the space private key: signatures by the space "
        "key over the create-space encoding.",
        "vectors": vectors,
    }


def auth_vectors(previous: dict[str, Any]) -> dict[str, Any]:
    alice = identities()["alice"]
    old = _previous_vectors(previous, "auth.json")
    name = "alice signs in"
    signed = auth_signed_bytes(AUTH_NONCE, APP_KEY, "alice", alice.signing_key, alice.ecdh_key)
    signature = _stable_signature(
        old.get(name),
        decode_public_key(alice.signing_key, "sig"),
        signed,
        lambda: alice.sign(signed),
    )
    frame = Auth(
        id=1,
        app_key=APP_KEY,
        username="alice",
        signing_key=alice.signing_key,
        ecdh_key=alice.ecdh_key,
        signature=signature,
    ).to_json()
    return {
        "description": "The auth answer to a hello nonce: a signature by the identity "
        "signing key over the auth encoding, and the request frame carrying it.",
        "vectors": [
            {
                "name": name,
                "nonce_hex": AUTH_NONCE.hex(),
                "app_key": APP_KEY,
                "username": "alice",
                "signing_key": alice.signing_key,
                "ecdh_key": alice.ecdh_key,
                "signed_hex": signed.hex(),
                "signature_hex": signature.hex(),
                "frame": frame,
            }
        ],
    }


def ticket_vectors(previous: dict[str, Any]) -> dict[str, Any]:
    relay = identities()["relay"]
    space_id = spaces()["static"].space_id
    old = _previous_vectors(previous, "ticket.json")
    name = "bob may upload shares"
    expires_at_us = CLOCK_START_US + 300_000_000
    fresh = issue_ticket(relay, space_id=space_id, username="bob", expires_at_us=expires_at_us)
    payload_text, _, fresh_signature = fresh.partition(".")
    payload = canonical_json({"exp": expires_at_us, "space_id": space_id, "user": "bob"})
    signed = lp_encode("spacenb/v1/shard-ticket", payload)
    signature = _stable_signature(
        old.get(name),
        decode_public_key(relay.signing_key, "sig"),
        signed,
        lambda: b64d(fresh_signature),
    )
    return {
        "description": "A shard-store upload ticket signed by the relay's identity key: "
        "base64url(canonical JSON payload) '.' base64url(signature).",
        "vectors": [
            {
                "name": name,
                "relay_signing_key": relay.signing_key,
                "space_id": space_id,
                "username": "bob",
                "expires_at_us": expires_at_us,
                "payload_hex": payload.hex(),
                "payload_text": payload_text,
                "signed_hex": signed.hex(),
                "signature_hex": signature.hex(),
                "ticket": f"{payload_text}.{b64e(signature)}",
            }
        ],
    }


def file_vectors() -> dict[str, Any]:
    plaintext = b"spacenb test vector: a small file cut into segments"
    key, file_id = bytes(range(0x40, 0x60)), bytes(range(0x10, 0x20))
    segment_size, k, n = 16, 2, 3
    stores = [f"ws://store-{j}.example:8700" for j in range(n)]
    encoder = FileEncoder(
        len(plaintext), k=k, n=n, stores=stores, segment_size=segment_size, key=key,
        file_id=file_id, name="vector.txt", content_type="text/plain",
        metadata={"caption": "a test vector"},
    )  # fmt: skip
    count = encoder.layout.segment_count
    segments = []
    for index in range(count):
        chunk = plaintext[index * segment_size : (index + 1) * segment_size]
        iv = bytes(range(12 * index, 12 * index + 12))
        encoded = encoder.encode_segment(index, chunk, iv=iv)
        sealed = b"".join(encoded.shares[:k])[: encoder.layout.sealed_length(index)]
        segments.append(
            {
                "index": index,
                "plaintext_hex": chunk.hex(),
                "iv_hex": iv.hex(),
                "aad_hex": segment_aad(file_id, index, count).hex(),
                "sealed_hex": sealed.hex(),
                "padding": encoded.entry.padding,
                "shares_hex": [share.hex() for share in encoded.shares],
                "share_names": list(encoded.names),
            }
        )
    return {
        "description": "A file sealed segment by segment (AES-256-GCM under a key derived "
        "from the file key), erasure-coded 2 of 3 with zfec, and its manifest.",
        "vectors": [
            {
                "name": "a 51-byte file in 16-byte segments, any 2 of 3 shares",
                "plaintext_hex": plaintext.hex(),
                "key_hex": key.hex(),
                "file_id_hex": file_id.hex(),
                "segment_size": segment_size,
                "k": k,
                "n": n,
                "segment_key_hex": segment_key(key, file_id).hex(),
                "segments": segments,
                "manifest": encoder.manifest().to_dict(),
            }
        ],
    }


# ---------------------------------------------------------------- driver


def build_all(previous: dict[str, Any]) -> dict[str, str]:
    """Every vector file's text, keyed by file name; ``previous`` holds the parsed files."""
    docs = {
        "identities.json": identity_vectors(),
        "space_keys.json": space_key_vectors(),
        "encoding.json": encoding_vectors(),
        "envelopes.json": envelope_vectors(previous),
        "wraps.json": wrap_vectors(previous),
        "create_space.json": create_space_vectors(previous),
        "auth.json": auth_vectors(previous),
        "ticket.json": ticket_vectors(previous),
        "file.json": file_vectors(),
    }
    return {name: json.dumps(doc, indent=2) + "\n" for name, doc in docs.items()}


def load_existing(directory: Path = VECTOR_DIR) -> dict[str, Any]:
    """The vector files currently on disk, parsed (missing or broken files are skipped)."""
    found: dict[str, Any] = {}
    for path in sorted(directory.glob("*.json")):
        try:
            found[path.name] = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            continue
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a file would change")
    args = parser.parse_args(argv)
    files = build_all(load_existing())
    stale = []
    for name, text in files.items():
        path = VECTOR_DIR / name
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        stale.append(name)
        if not args.check:
            path.write_text(text, encoding="utf-8")
    verb = "out of date" if args.check else "written"
    for name in stale:
        print(f"{verb}: {name}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
