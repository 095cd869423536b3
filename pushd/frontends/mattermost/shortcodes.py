"""Emoji shortcodes to glyphs, as MPNS does before a message leaves for APNs or FCM.

Mattermost stores a post as typed, ``:smile:`` and all, and builds the push ``message``
from it; MPNS runs that text through ``emoji.Sprint`` (the Go package
``kyokomi/emoji``), so the phone shows "hello 😄".  pushd expands with the ``emoji``
package's alias language, the well-kept Python table (GitHub/Slack aliases plus the
CLDR names).  On the shortcodes people type it agrees with kyokomi's table; the
differences (README, "Mattermost") are in rarely typed codes:

- kyokomi also knows emojione's skin-tone names (``:thumbsup_tone2:``), the Python table
  the CLDR ones (``:thumbs_up_medium-dark_skin_tone:``); neither knows the other's;
- a few aliases name another glyph (``:email:`` is ✉️ there, 📧 here; ``:pencil:``,
  ``:umbrella:``, ``:snowman:``, and gendered defaults such as ``:runner:``);
- kyokomi writes a space after every glyph it inserts (a terminal-width workaround);
  pushd does not, so "great :+1: job" reads "great 👍 job", not "great 👍  job".

``:flag-xx:`` (two lower-case letters) becomes the regional-indicator pair, as in
kyokomi: Mattermost's own emoji picker writes flags that way, and the Python table
does not know the form.
"""

from __future__ import annotations

import re
from typing import Final

import emoji

#: ``:flag-xx:``: two letters, as kyokomi matches it.
FLAG_RE: Final = re.compile(r":flag-([a-z]{2}):")
#: REGIONAL INDICATOR SYMBOL LETTER A; the letters follow in order.
REGIONAL_INDICATOR_A: Final = 0x1F1E6


def _flag(match: re.Match[str]) -> str:
    return "".join(chr(REGIONAL_INDICATOR_A + ord(c) - ord("a")) for c in match.group(1))


def expand(text: str) -> str:
    """``text`` with known shortcodes replaced by their glyphs; unknown ones stay as typed.

    Cheap when there is nothing to do: most messages hold no colon pair at all.
    """
    if text.count(":") < 2:
        return text
    return emoji.emojize(FLAG_RE.sub(_flag, text), language="alias")
