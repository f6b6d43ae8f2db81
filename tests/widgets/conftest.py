from tests.facade import local_server, make_client  # noqa: F401
