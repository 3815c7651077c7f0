"""Extract interface strings and update the gettext catalogs.

    python scripts/catalogs.py          # update web/locale/*/messages.po
    python scripts/catalogs.py --check  # exit 1 if a zh_CN string is missing

Python code marks strings with ``translate("...")`` (the request's gettext);
templates with ``_("...")``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po, write_po

ROOT = Path(__file__).resolve().parents[1]
LOCALE_DIR = ROOT / "web" / "locale"
SOURCES = (
    (ROOT / "web" / "templates", "**.html", "jinja2.ext:babel_extract"),
    (ROOT / "web", "**.py", "python"),
    (ROOT / "consult", "**.py", "python"),
    (ROOT / "school", "**.py", "python"),
)
KEYWORDS = {"_": None, "translate": None, "N_": None}


def extract() -> dict[str, list[str]]:
    """Every marked string with the places it appears."""
    found: dict[str, list[str]] = {}
    for folder, pattern, method in SOURCES:
        if not folder.exists():
            continue
        for filename, line, message, _comments, _context in extract_from_dir(
            folder, method_map=[(pattern, method)], keywords=KEYWORDS
        ):
            if isinstance(message, str) and message:
                where = f"{folder.relative_to(ROOT)}/{filename}:{line}"
                found.setdefault(message, []).append(where)
    return found


def load(language: str) -> Catalog:
    path = LOCALE_DIR / language / "LC_MESSAGES" / "messages.po"
    if not path.exists():
        return Catalog(locale=language)
    with open(path, "rb") as handle:
        return read_po(handle, locale=language)


def update(language: str, messages: dict[str, list[str]]) -> list[str]:
    """Rewrite one catalog with the current strings; return untranslated ones."""
    old = load(language)
    catalog = Catalog(locale=language, project="huiyun", charset="utf-8")
    missing = []
    for message_id in sorted(messages):
        previous = old.get(message_id)
        text = previous.string if previous is not None else ""
        if language == "en" and not text:
            text = message_id
        catalog.add(
            message_id,
            text,
            locations=[
                (w.rsplit(":", 1)[0], int(w.rsplit(":", 1)[1]))
                for w in messages[message_id][:3]
            ],
        )
        if not text:
            missing.append(message_id)
    path = LOCALE_DIR / language / "LC_MESSAGES" / "messages.po"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        write_po(handle, catalog, width=88, sort_output=True)
    return missing


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    messages = extract()
    if args.check:
        catalog = load("zh_CN")
        missing = [
            m for m in messages if not (catalog.get(m) and catalog.get(m).string)
        ]
        for message in missing:
            print(f"untranslated: {message!r} ({messages[message][0]})")
        return 1 if missing else 0
    for language in ("zh_CN", "en"):
        missing = update(language, messages)
        print(f"{language}: {len(messages)} strings, {len(missing)} untranslated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
