"""Server tests start the real server on loopback (``rawclient.running``) and talk to it
over real websockets with the frame-level client in ``rawclient.py``, which signs protocol
v2 state events and envelopes itself and keeps a verified copy of each space's log. Async
tests run under pytest-asyncio's auto mode (pyproject.toml)."""
