"""Avatars: initials, and colours that tell the first twelve people of a view apart.

"Clearly distinct" is measured: CIEDE2000 colour difference (about 2 is just noticeable;
the palette keeps every pair above 20) and WCAG contrast of the white initials.
"""

from __future__ import annotations

import itertools
import math
import random

import pytest

from spacenb.widgets.looks import AVATAR_COLORS, AvatarColors, initials, preferred_color

MIN_DELTA_E = 20.0
MIN_CONTRAST = 4.5


def _linear(channel: int) -> float:
    c = channel / 255
    return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4


def _rgb(color: str) -> tuple[float, float, float]:
    r, g, b = (_linear(int(color[i : i + 2], 16)) for i in (1, 3, 5))
    return r, g, b


def contrast_with_white(color: str) -> float:
    r, g, b = _rgb(color)
    return 1.05 / (0.2126 * r + 0.7152 * g + 0.0722 * b + 0.05)


def lab(color: str) -> tuple[float, float, float]:
    r, g, b = _rgb(color)
    x = (0.4124 * r + 0.3576 * g + 0.1805 * b) / 0.95047
    y = 0.2126 * r + 0.7152 * g + 0.0722 * b
    z = (0.0193 * r + 0.1192 * g + 0.9505 * b) / 1.08883

    def f(t: float) -> float:
        return t ** (1 / 3) if t > 0.008856 else 7.787 * t + 16 / 116

    fx, fy, fz = f(x), f(y), f(z)
    return 116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)


def delta_e(one: str, two: str) -> float:
    return delta_e_lab(lab(one), lab(two))


def delta_e_lab(one: tuple[float, float, float], two: tuple[float, float, float]) -> float:
    """CIEDE2000 (Sharma, Wu and Dalal's formulation)."""
    (l1, a1, b1), (l2, a2, b2) = one, two
    c_mean = (math.hypot(a1, b1) + math.hypot(a2, b2)) / 2
    g = 0.5 * (1 - math.sqrt(c_mean**7 / (c_mean**7 + 25**7)))
    a1, a2 = (1 + g) * a1, (1 + g) * a2
    c1, c2 = math.hypot(a1, b1), math.hypot(a2, b2)
    h1, h2 = math.degrees(math.atan2(b1, a1)) % 360, math.degrees(math.atan2(b2, a2)) % 360
    dh = 0.0 if c1 * c2 == 0 else (h2 - h1 + 180) % 360 - 180
    d_l, d_c = l2 - l1, c2 - c1
    d_h = 2 * math.sqrt(c1 * c2) * math.sin(math.radians(dh / 2))
    l_mean, c_mean = (l1 + l2) / 2, (c1 + c2) / 2
    if c1 * c2 == 0:
        h_mean = h1 + h2
    elif abs(h1 - h2) <= 180:
        h_mean = (h1 + h2) / 2
    else:
        h_mean = (h1 + h2 + 360) / 2 if h1 + h2 < 360 else (h1 + h2 - 360) / 2
    t = (
        1
        - 0.17 * math.cos(math.radians(h_mean - 30))
        + 0.24 * math.cos(math.radians(2 * h_mean))
        + 0.32 * math.cos(math.radians(3 * h_mean + 6))
        - 0.20 * math.cos(math.radians(4 * h_mean - 63))
    )
    rotation = 30 * math.exp(-(((h_mean - 275) / 25) ** 2))
    r_c = 2 * math.sqrt(c_mean**7 / (c_mean**7 + 25**7))
    s_l = 1 + 0.015 * (l_mean - 50) ** 2 / math.sqrt(20 + (l_mean - 50) ** 2)
    s_c, s_h = 1 + 0.045 * c_mean, 1 + 0.015 * c_mean * t
    r_t = -math.sin(math.radians(2 * rotation)) * r_c
    return math.sqrt(
        (d_l / s_l) ** 2 + (d_c / s_c) ** 2 + (d_h / s_h) ** 2 + r_t * (d_c / s_c) * (d_h / s_h)
    )


@pytest.mark.parametrize(
    ("one", "two", "expected"),
    [  # Sharma, Wu and Dalal (2005), table 1: pairs 1, 7 and 17
        ((50, 2.6772, -79.7751), (50, 0, -82.7485), 2.0425),
        ((50, 0, 0), (50, -1, 2), 2.3669),
        ((50, 2.5, 0), (73, 25, -18), 27.1492),
    ],
)
def test_delta_e_matches_the_published_test_data(
    one: tuple[float, float, float], two: tuple[float, float, float], expected: float
) -> None:
    assert delta_e_lab(one, two) == pytest.approx(expected, abs=1e-4)
    assert delta_e("#000000", "#ffffff") == pytest.approx(100, abs=0.5)


def test_the_palette_is_readable_and_spread() -> None:
    assert len(AVATAR_COLORS) == 12 == len(set(AVATAR_COLORS))
    for color in AVATAR_COLORS:
        assert contrast_with_white(color) >= MIN_CONTRAST, color
    closest = min(delta_e(a, b) for a, b in itertools.combinations(AVATAR_COLORS, 2))
    assert closest >= MIN_DELTA_E


TUTORIAL_NAMES = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi",
                  "ivan", "judy", "mallory", "niaj"]  # fmt: skip


@pytest.mark.parametrize("seed", range(20))
def test_the_first_twelve_people_of_a_view_look_different(seed: int) -> None:
    rng = random.Random(seed)
    names = (
        TUTORIAL_NAMES[:] if seed == 0 else [f"user-{rng.getrandbits(32):08x}" for _ in range(12)]
    )
    rng.shuffle(names)
    colors = AvatarColors()
    given = [colors(name) for name in names]
    assert len(set(given)) == 12
    for one, two in itertools.combinations(given, 2):
        assert delta_e(one, two) >= MIN_DELTA_E
    assert [colors(name) for name in names] == given  # kept for the view's lifetime


def test_alice_bob_and_carol_are_far_apart() -> None:
    colors = AvatarColors()
    trio = [colors(n) for n in ("alice", "bob", "carol")]
    assert min(delta_e(a, b) for a, b in itertools.combinations(trio, 2)) >= MIN_DELTA_E


def test_a_free_preferred_colour_is_the_same_everywhere() -> None:
    assert AvatarColors()("bob") == AVATAR_COLORS[preferred_color("bob")]
    one, two = AvatarColors(), AvatarColors()
    one("someone-else")
    assert one("alice") == two("alice") or preferred_color("alice") == preferred_color(
        "someone-else"
    )


def test_a_thirteenth_person_falls_back_on_their_preferred_colour() -> None:
    colors = AvatarColors()
    for i in range(12):
        colors(f"p{i}")
    assert colors("thirteen") == AVATAR_COLORS[preferred_color("thirteen")]


def test_initials() -> None:
    assert initials("ada lovelace") == "AL"
    assert initials("bob") == "BO"
    assert initials("carol_smith-2") == "CS"
    assert initials("") == "?"
