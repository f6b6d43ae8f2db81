"""Server blindness: after a full scenario (channels and spaces, messages, edits, deletes,
signals, files, rotations, a removal, an invite link), no secret appears anywhere in the
relay's data directory (SQLite database, WAL, shard stores, keeper and relay files).

A secret is every plaintext body, the file's content, every group key of every epoch,
the file key and its segment key, every user's and space's private key, and the invite
token. Each is searched raw, in hex and in base64 (both alphabets, every alignment): see
:func:`helpers.encodings_of`. A positive control checks the scan does see stored data.
"""

from __future__ import annotations

from pathlib import Path

from spacenb.aio import AsyncClient, AsyncSpace
from spacenb.protocol import crypto, frames
from spacenb.protocol.filecodec import segment_key
from spacenb.protocol.manifest import Manifest

from .conftest import Connect, Figures, StartRelay
from .helpers import Inbox, encodings_of, wait_until

FILE_SIZE = 300_000
WINDOWS = 24  # 32-byte windows of the file's content searched for


def scan(root: Path, secrets: dict[str, bytes]) -> tuple[int, int, dict[str, list[str]]]:
    """Search every file under ``root`` for every encoding of every secret; returns the
    files and bytes scanned and, for each secret found, where."""
    patterns = {name: encodings_of(secret) for name, secret in secrets.items()}
    found: dict[str, list[str]] = {}
    files = scanned = 0
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        content = path.read_bytes()
        files += 1
        scanned += len(content)
        for name, encodings in patterns.items():
            if any(pattern in content for pattern in encodings):
                found.setdefault(name, []).append(str(path.relative_to(root)))
    return files, scanned, found


def keyring_secrets(label: str, space: AsyncSpace) -> dict[str, bytes]:
    assert space.keyring is not None
    return {f"{label} group key epoch {e}": key for e, key in space.keyring.items()}


async def test_nothing_secret_reaches_the_relays_disk(
    start_relay: StartRelay, connect: Connect, figures: Figures
) -> None:
    server = await start_relay(shards=5, shards_needed=3)
    alice, bob, carol, dave = [
        await connect(server, name) for name in ("alice", "bob", "carol", "dave")
    ]
    secrets: dict[str, bytes] = {}

    def marker(label: str) -> str:
        text = f"{label}: {crypto.random_bytes(12).hex()}"
        secrets[f"body {label}"] = text.encode()
        return text

    # a static channel: messages, an edit, a deletion, signals and a file
    plans = await alice.space.create_channel("plans")
    bobs_plans = await bob.space.join_channel("plans")
    await carol.space.join_channel("plans")
    signals = Inbox()
    bobs_plans.on_ephemeral(signals)
    first = await plans.send_message({"text": marker("first message")})
    await plans.send_message(marker("with a content type"), content_type="text/markdown")
    await plans.edit_message(first, {"text": marker("the edited text")})
    doomed = await bobs_plans.send_message(marker("a deleted message"))
    await bobs_plans.delete_message(doomed)
    await wait_until(lambda: "bob" in plans.peers())
    await plans.send_ephemeral("typing", marker("an ephemeral signal"))
    await signals.wait(1)
    content = crypto.random_bytes(FILE_SIZE)
    manifest, _stat = await plans.put_file(content, {"caption": marker("file metadata")})
    assert isinstance(manifest, Manifest)
    await plans.send_message({"file": manifest.to_dict()})
    fetched, _ = await bobs_plans.get_file(manifest)
    assert fetched == content
    step = (FILE_SIZE - 32) // WINDOWS
    for i in range(WINDOWS):
        secrets[f"file content @{i * step}"] = content[i * step : i * step + 32]
    secrets["file key"] = manifest.key
    secrets["file segment key"] = segment_key(manifest.key, manifest.file_id)

    # a rotate channel: rotations, a removal, messages in every epoch
    council = await alice.space.create_channel("council", history_policy="rotate")
    await bob.space.join_channel("council")
    await carol.space.join_channel("council")
    await council.send_message(marker("council epoch 0"))
    await council.rotate()
    await council.send_message(marker("council epoch 1"))
    await alice.space.remove_member(council.id, "carol")
    await council.send_message(marker("council after the removal"))

    # a private channel joined with an invite link, and an unnamed space (no keeper)
    vault = await alice.space.create_channel("vault", private=True)
    link = await alice.space.create_invite_link(vault.id, max_uses=1)
    assert link.token is not None
    secrets["invite token"] = link.token.encode()
    daves_vault = await dave.space.join_by_invite(vault.id, link.token)
    await daves_vault.send_message(marker("in the private channel"))
    nook = await alice.space.create_space()
    await bob.space.join_space(nook.id)
    await nook.send_message(marker("in an unnamed space"))

    for label, space in (("plans", plans), ("council", council), ("vault", vault),
                         ("nook", nook)):  # fmt: skip
        secrets.update(keyring_secrets(label, space))
        stored = alice.keystore.load_space(space.id)
        if stored is not None and stored.space_key is not None:
            secrets[f"{label} space private key"] = stored.space_key.to_bytes()
    for client in (alice, bob, carol, dave):
        identity = client.identity.to_bytes()  # 0x01 || signing scalar || ECDH scalar
        secrets[f"{client.username} signing private key"] = identity[1:33]
        secrets[f"{client.username} ECDH private key"] = identity[33:65]
    assert council.keyring is not None and council.keyring.epochs == [0, 1, 2]

    stored_ciphertext = await one_stored_ciphertext(alice, plans)
    for moment in ("while running", "after a clean stop"):
        if moment == "after a clean stop":
            await server.stop()  # checkpoints the WAL into the database file
        files, scanned, found = scan(server.data_dir, {**secrets, "control": stored_ciphertext})
        assert found.pop("control", None), "the scan does not see what the relay stores"
        assert found == {}, f"secrets on the relay's disk ({moment}): {found}"
        figures.add("blindness.files_scanned", files)
        figures.add("blindness.bytes_scanned", scanned)
    figures.add("blindness.secrets", len(secrets))
    figures.add("blindness.patterns", sum(len(encodings_of(s)) for s in secrets.values()))


async def one_stored_ciphertext(client: AsyncClient, space: AsyncSpace) -> bytes:
    """The ciphertext of a message as the relay stores it (the positive control)."""
    page = await client.request(
        frames.HistoryRequest(frames.UNSENT, space_id=space.id, before=None, limit=1)
    )
    return bytes(page.items[0].envelope.ciphertext)
