"""How spacenb objects show themselves: one ``__repr__`` and one ``_repr_html_`` recipe.

A class lists what it wants shown (``_repr_fields``) and :class:`Displayable` turns that
into a one-line ``__repr__`` and a small HTML table for Jupyter. Every value is escaped:
names, bodies and metadata can come from other members and must never become markup.
Secrets (tokens, app keys) are shortened with :func:`secret`.
"""

from __future__ import annotations

import dataclasses
import html
from collections.abc import Mapping
from typing import Any, Self

__all__ = ["DisplayRecord", "Displayable", "html_table", "secret", "text_repr"]


def secret(value: str | None, keep: int = 6) -> str | None:
    """Show only the start of a secret: enough to tell two apart, not enough to use."""
    if value is None or len(value) <= keep:
        return value
    return value[:keep] + "…"


def text_repr(kind: str, fields: Mapping[str, Any]) -> str:
    """``<spacenb.Kind a='x' b=2>``."""
    shown = " ".join(f"{key}={value!r}" for key, value in fields.items())
    return f"<spacenb.{kind} {shown}>" if shown else f"<spacenb.{kind}>"


def html_table(kind: str, fields: Mapping[str, Any]) -> str:
    """A two-column table headed by ``kind``; keys and values are HTML-escaped."""
    rows = "".join(
        f"<tr><th style='text-align:left'>{html.escape(str(key))}</th>"
        f"<td style='text-align:left'><code>{html.escape(str(value))}</code></td></tr>"
        for key, value in fields.items()
    )
    return f"<table><caption>spacenb.{html.escape(kind)}</caption>{rows}</table>"


class Displayable:
    """Mixin: ``__repr__`` and ``_repr_html_`` from ``_repr_fields()``."""

    __slots__ = ()

    def _repr_fields(self) -> Mapping[str, Any]:
        raise NotImplementedError

    def _repr_kind(self) -> str:
        return type(self).__name__

    def __repr__(self) -> str:
        return text_repr(self._repr_kind(), self._repr_fields())

    def _repr_html_(self) -> str:
        return html_table(self._repr_kind(), self._repr_fields())


class DisplayRecord(Displayable):
    """Mixin for a displayable subclass of a frozen dataclass from a lower layer."""

    __slots__ = ()

    @classmethod
    def of(cls, record: Any) -> Self:
        """The same record, as this subclass (its fields are copied, and re-validated)."""
        fields = dataclasses.fields(record)
        return cls(**{f.name: getattr(record, f.name) for f in fields if f.init})
