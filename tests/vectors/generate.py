"""Regenerate spacenb's protocol test vectors (PROTOCOL.md, "Test vectors").

    python tests/vectors/generate.py          # rewrite the JSON files beside this script
    python tests/vectors/generate.py --check  # exit 1 if a file would change

Every input is fixed: keys come from seeds (``IdentityKeys.from_seed``,
``SpaceKeyPair.from_seed``, the invite link's token bytes), and message ids, IVs,
ephemeral scalars, group keys and the clock are constants below. ECDSA signatures are
randomized, so a signature already stored in a file (an event's, an envelope's, a key
wrap's, the link proof inside an event body) is kept as long as it still verifies over
the freshly computed signed bytes; only a change to what is signed produces a new one.
A state event's hash covers its signature, so a new signature changes every later
event's ``prev`` (and the envelopes bound to them) too. Running the script twice
therefore changes nothing, and ``tests/protocol/test_vectors.py`` checks that it
reproduces the committed files byte for byte. A ``*.json`` file here that the script
does not generate is removed (reported by ``--check``).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

from spacenb.clock import FixedClock
from spacenb.exceptions import IntegrityError
from spacenb.protocol import crypto
from spacenb.protocol.codec import to_obj
from spacenb.protocol.encoding import b64d, b64e, canonical_json, lp_encode
from spacenb.protocol.envelope import Envelope, envelope_aad, seal_envelope
from spacenb.protocol.filecodec import FileEncoder, segment_aad, segment_key
from spacenb.protocol.frames import (
    Auth,
    CreateSpace,
    GetStateLog,
    auth_signed_bytes,
    log_read_signed_bytes,
)
from spacenb.protocol.keys import (
    IdentityKeys,
    LinkKeyPair,
    SpaceKeyPair,
    decode_public_key,
    decode_space_id,
    scalar_from_seed,
)
from spacenb.protocol.statelog import (
    GENESIS_PREV,
    KEEPER_ATTESTS,
    SpaceState,
    StateEvent,
    key_commitment,
    link_id_of_key,
    link_keys_from_token,
    link_proof_bytes,
    make_event,
    make_genesis,
)
from spacenb.protocol.tickets import issue_ticket
from spacenb.protocol.wrap import WrappedKey, wrap_group_key

VECTOR_DIR = Path(__file__).resolve().parent

# ---------------------------------------------------------------- fixed inputs

IDENTITY_SEEDS = {
    "alice": b"spacenb test vector: alice",
    "bob": b"spacenb test vector: bob",
    "keeper": b"spacenb test vector: keeper",
    "relay": b"spacenb test vector: relay",
    "carol": b"spacenb test vector: carol",
    "dave": b"spacenb test vector: dave",
}
SPACE_SEEDS = {
    "static": b"spacenb test vector: static space",
    "rotate": b"spacenb test vector: rotate space",
    "log": b"spacenb test vector: state log space",
}
CLOCK_START_US = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z
STATIC_KEY = bytes(range(32))  # group key, static space, epoch 0
ROTATE_KEY_3 = bytes(range(32, 64))  # group key, rotate space, epoch 3
ROTATE_KEY_0 = bytes(range(64, 96))  # group key, rotate space, epoch 0
LOG_KEYS = {0: bytes(range(96, 128)), 1: bytes(range(128, 160))}  # the log space's epochs
LINK_TOKEN_BYTES = bytes(range(0xE0, 0x100))  # the invite link's 32 secret bytes
EVENT_STEP_US = 1_000_000  # state event n is signed at CLOCK_START_US + n seconds
LINK_EXPIRES_US = CLOCK_START_US + 86_400_000_000  # one day after the start
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
    fresh: bytes,
    field: str = "signature_hex",
) -> bytes:
    """The stored signature if it still verifies over ``signed``, else ``fresh``."""
    if old is not None and isinstance(old.get(field), str):
        try:
            stored = bytes.fromhex(old[field])
            crypto.verify(key, stored, signed)
            return stored
        except (ValueError, IntegrityError):
            pass
    return fresh


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
        "fingerprint (sig key text, dh key text), private blob and its text form. "
        "key_form: the keys a state event names are checked by form when it is checked "
        "(off_curve: texts of a valid form whose point is not on the curve, taken there "
        "and refused where the key is first used; refused: texts any check refuses).",
        "vectors": vectors,
        "key_form": _key_form_json(identities()["bob"].ecdh_key),
    }


_P256_P = 2**256 - 2**224 + 2**192 + 2**96 - 1
_P256_B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B


def _key_form_json(ecdh_key: str) -> dict[str, Any]:
    """Key texts of a valid form off the curve, and texts of an invalid form."""
    x = 0  # the smallest x for which x^3 - 3x + b is not a square mod p: no y exists
    while pow((x**3 - 3 * x + _P256_B) % _P256_P, (_P256_P - 1) // 2, _P256_P) == 1:
        x += 1
    raw = b64d(ecdh_key.partition(".")[2])

    def text(binary: bytes) -> str:
        return "dh." + b64e(binary)

    return {
        "kind": "dh",
        "off_curve": [
            {"text": text(raw[:2] + b"\x02" + x.to_bytes(32, "big")), "why": "x with no y"},
            {"text": text(raw[:2] + b"\x03" + _P256_P.to_bytes(32, "big")), "why": "x = p"},
        ],
        "refused": [
            {"text": "sig." + ecdh_key.partition(".")[2], "why": "wrong kind"},
            {"text": text(raw[:2] + b"\x04" + raw[3:]), "why": "not a compressed point's prefix"},
            {"text": text(b"\x02" + raw[1:]), "why": "version 2"},
            {"text": text(raw[:1] + b"\x02" + raw[2:]), "why": "suite 2"},
            {"text": text(raw[:-1]), "why": "34 bytes"},
            {"text": text(raw + b"\x00"), "why": "36 bytes"},
            {"text": ecdh_key + "=", "why": "not unpadded base64url"},
        ],
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


CANONICAL_CASES: list[tuple[str, Any]] = [
    ("nested values", {"ts": 1, "id": "x", "body": {"b": [1, "é", None], "a": True}}),
    (
        "keys sorted by code point",
        {"b": 1, "a": 2, "B": 3, "aa": 4, "": 5, "é": 6, "z": 7, "_": 8, "0": 9},
    ),
    # UTF-16 order (JavaScript's sort) would put U+1F600 (a surrogate pair, D83D DE00)
    # before U+E000 and U+FFFF; code-point order puts it last.
    ("code point order, not UTF-16 order", {"\U0001f600": 1, "\uffff": 2, "\ue000": 3, "~": 4}),
    ("nested objects sorted at every level", {"z": {"y": 1, "x": [{"b": 1, "a": 2}]}, "a": []}),
    (
        "non-ASCII text is raw UTF-8",
        ["é", "✓", "\U0001f600", "\u0080\u009f", "\u00a0", "\u2028\u2029", "\ufeff"],
    ),
    (
        "control characters and escapes",
        ["\x00", "\x01", "\b", "\t", "\n", "\x0b", "\f", "\r", "\x1f", '"', "\\", "/", "\x7f"],
    ),
    ("integers", [0, 1, -1, 42, 2**53 - 1, -(2**53 - 1)]),
    ("true, false and null are not integers", [True, False, None, 0, 1]),
    # Only an application body inside a sealed plaintext may hold a float: Python's repr.
    ("floats (application bodies only)", [0.1, 1.0, 1e16, -0.0, 1.5e-07, 123456.789]),
    ("empty containers and text", {"c": "", "b": [], "a": {}}),
]
CANONICAL_INVALID: list[tuple[str, str]] = [
    ('{"a": 1}', "whitespace"),
    ('{"b":1,"a":2}', "keys out of order"),
    ('{"a":"\\u00e9"}', "non-ASCII escaped instead of raw UTF-8"),
    ('{"a":"\\/"}', "an escape that is not needed"),
    ('{"a":1,"a":2}', "a key twice"),
    ('{"a":-0}', "negative zero"),
    ('["\\u001F"]', "upper-case hex in an escape"),
    ('["\\u0009"]', "a \\u0009 escape where \\t exists"),
]


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
    return {
        "description": "Canonical length-prefixed encoding (lp_encode), unpadded base64url, "
        "and canonical JSON (sorted keys by code point, no spaces, raw UTF-8, the shortest "
        "escapes; canonical_json_invalid lists texts that are JSON but not canonical).",
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
            {
                "name": name,
                "value": value,
                "canonical_hex": canonical_json(value).hex(),
                "canonical_text": canonical_json(value).decode("utf-8"),
            }
            for name, value in CANONICAL_CASES
        ],
        "canonical_json_invalid": [{"text": text, "why": why} for text, why in CANONICAL_INVALID],
    }


def _wire_envelope(env: Envelope) -> dict[str, Any]:
    return to_obj(env)


def _aad(env: Envelope) -> bytes:
    return envelope_aad(
        env.kind, env.source, env.target, env.subject, env.epoch, env.content_type,
        env.head_seq, env.head,
    )  # fmt: skip


def envelope_vectors(chain: Chain, previous: dict[str, Any]) -> dict[str, Any]:
    ids = identities()
    state = chain.state
    old = _previous_vectors(previous, "envelopes.json")
    alice_seq = CLOCK_START_US + 6_500_000
    cases: list[dict[str, Any]] = [
        {
            "name": "channel message",
            "sender": "alice",
            "kind": "msg",
            "subject": "default",
            "content_type": "text/plain",
            "body": {"text": "hello, bob 👋", "n": 1},
            "head_seq": 6,
            "clock_us": alice_seq,
            "seq": alice_seq,
            "sid": "0123456789abcdef",
            "rev": 0,
            "handle": 1,
            "message_id": "00112233445566778899aabbccddeeff",
            "iv": bytes.fromhex("000102030405060708090a0b"),
        },
        {
            # An edit keeps its original's seq and sid, raises rev, and is sealed under the
            # epoch of the head its sender holds now (the key was rotated in between).
            "name": "edited message",
            "sender": "alice",
            "kind": "msg",
            "subject": "default",
            "content_type": "text/plain",
            "body": {"text": "hello, bob 👋 (edited)", "n": 1},
            "head_seq": 8,
            "clock_us": CLOCK_START_US + 8_500_000,
            "seq": alice_seq,
            "sid": "0123456789abcdef",
            "rev": 1,
            "handle": 1,
            "message_id": "0f1e2d3c4b5a69788796a5b4c3d2e1f0",
            "iv": bytes.fromhex("0c0d0e0f1011121314151617"),
        },
        {
            "name": "ephemeral signal",
            "sender": "bob",
            "kind": "eph",
            "subject": "typing",
            "content_type": None,
            "body": True,
            "head_seq": 8,
            "clock_us": CLOCK_START_US + 8_700_000,
            "seq": CLOCK_START_US + 8_700_000,
            "sid": "fedcba9876543210",
            "rev": 0,
            "handle": None,
            "message_id": "ffeeddccbbaa99887766554433221100",
            "iv": bytes.fromhex("f0f1f2f3f4f5f6f7f8f9fafb"),
        },
    ]
    vectors = []
    for case in cases:
        sender = ids[case["sender"]]
        head_seq = case["head_seq"]
        head = state.hash_at(head_seq)
        assert head is not None and state.is_member_at(case["sender"], head_seq)
        epoch = state.epoch_at(head_seq)
        group_key = LOG_KEYS[epoch]
        env, message = seal_envelope(
            sender,
            group_key,
            kind=case["kind"],
            source=case["sender"],
            target=state.space_id,
            subject=case["subject"],
            epoch=epoch,
            content_type=case["content_type"],
            body=case["body"],
            head_seq=head_seq,
            head=head,
            seq=case["seq"],
            sid=case["sid"],
            rev=case["rev"],
            clock=FixedClock(case["clock_us"]),
            message_id=case["message_id"],
            iv=case["iv"],
        )
        signed = env.signed_bytes()
        signature = _stable_signature(
            old.get(case["name"]),
            decode_public_key(sender.signing_key, "sig"),
            signed,
            env.signature,
        )
        env = replace(env, signature=signature)
        vectors.append(
            {
                "name": case["name"],
                "sender": case["sender"],
                "sender_signing_key": sender.signing_key,
                "group_key_hex": group_key.hex(),
                "kind": env.kind,
                "source": env.source,
                "target": env.target,
                "subject": env.subject,
                "epoch": env.epoch,
                "content_type": env.content_type,
                "head_seq": env.head_seq,
                "head_hex": env.head.hex(),
                "handle": case["handle"],
                "body": message.body,
                "message_id": message.id,
                "clock_us": case["clock_us"],
                "sent_at_ms": message.sent_at_ms,
                "seq": message.seq,
                "rev": message.rev,
                "sid": message.sid,
                "iv_hex": env.iv.hex(),
                "plaintext_hex": message.to_bytes().hex(),
                "aad_hex": _aad(env).hex(),
                "ciphertext_hex": env.ciphertext.hex(),
                "signed_hex": signed.hex(),
                "signature_hex": signature.hex(),
                "wire": _wire_envelope(env),
            }
        )
    return {
        "description": "Sealed and signed envelopes in the space of state_log.json, each "
        "bound to an event of that log (head_seq, head = the event's hash) and sealed under "
        "the epoch current there. Everything but the signature is deterministic; the "
        "signature is randomized ECDSA and must verify over signed_hex.",
        "space_id": state.space_id,
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
            wrapped.signature,
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


# ---------------------------------------------------------------- state events


def _event_json(event: StateEvent, signer: str, signer_key: str, name: str) -> dict[str, Any]:
    """Every byte of one state event: its inputs, what is signed, its hash, its wire form."""
    return {
        "name": name,
        "seq": event.seq,
        "kind": event.kind,
        "actor": event.actor,
        "signer": signer,
        "signer_key": signer_key,
        "at_us": event.at_us,
        "space_id": event.space_id,
        "prev_hex": event.prev.hex(),
        "body": json.loads(event.body),
        "body_hex": event.body.hex(),
        "signed_hex": event.signed_bytes().hex(),
        "signature_hex": event.signature.hex(),
        "hash_hex": event.hash().hex(),
        "wire": to_obj(event),
    }


def _stable_event(
    event: StateEvent, old: dict[str, Any] | None, key: crypto.PublicKey
) -> StateEvent:
    """``event`` with the stored signature when it still verifies over the same bytes."""
    signature = _stable_signature(old, key, event.signed_bytes(), event.signature)
    return replace(event, signature=signature)


def _commitment_json(space_id: str, epoch: int, group_key: bytes) -> dict[str, Any]:
    encoded = lp_encode("spacenb/v2/key-commitment", space_id, epoch, group_key)
    return {
        "space_id": space_id,
        "epoch": epoch,
        "group_key_hex": group_key.hex(),
        "input_hex": encoded.hex(),
        "sha256_hex": crypto.sha256(encoded).hex(),
        "key_commitment": key_commitment(space_id, epoch, group_key),
    }


def _link_keys() -> LinkKeyPair:
    return link_keys_from_token(b64e(LINK_TOKEN_BYTES))


class Chain(NamedTuple):
    """The state log of the "log" space, built once and shared by the files that use it."""

    events: list[StateEvent]
    names: list[str]
    signers: list[str]  # "space" for genesis, else the signing member
    state: SpaceState
    proof_prev: bytes  # the head that the link add's proof is bound to
    proof: bytes  # the link key's signature over link_proof_bytes(...)


# (name, kind, actor, body); "<proof>" and "<recipients>" are filled in as the chain grows.
def _chain_steps(space_id: str) -> list[tuple[str, str, str, dict[str, Any]]]:
    ids = identities()
    link = _link_keys()
    link_id = link_id_of_key(link.link_key)

    def keys_of(name: str) -> dict[str, str]:
        return {"signing_key": ids[name].signing_key, "ecdh_key": ids[name].ecdh_key}

    none = {"link_id": None, "proof": None}
    return [
        ("add via open", "add", "bob",
         {"member": "bob", **keys_of("bob"), "role": "viewer", "via": "open", **none}),
        ("invite", "invite", "alice", {"member": "carol", "role": "editor", **keys_of("carol")}),
        ("add via invite", "add", "carol",
         {"member": "carol", **keys_of("carol"), "role": "editor", "via": "invite", **none}),
        ("link", "link", "alice",
         {"link_id": link_id, "link_key": link.link_key, "role": "viewer", "max_uses": 2,
          "expires_at_us": LINK_EXPIRES_US}),
        ("add via link", "add", "dave",
         {"member": "dave", **keys_of("dave"), "role": "viewer", "via": "link",
          "link_id": link_id, "proof": "<proof>"}),
        ("role", "role", "alice", {"member": "bob", "role": "editor"}),
        ("epoch (rotate)", "epoch", "carol",
         {"epoch": 1, "recipients": "<recipients>",
          "key_commitment": key_commitment(space_id, 1, LOG_KEYS[1])}),
        ("delete", "delete", "alice", {"handle": 3, "author": "bob"}),
        ("unlink", "unlink", "alice", {"link_id": link_id}),
        ("remove", "remove", "alice", {"member": "dave"}),
        ("leave", "leave", "bob", {"member": "bob"}),
        ("checkpoint", "checkpoint", "keeper", {}),
        ("invite back", "invite", "alice",
         {"member": "dave", "role": "viewer", "signing_key": None, "ecdh_key": None}),
    ]  # fmt: skip


def build_chain(previous: dict[str, Any]) -> Chain:
    ids, pair = identities(), spaces()["log"]
    space_id = pair.space_id
    old_doc = previous.get("state_log.json") or {}
    old_events = {
        e.get("seq"): e for e in old_doc.get("events", []) if isinstance(e, dict)
    }  # fmt: skip
    keeper = ids["keeper"]
    genesis = make_genesis(
        pair,
        owner="alice",
        owner_signing_key=ids["alice"].signing_key,
        owner_ecdh_key=ids["alice"].ecdh_key,
        policy="rotate",
        private=False,
        manual_admit=False,
        name="general",
        keeper=("keeper", keeper.signing_key, keeper.ecdh_key),
        group_key=LOG_KEYS[0],
        at_us=CLOCK_START_US,
    )
    genesis = _stable_event(genesis, old_events.get(0), decode_space_id(space_id))
    state = SpaceState(genesis)
    events, names, signers = [genesis], ["genesis"], ["space"]
    link = _link_keys()
    proof_prev, proof = b"", b""
    for name, kind, actor, template in _chain_steps(space_id):
        body = dict(template)
        if body.get("proof") == "<proof>":
            proof_prev = state.head
            signed = link_proof_bytes(space_id, actor, proof_prev)
            proof = _stable_signature(
                old_doc.get("link_proof"),
                decode_public_key(link.link_key, "lnk"),
                signed,
                link.sign(signed),
            )
            body["proof"] = b64e(proof)
        if body.get("recipients") == "<recipients>":
            body["recipients"] = state.rotation_recipients(actor, None)
        seq = state.head_seq + 1
        event = make_event(
            ids[actor],
            space_id=space_id,
            seq=seq,
            prev=state.head,
            kind=kind,
            actor=actor,
            at_us=CLOCK_START_US + seq * EVENT_STEP_US,
            body=body,
        )
        event = _stable_event(event, old_events.get(seq), decode_public_key(
            ids[actor].signing_key, "sig"
        ))  # fmt: skip
        state.apply(event)
        events.append(event)
        names.append(name)
        signers.append(actor)
    return Chain(events, names, signers, state, proof_prev, proof)


def _final_state(state: SpaceState) -> dict[str, Any]:
    return {
        "head_seq": state.head_seq,
        "head_hex": state.head.hex(),
        "owner": state.owner,
        "keeper": state.keeper,
        "policy": state.policy,
        "private": state.private,
        "manual_admit": state.manual_admit,
        "name": state.name,
        "epoch": state.epoch,
        "members": {
            m.name: {
                "role": m.role,
                "signing_key": m.signing_key,
                "ecdh_key": m.ecdh_key,
                "since_seq": m.since_seq,
                "since_epoch": m.since_epoch,
            }
            for m in sorted(state.members.values(), key=lambda m: m.name)
        },
        "banned": sorted(state.banned),
        "invitations": sorted(state.invitations),
        "links": {
            link.link_id: {
                "role": link.role,
                "max_uses": link.max_uses,
                "expires_at_us": link.expires_at_us,
                "created_at_us": link.created_at_us,
                "seq": link.seq,
                "uses": link.uses,
                "revoked": link.revoked,
            }
            for link in state.links.values()
        },
        "deleted": {str(handle): author for handle, author in sorted(state.deleted.items())},
        "epochs": {
            str(e.epoch): {
                "seq": e.seq,
                "recipients": sorted(e.recipients),
                "key_commitment": e.commitment,
            }
            for e in sorted(state.epochs.values(), key=lambda e: e.epoch)
        },
    }


def _checkpoint_json(chain: Chain) -> dict[str, Any]:
    """What a newcomer reading the whole log verifies: genesis, every event before the
    keeper's last checkpoint that is not an ``add`` (a keeper checkpoint stands only for
    the adds), the checkpoint, and every event after it (PROTOCOL.md, "Checkpoints")."""
    (last,) = [e.seq for e in chain.events if e.kind == "checkpoint"][-1:]
    assert chain.signers[last] == "keeper"
    covers = [e.seq for e in chain.events[1:last] if e.kind in KEEPER_ATTESTS]
    return {
        "seq": last,
        "signer": chain.signers[last],
        "covers": covers,
        "newcomer_verifies": [s for s in range(len(chain.events)) if s not in covers],
    }


def state_log_vectors(chain: Chain, previous: dict[str, Any]) -> dict[str, Any]:
    ids = identities()
    space_id = chain.state.space_id
    link = _link_keys()
    old_doc = previous.get("state_log.json") or {}
    events = []
    for event, name, signer in zip(chain.events, chain.names, chain.signers, strict=True):
        key = space_id if signer == "space" else ids[signer].signing_key
        events.append(_event_json(event, signer, key, name))
    # A link holder reads the (private) log before redeeming: a signature by the link key.
    reader = "dave"
    read_signed = log_read_signed_bytes(space_id, reader, AUTH_NONCE)
    read_signature = _stable_signature(
        old_doc.get("log_read"),
        decode_public_key(link.link_key, "lnk"),
        read_signed,
        link.sign(read_signed),
    )
    link_id = link_id_of_key(link.link_key)
    read_frame = GetStateLog(
        id=2, space_id=space_id, since=0, limit=100, link_id=link_id, proof=read_signature
    ).to_json()
    return {
        "description": "A whole state log covering every event kind, signed event by event "
        "(genesis by the space key, each add by the member it adds, the rest by their actor). "
        "Bodies are canonical JSON; everything but the signatures (and the link proof, "
        "itself a signature) is deterministic. Also: key commitments, the invite link's "
        "token -> key -> id derivation, the link proof and the link holder's log-read proof; "
        "and which signatures a newcomer verifies, given the keeper's checkpoint (which "
        "stands for the adds before it only).",
        "space_id": space_id,
        "group_keys": [
            {"epoch": epoch, "key_hex": key.hex()} for epoch, key in sorted(LOG_KEYS.items())
        ],
        "key_commitments": [
            _commitment_json(space_id, epoch, key) for epoch, key in sorted(LOG_KEYS.items())
        ],
        "link": {
            "token_bytes_hex": LINK_TOKEN_BYTES.hex(),
            "token": b64e(LINK_TOKEN_BYTES),
            "scalar_hex": scalar_from_seed(LINK_TOKEN_BYTES, "link").hex(),
            "link_key": link.link_key,
            "link_key_sha256_hex": crypto.sha256(link.link_key.encode("utf-8")).hex(),
            "link_id": link_id,
        },
        "link_proof": {
            "space_id": space_id,
            "member": "dave",
            "prev_hex": chain.proof_prev.hex(),
            "signed_hex": link_proof_bytes(space_id, "dave", chain.proof_prev).hex(),
            "signature_hex": chain.proof.hex(),
            "proof": b64e(chain.proof),
        },
        "log_read": {
            "space_id": space_id,
            "username": reader,
            "nonce_hex": AUTH_NONCE.hex(),
            "link_id": link_id,
            "signed_hex": read_signed.hex(),
            "signature_hex": read_signature.hex(),
            "frame": read_frame,
        },
        "events": events,
        "checkpoint": _checkpoint_json(chain),
        "final_state": _final_state(chain.state),
    }


# ---------------------------------------------------------------- genesis


def genesis_vectors(previous: dict[str, Any]) -> dict[str, Any]:
    ids, sp = identities(), spaces()
    old = _previous_vectors(previous, "genesis.json")
    keeper = ids["keeper"]
    cases: list[tuple[str, str, str, bool, bool, str | None, bool, bytes]] = [
        ("public static channel, keeper admitted", "static", "static", False, False, "general",
         True, STATIC_KEY),
        ("private rotate space, manual admit, no keeper", "rotate", "rotate", True, True, None,
         False, ROTATE_KEY_0),
    ]  # fmt: skip
    vectors = []
    for name, space, policy, private, manual_admit, channel, with_keeper, group_key in cases:
        pair = sp[space]
        space_id = pair.space_id
        previous_vector = old.get(name)
        event = make_genesis(
            pair,
            owner="alice",
            owner_signing_key=ids["alice"].signing_key,
            owner_ecdh_key=ids["alice"].ecdh_key,
            policy=policy,
            private=private,
            manual_admit=manual_admit,
            name=channel,
            keeper=("keeper", keeper.signing_key, keeper.ecdh_key) if with_keeper else None,
            group_key=group_key,
            at_us=CLOCK_START_US,
        )
        event = _stable_event(event, previous_vector, decode_space_id(space_id))
        SpaceState(event)  # it verifies
        old_keys = {
            k.get("recipient"): k for k in (previous_vector or {}).get("keys", [])
        }  # fmt: skip
        keys, key_vectors = [], []
        for recipient in ["alice", "keeper"] if with_keeper else ["alice"]:
            label = f"genesis/{space}/{recipient}".encode()
            eph_scalar = scalar_from_seed(label, "wrap/ephemeral")
            iv = crypto.sha256(label)[: crypto.GCM_IV_SIZE]
            wrapped = wrap_group_key(
                group_key,
                space_id=space_id,
                epoch=0,
                recipient=recipient,
                recipient_ecdh=decode_public_key(ids[recipient].ecdh_key, "dh"),
                wrapper="alice",
                wrapper_identity=ids["alice"],
                ephemeral_scalar=eph_scalar,
                iv=iv,
            )
            signature = _stable_signature(
                old_keys.get(recipient),
                decode_public_key(ids["alice"].signing_key, "sig"),
                wrapped.signed_bytes(),
                wrapped.signature,
            )
            wrapped = replace(wrapped, signature=signature)
            keys.append(wrapped)
            key_vectors.append(
                {
                    "recipient": recipient,
                    "wrapper": "alice",
                    "ephemeral_scalar_hex": eph_scalar.hex(),
                    "iv_hex": iv.hex(),
                    "blob_hex": wrapped.blob.hex(),
                    "signed_hex": wrapped.signed_bytes().hex(),
                    "signature_hex": signature.hex(),
                }
            )
        vectors.append(
            {
                **_event_json(event, "space", space_id, name),
                "group_key_hex": group_key.hex(),
                "key_commitment": _commitment_json(space_id, 0, group_key),
                "keys": key_vectors,
                "frame": CreateSpace(id=1, genesis=event, keys=tuple(keys)).to_json(),
            }
        )
    return {
        "description": "Genesis events (seq 0, prev = 32 zero bytes, signed by the space "
        "key, actor = the owner) with the epoch-0 key commitment, and the create_space "
        "request that carries each with the epoch-0 key wrapped by the owner to the owner "
        "and to an admitted keeper.",
        "genesis_prev_hex": GENESIS_PREV.hex(),
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
        alice.sign(signed),
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
        b64d(fresh_signature),
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
    chain = build_chain(previous)
    docs = {
        "identities.json": identity_vectors(),
        "space_keys.json": space_key_vectors(),
        "encoding.json": encoding_vectors(),
        "envelopes.json": envelope_vectors(chain, previous),
        "wraps.json": wrap_vectors(previous),
        "genesis.json": genesis_vectors(previous),
        "state_log.json": state_log_vectors(chain, previous),
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
    stale, obsolete = [], []
    for name, text in files.items():
        path = VECTOR_DIR / name
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        stale.append(name)
        if not args.check:
            path.write_text(text, encoding="utf-8")
    # A vector file the generator no longer writes (create_space.json before v2) is stale.
    for path in sorted(VECTOR_DIR.glob("*.json")):
        if path.name not in files:
            obsolete.append(path.name)
            if not args.check:
                path.unlink()
    verb = "out of date" if args.check else "written"
    for name in stale:
        print(f"{verb}: {name}")
    for name in obsolete:
        print(f"{'not generated' if args.check else 'removed'}: {name}")
    return 1 if args.check and (stale or obsolete) else 0


if __name__ == "__main__":
    sys.exit(main())
