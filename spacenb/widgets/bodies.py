"""How a message body is shown, decided once per message in the kernel.

- A string, or an object with a ``text`` (else ``contents``) string, is text. Text is
  Markdown: rendered by markdown-it-py with raw HTML off and images off (a remote image
  would tell its host who reads the chat, and when), then cleaned by nh3 (ammonia) down to
  a short list of tags, with links only to ``http``, ``https`` and ``mailto`` addresses,
  opened in a new tab without a referrer. Text with nothing Markdown would change is sent
  as text, and the front end assigns it with ``textContent``.
- An object carrying a file manifest (``{"file": manifest.to_dict(), "text": ...}``, as
  the tutorials send it, or the manifest itself) is a file: a chip with its name and
  size, which downloads it, and the text as its caption.
- Any other JSON value is a compact code block, folded when long.

Every string taken from a body ends up either escaped by :mod:`html` or cleaned by nh3,
never pasted into markup as is.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import nh3
from markdown_it import MarkdownIt

from ..units import human_bytes

__all__ = ["FileChip", "Shown", "markdown_html", "show", "text_of"]

_MARKDOWN = (
    MarkdownIt(
        "commonmark", {"html": False, "breaks": True, "linkify": False, "typographer": False}
    )
    .enable(["table", "strikethrough"])
    .disable(["image"])
)
_TAGS = {
    "a", "blockquote", "br", "code", "del", "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr",
    "li", "ol", "p", "pre", "s", "strong", "table", "tbody", "td", "th", "thead", "tr", "ul",
}  # fmt: skip
_LINK_SCHEMES = ("http://", "https://", "mailto:")


def _absolute_links_only(tag: str, attribute: str, value: str) -> str | None:
    if tag == "a" and attribute == "href":
        return value if value.strip().lower().startswith(_LINK_SCHEMES) else None
    return value


_CLEANER = nh3.Cleaner(
    tags=_TAGS,
    clean_content_tags={"script", "style"},
    attributes={"a": {"href", "title"}, "ol": {"start"}},
    url_schemes={"http", "https", "mailto"},
    link_rel="noopener noreferrer nofollow",
    set_tag_attribute_values={"a": {"target": "_blank"}},
    attribute_filter=_absolute_links_only,
)

# Text in which none of these occur renders as one paragraph of itself, so it is sent as
# text and needs no HTML (markdown-it-py takes about half a millisecond per message).
_MARKDOWN_SYNTAX = re.compile(
    r"[\\`*_\[\]\n]|~~|&#?\w+;|<[A-Za-z][\w.+-]*:|<[^\s>]+@|^\s*(#|>|[-+]\s|\d+[.)]\s)|^\s{4}"
)
_MAX_NAME = 200
_FOLD_JSON_AT = 120  # characters: longer JSON starts folded


def markdown_html(text: str) -> str:
    """``text`` as Markdown, rendered and sanitized (safe to assign as ``innerHTML``)."""
    return str(_CLEANER.clean(_MARKDOWN.render(text))).strip()


def text_of(body: Any) -> str | None:
    """The text a body stands for: the string itself, or an object's ``text`` (else
    ``contents``) string; None when there is none."""
    if isinstance(body, str):
        return body
    if isinstance(body, Mapping):
        for key in ("text", "contents"):
            if isinstance(body.get(key), str):
                return str(body[key])
    return None


@dataclass(frozen=True, slots=True)
class FileChip:
    """What a file message shows of its manifest: never the key."""

    name: str
    size: int
    content_type: str

    @property
    def label(self) -> str:
        return f"{self.name} ({human_bytes(self.size)})"


def _manifest_of(body: Any) -> Mapping[str, Any] | None:
    if not isinstance(body, Mapping):
        return None
    nested = body.get("file")
    candidate: Mapping[str, Any] = nested if isinstance(nested, Mapping) else body
    looks_like_one = (
        isinstance(candidate.get("name"), str)
        and isinstance(candidate.get("size"), int)
        and isinstance(candidate.get("key"), str)
        and isinstance(candidate.get("segments"), list)
    )
    return candidate if looks_like_one else None


def _chip(manifest: Mapping[str, Any]) -> FileChip:
    name = re.sub(r"[\x00-\x1f\x7f]", "", manifest["name"])[:_MAX_NAME] or "file"
    content_type = manifest.get("content_type")
    return FileChip(
        name,
        max(0, manifest["size"]),
        content_type if isinstance(content_type, str) else "application/octet-stream",
    )


@dataclass(frozen=True, slots=True)
class Shown:
    """A body as the view shows it.

    ``kind`` is ``"text"``, ``"file"`` or ``"json"``. ``text`` is the plain form (for
    transcripts and for code reading the view); ``html`` the markup to render, or None
    when ``text`` is shown as text; ``source`` the text an edit starts from (None when the
    body has no text to edit); ``manifest`` the file's manifest (to download it).
    """

    kind: Literal["text", "file", "json"]
    text: str
    html: str | None = None
    source: str | None = None
    file: FileChip | None = None
    manifest: Mapping[str, Any] | None = None


def _text(text: str) -> tuple[str | None, str]:
    """(html or None, text): None when Markdown would change nothing."""
    if not _MARKDOWN_SYNTAX.search(text):
        return None, text.strip()
    return markdown_html(text), text


def _json_block(body: Any) -> str:
    compact = json.dumps(body, ensure_ascii=False, separators=(",", ":"), default=str)
    if isinstance(body, Mapping):
        keys = ", ".join(map(str, list(body)[:4])) + (", …" if len(body) > 4 else "")
        summary = f"JSON object · {keys}" if body else "JSON object"
    elif isinstance(body, list):
        summary = f"JSON list · {len(body)} item{'' if len(body) == 1 else 's'}"
    else:
        summary = "JSON"
    folded = "" if len(compact) > _FOLD_JSON_AT else " open"
    return (
        f'<details class="spacenb-json"{folded}><summary>{html.escape(summary)}</summary>'
        f"<pre><code>{html.escape(compact)}</code></pre></details>"
    )


def show(body: Any) -> Shown:
    """Decide how ``body`` is shown (see the module docstring)."""
    manifest = _manifest_of(body)
    text = text_of(body) if manifest is None or manifest is not body else None
    if manifest is not None:
        chip = _chip(manifest)
        caption_html, caption = _text(text) if text else (None, "")
        if caption and caption_html is None:
            caption_html = f"<p>{html.escape(caption)}</p>"
        plain = f"{caption}\n[file] {chip.label}" if caption else f"[file] {chip.label}"
        return Shown("file", plain, caption_html, text, chip, manifest)
    if text is not None:
        rendered, plain = _text(text)
        return Shown("text", plain, rendered, text)
    compact = json.dumps(body, ensure_ascii=False, separators=(",", ":"), default=str)
    return Shown("json", compact, _json_block(body))
