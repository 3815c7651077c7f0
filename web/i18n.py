"""Translations: zh-CN first, English available; catalogs are gettext .po files.

The .po files are compiled in memory at start-up, so the repository holds no
binary .mo files and a translator edits one file.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import NullTranslations, Translations

LOCALE_DIR = Path(__file__).parent / "locale"
LANGUAGES = ("zh-CN", "en")
LANGUAGE_LABELS = {"zh-CN": "中文", "en": "English"}
# message ids are English; the zh_CN catalog carries the Chinese interface
_CATALOG_DIRS = {"zh-CN": "zh_CN", "en": "en"}

Catalogs = Mapping[str, NullTranslations]


def N_(message: str) -> str:
    """Mark a string for the catalog where it is translated later, by value."""
    return message


# names that templates translate by value: roles and station levels
DYNAMIC_MESSAGES = (
    N_("admin"),
    N_("clinician"),
    N_("expert"),
    N_("couple"),
    N_("city"),
    N_("district"),
    N_("street"),
    # question states
    N_("waiting"),
    N_("claimed"),
    N_("answered"),
    N_("closed"),
    N_("too many failed logins; wait 15 minutes and try again"),
    N_("too many registrations from this address; wait 15 minutes"),
    # notices built in consult/notify.py and consult/reminders.py, by value
    N_("Emergency consultation request from %(station)s"),
    N_(
        "An emergency remote consultation request (%(number)s) from %(station)s "
        "waits at your station. Open it now: %(url)s"
    ),
    N_("You are invited to remote consultation %(number)s"),
    N_(
        "%(name)s invited you into the video session of remote consultation "
        "%(number)s. Open the consultation page to join: %(url)s"
    ),
    N_("Remote consultation %(number)s at %(time)s"),
    N_(
        "Reminder: remote consultation %(number)s starts at %(time)s "
        "(Asia/Shanghai). The video room opens 15 minutes before; join from the "
        "consultation page: %(url)s"
    ),
)


def load_catalogs() -> dict[str, NullTranslations]:
    catalogs: dict[str, NullTranslations] = {}
    for language, folder in _CATALOG_DIRS.items():
        po_path = LOCALE_DIR / folder / "LC_MESSAGES" / "messages.po"
        if not po_path.exists():
            catalogs[language] = NullTranslations()
            continue
        with open(po_path, "rb") as handle:
            catalog = read_po(handle, locale=folder)
        buffer = io.BytesIO()
        write_mo(buffer, catalog)
        buffer.seek(0)
        catalogs[language] = Translations(buffer)
    return catalogs


def best_language(accept_language: str | None, default: str) -> str:
    """Pick zh-CN or en from an Accept-Language header."""
    if not accept_language:
        return default
    ranked = []
    for part in accept_language.split(","):
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:])
            except ValueError:
                quality = 0.0
        ranked.append((quality, tag.strip().lower()))
    for _quality, tag in sorted(ranked, reverse=True):
        if tag.startswith("zh"):
            return "zh-CN"
        if tag.startswith("en"):
            return "en"
    return default
