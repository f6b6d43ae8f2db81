from spacenb.sync.testing import local_server, make_client  # noqa: F401
