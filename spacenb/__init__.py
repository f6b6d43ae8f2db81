"""spacenb: end-to-end-encrypted group messaging spaces."""

__version__ = "0.1.0"
