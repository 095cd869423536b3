"""Emoji shortcodes in Mattermost pushes: the table against MPNS's (kyokomi/emoji v2.2.4,
``emoji.Sprint``), checked glyph by glyph on the shortcodes people type."""

from __future__ import annotations

import pytest

from pushd.frontends.mattermost.shortcodes import expand

#: Shortcode -> the glyph kyokomi/emoji v2.2.4 (MPNS's) inserts, read from its table.
PROXY_GLYPHS = {
    ":smile:": "😄",
    ":+1:": "👍",
    ":thumbsup:": "👍",
    ":-1:": "👎",
    ":heart:": "❤️",
    ":joy:": "😂",
    ":tada:": "🎉",
    ":white_check_mark:": "✅",
    ":100:": "💯",
    ":fire:": "🔥",
    ":pray:": "🙏",
    ":wave:": "👋",
    ":grinning:": "😀",
    ":laughing:": "😆",
    ":slightly_smiling_face:": "🙂",
    ":wink:": "😉",
    ":thinking:": "🤔",
    ":eyes:": "👀",
    ":ok_hand:": "👌",
    ":clap:": "👏",
    ":rocket:": "🚀",
    ":warning:": "⚠️",
    ":x:": "❌",
    ":heavy_check_mark:": "✔️",
    ":sob:": "😭",
    ":sweat_smile:": "😅",
    ":upside_down_face:": "🙃",
    ":man_shrugging:": "🤷\u200d♂️",
    ":thumbs_up:": "👍",
}


@pytest.mark.parametrize(("code", "glyph"), PROXY_GLYPHS.items())
def test_common_shortcodes_match_the_proxy(code: str, glyph: str) -> None:
    assert expand(code) == glyph


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("alice: hello :smile:", "alice: hello 😄"),
        # kyokomi pads each glyph with a space; pushd does not.
        ("great :+1: job", "great 👍 job"),
        (":white_check_mark::tada:", "✅🎉"),
        ("::smile:", ":😄"),
        ("meet at 10:30 :smile:", "meet at 10:30 😄"),
        # Unknown and upper-case codes stay as typed, as there.
        (":not_an_emoji: :SMILE:", ":not_an_emoji: :SMILE:"),
        # Mattermost's picker writes flags as :flag-xx:; kyokomi maps any two letters.
        ("off to :flag-de: and :flag-jp:", "off to 🇩🇪 and 🇯🇵"),
        ("no colons at all", "no colons at all"),
        ("", ""),
    ],
)
def test_texts(text: str, expected: str) -> None:
    assert expand(text) == expected


def test_where_the_tables_differ() -> None:
    """The differences the README lists: documented, so a change in either shows."""
    assert expand(":email:") == "📧"  # kyokomi: ✉️
    assert expand(":thumbsup_tone2:") == ":thumbsup_tone2:"  # kyokomi: 👍🏼
    assert expand(":thumbs_up_medium_skin_tone:") == "👍🏽"  # kyokomi: unknown
