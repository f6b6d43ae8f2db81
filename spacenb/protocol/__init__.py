"""The pure protocol core: keys, sealing, signatures, key wrapping, frames, file layout.

Nothing in this package does I/O or imports asyncio: it is the sans-I/O layer that the
relay, the async client and the tutorials all build on (PROTOCOL.md describes it).
"""
