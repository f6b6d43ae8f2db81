"""One service, several relays: how relays on one PostgreSQL database share their secrets.

A service has three secrets: the app key every client presents, the keeper's identity
keys and the relay identity whose key signs shard tickets. One relay on SQLite keeps them
as files in its data directory (``app.json``, ``keeper.key``, ``relay.key``). Relays that
share a database must share them too, and the database must never hold them in the clear.

So the database holds them **sealed** (table ``service_secrets``): AES-256-GCM under a key
derived (HKDF-SHA-256) from the **service key**, 32 random bytes that live outside the
database, in each relay's data directory as ``service.key`` (mode 0600), or are handed to
:func:`~spacenb.server.app.start_server` as ``service_key=`` (``spacenb serve`` reads
``SPACENB_SERVICE_KEY``). The first relay to start on an empty database makes the service
key (unless it was given one) and the secrets, and seals them there; every later relay
must be given the same service key, copied from the first one's data directory, and opens
them. A dump of the database, without the service key, lets no one sign in as a client,
act as the keeper or sign a shard ticket.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..exceptions import IntegrityError, ServerError, SpacenbError
from ..privatefile import write_private
from ..protocol import crypto
from ..protocol.encoding import b64d, b64e, lp_encode
from ..protocol.keys import IdentityKeys

if TYPE_CHECKING:
    from .postgres import PostgresStorage

__all__ = [
    "SERVICE_KEY_FILE",
    "ServiceSecrets",
    "open_service",
    "seal_secrets",
    "unseal_secrets",
]

SERVICE_KEY_FILE = "service.key"
_LABEL = "spacenb/v2/service-secrets"
_IV_SIZE = 12


@dataclass(frozen=True, slots=True)
class ServiceSecrets:
    """What every relay of a service must hold alike."""

    app_key: str
    keeper_keys: IdentityKeys
    relay_keys: IdentityKeys

    @classmethod
    def generate(cls, app_key: str) -> ServiceSecrets:
        return cls(app_key, IdentityKeys.generate(), IdentityKeys.generate())


def _sealing_key(service_key: bytes) -> bytes:
    return crypto.hkdf_sha256(service_key, salt=b"", info=_LABEL.encode())


def seal_secrets(secrets: ServiceSecrets, service_key: bytes) -> bytes:
    """``iv || AES-256-GCM(secrets as JSON)`` under a key derived from ``service_key``."""
    plaintext = json.dumps(
        {
            "app_key": secrets.app_key,
            "keeper_key": secrets.keeper_keys.to_text(),
            "relay_key": secrets.relay_keys.to_text(),
        },
        sort_keys=True,
    ).encode()
    iv = crypto.random_bytes(_IV_SIZE)
    return iv + crypto.aead_seal(_sealing_key(service_key), iv, plaintext, lp_encode(_LABEL))


def unseal_secrets(sealed: bytes, service_key: bytes) -> ServiceSecrets:
    """Open :func:`seal_secrets`' output. Raises :class:`ServerError` if ``service_key``
    is not the one that sealed it (or the record was altered)."""
    try:
        plaintext = crypto.aead_open(
            _sealing_key(service_key), sealed[:_IV_SIZE], sealed[_IV_SIZE:], lp_encode(_LABEL)
        )
    except IntegrityError:
        raise ServerError(
            "the service key does not open this database's secrets: give every relay of the "
            f"service the {SERVICE_KEY_FILE} of the relay that first served this database"
        ) from None
    fields = json.loads(plaintext)
    return ServiceSecrets(
        fields["app_key"],
        IdentityKeys.from_text(fields["keeper_key"]),
        IdentityKeys.from_text(fields["relay_key"]),
    )


def _decode_service_key(text: str, where: str) -> bytes:
    try:
        key = b64d(text.strip(), field="service_key")
    except SpacenbError:
        key = b""
    if len(key) != 32:
        raise ServerError(f"{where} does not hold a service key (32 bytes, base64url)")
    return key


def open_service(
    storage: PostgresStorage, data_dir: Path, service_key: str | None, new_app_key: str
) -> tuple[ServiceSecrets, str]:
    """The service's secrets, opened from ``storage`` with the service key (``service_key``,
    else ``data_dir/service.key``), or made and sealed there by this, the first relay
    (making ``service.key`` too when no key was given or found; the app key is then
    ``new_app_key``). Returns the secrets and the service key as text.

    Raises :class:`ServerError` if the database holds secrets and no service key was
    given, or one that does not open them.
    """
    path = data_dir / SERVICE_KEY_FILE
    if service_key is not None:
        key = _decode_service_key(service_key, "service_key")
    elif path.exists():
        key = _decode_service_key(path.read_text(encoding="utf-8"), str(path))
    else:
        key = b""
    sealed = storage.sealed_service_secrets()
    if sealed is None:
        if not key:
            key = crypto.random_bytes(32)
            write_private(path, b64e(key) + "\n", exclusive=True)
        sealed = storage.store_service_secrets(
            seal_secrets(ServiceSecrets.generate(new_app_key), key)
        )  # another relay starting at the same moment may have won: open what is stored
    elif not key:
        raise ServerError(
            "this database already serves a service whose secrets are sealed with its "
            f"service key: copy {SERVICE_KEY_FILE} from the data directory of the relay "
            f"that first served it into {data_dir}, or pass it as service_key= "
            "(SPACENB_SERVICE_KEY for spacenb serve)"
        )
    return unseal_secrets(sealed, key), b64e(key)
