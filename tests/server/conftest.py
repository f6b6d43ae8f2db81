"""Server tests start the real server on loopback (``rawclient.running``) and talk to it
over real websockets with the frame-level client in ``rawclient.py``. Async tests run
under pytest-asyncio's auto mode (pyproject.toml)."""
