"""How bodies show: text and Markdown, files, other JSON; and that none injects markup."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from spacenb.widgets.bodies import markdown_html, show, text_of

MANIFEST = {
    "version": 1,
    "file_id": "AAAA",
    "key": "a-secret-key",
    "name": "report.pdf",
    "size": 1536,
    "content_type": "application/pdf",
    "metadata": {},
    "segment_size": 1048576,
    "k": 3,
    "n": 5,
    "stores": ["ws://127.0.0.1:1"],
    "segments": [],
}

# Each would run script, load a remote resource or navigate to a script if it became markup.
HOSTILE = [
    "<script>window.__xss = 1</script>",
    '<img src=x onerror="window.__xss = 1">',
    "<svg onload=alert(1)>",
    '<a href="javascript:alert(1)">x</a>',
    "[click](javascript:alert(1))",
    "[click](JaVaScRiPt:alert(1))",
    "[click](  javascript:alert(1))",
    "[click](java\tscript:alert(1))",
    "[click](vbscript:msgbox(1))",
    "[click](data:text/html,<script>alert(1)</script>)",
    "<javascript:alert(1)>",
    "![tracker](https://tracker.example/pixel.png)",
    '[x](https://ok.example "title" onmouseover="alert(1)")',
    "**bold <iframe src=https://evil.example></iframe>**",
    "<style>body{display:none}</style>",
    "[ref]\n\n[ref]: javascript:alert(1)",
    "`<script>`",
    "<<script>script>alert(1)<</script>/script>",
    '<a href="/lab/tree/x">relative</a> [rel](/api/kernels)',
]


class Elements(HTMLParser):
    """Every element of a piece of markup, as a browser's parser would see it."""

    def __init__(self, markup: str) -> None:
        super().__init__()
        self.found: list[tuple[str, dict[str, str | None]]] = []
        self.feed(markup)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found.append((tag, dict(attrs)))


def tags(markup: str) -> set[str]:
    return {tag for tag, _ in Elements(markup).found}


@pytest.mark.parametrize(
    ("body", "text"),
    [
        ("hello bob", "hello bob"),
        ({"text": "hello, bob"}, "hello, bob"),
        ({"contents": "from the reference app"}, "from the reference app"),
        ({"text": "wins", "contents": "loses"}, "wins"),
        ({"text": 3, "contents": "a string"}, "a string"),
        ({"other": "x"}, None),
        (["text"], None),
        (None, None),
    ],
)
def test_the_text_of_a_body(body: object, text: str | None) -> None:
    assert text_of(body) == text


def test_plain_text_travels_as_text() -> None:
    shown = show({"text": "hello, bob"})  # the tutorials' shape
    assert (shown.kind, shown.text, shown.html, shown.source) == (
        "text",
        "hello, bob",
        None,
        "hello, bob",
    )
    assert show("a < b > c & d!").html is None  # nothing Markdown would change


def test_markdown_is_rendered() -> None:
    shown = show("**bold**, _em_, `code` and [a link](https://example.org/x?a=1&b=2)")
    assert shown.kind == "text" and shown.text.startswith("**bold**")
    assert "<strong>bold</strong>" in shown.html and "<em>em</em>" in shown.html
    assert "<code>code</code>" in shown.html
    link = re.search(r"<a [^>]*>a link</a>", shown.html).group(0)
    assert 'href="https://example.org/x?a=1&amp;b=2"' in link
    assert 'target="_blank"' in link and "noopener" in link and "noreferrer" in link
    assert markdown_html("- one\n- two") == "<ul>\n<li>one</li>\n<li>two</li>\n</ul>"
    assert markdown_html("line one\nline two") == "<p>line one<br>\nline two</p>"
    assert "<table>" in markdown_html("| a | b |\n|---|---|\n| 1 | 2 |")


@pytest.mark.parametrize("body", HOSTILE)
def test_peer_markdown_never_injects_markup(body: str) -> None:
    for shown in (show(body), show({"text": body})):
        markup = shown.html or ""
        for tag, attrs in Elements(markup).found:
            assert tag in {"p", "strong", "em", "code", "a", "br", "pre"}, markup
            assert set(attrs) <= ({"href", "title", "rel", "target"} if tag == "a" else set())
            href = attrs.get("href")
            assert href is None or href.startswith(("https://", "http://", "mailto:")), markup


def test_links_are_absolute_web_or_mail_links_only() -> None:
    markup = markdown_html("[a](/api/kernels) [b](mailto:x@example.org) [c](http://e.org)")
    assert re.findall(r'href="([^"]*)"', markup) == ["mailto:x@example.org", "http://e.org"]


def test_other_json_is_a_compact_folding_code_block() -> None:
    short = show({"k": [1, "é"], "html": "<b>x</b>"})
    assert short.kind == "json" and short.text == '{"k":[1,"é"],"html":"<b>x</b>"}'
    assert short.html.startswith('<details class="spacenb-json" open>')
    assert "&lt;b&gt;x&lt;/b&gt;" in short.html and "<b>" not in short.html
    assert "JSON object · k, html" in short.html
    long = show(list(range(100)))
    assert '<details class="spacenb-json">' in long.html  # folded
    assert "JSON list · 100 items" in long.html
    assert show(42).text == "42" and show(None).text == "null"


def test_a_file_message_is_a_chip_with_its_caption() -> None:
    shown = show({"text": "the **dataset**", "file": MANIFEST})
    assert shown.kind == "file" and shown.manifest is MANIFEST
    assert shown.file is not None and shown.file.label == "report.pdf (1.5 KiB)"
    assert shown.file.content_type == "application/pdf"
    assert shown.html == "<p>the <strong>dataset</strong></p>"
    assert shown.text == "the **dataset**\n[file] report.pdf (1.5 KiB)"
    bare = show(MANIFEST)  # the manifest itself
    assert bare.kind == "file" and bare.html is None and bare.text == "[file] report.pdf (1.5 KiB)"
    assert "a-secret-key" not in repr(bare.file)


def test_a_hostile_file_name_stays_text() -> None:
    chip = show({"file": {**MANIFEST, "name": "<img src=x onerror=alert(1)>\x00\n.pdf"}}).file
    assert chip is not None and chip.name == "<img src=x onerror=alert(1)>.pdf"
    # the chip's name only ever reaches the page as textContent (chat.js) or escaped
