"""Starting a server (spacenb/server/app.py): the data directory is made private, the
open-file limit raised, a port out of range refused, the relay's stores named at sign-in."""

from __future__ import annotations

import os
import resource
import stat

import pytest

from spacenb.exceptions import ServerError, UsageError
from spacenb.server import Limits, start_server
from tests.server.rawclient import RawClient, running


async def test_a_readable_data_dir_is_made_private(tmp_path):
    data = tmp_path / "relay"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)  # as ``mkdir`` under a umask of 022 leaves it
    async with running(data, shards=1, shards_needed=1):
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
    fresh = tmp_path / "fresh"
    async with running(fresh):
        assert stat.S_IMODE(fresh.stat().st_mode) == 0o700


async def test_a_data_dir_that_cannot_be_made_private_is_refused(tmp_path, monkeypatch):
    data = tmp_path / "shared"
    data.mkdir()
    os.chmod(data, 0o755)

    def refuse(path, mode):  # as when the directory belongs to someone else
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "chmod", refuse)
    with pytest.raises(ServerError, match=r"can be read by other users.*chmod 700"):
        await start_server(data, shards=0)
    assert not (data / "spacenb.sqlite3").exists()


async def test_the_open_file_limit_is_raised_at_start(tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))
    try:
        async with running(tmp_path, limits=Limits(open_files=4096)):
            now, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
            assert now == min(4096, hard) >= min(1024, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.parametrize("port", [-1, 65536, 99999, "80", True])
async def test_a_port_out_of_range_is_a_usage_error(tmp_path, port):
    with pytest.raises(UsageError, match="port: must be 0 to 65535") as info:
        await start_server(tmp_path, port=port, shards=0)
    assert isinstance(info.value, ValueError)


async def test_sign_in_names_the_relays_shard_stores(tmp_path):
    async with running(tmp_path, shards=2, shards_needed=1) as srv:
        client = await RawClient.open(srv.url)
        result = await client.auth(srv.app_key, "alice")
        assert result.shard_stores == srv.shard_urls and len(srv.shard_urls) == 2
