"""Settings: one table of every option, read from defaults, a TOML file and HUIYUN_*.

Precedence, lowest first: the table's default, the TOML file (``HUIYUN_CONFIG`` or
``<data dir>/huiyun.toml``), environment variables, then command-line options.
"""

from __future__ import annotations

import os
import secrets
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit


class SettingsError(ValueError):
    """A setting has a value that cannot be used."""


def _str_list(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true or false, got {raw!r}")


@dataclass(frozen=True, kw_only=True)
class Option:
    """One row of the settings table."""

    name: str
    default: str
    help: str
    parse: Callable[[str], Any] = str
    secret: bool = False

    @property
    def env_var(self) -> str:
        return "HUIYUN_" + self.name.upper()


OPTIONS: tuple[Option, ...] = (
    # process
    Option(
        name="data_dir",
        default="./var",
        help="Directory for the embedded database, the secret key and uploaded files.",
    ),
    Option(name="host", default="127.0.0.1", help="Address `huiyun serve` binds."),
    Option(name="port", default="8080", parse=int, help="Port `huiyun serve` binds."),
    Option(
        name="public_url",
        default="",
        help="Base URL users reach, e.g. "
        "https://huiyun.example.cn; used for links in messages and the "
        "WebSocket origin check. Empty: http://HOST:PORT.",
    ),
    Option(name="log_level", default="INFO", help="DEBUG, INFO, WARNING or ERROR."),
    # storage
    Option(
        name="mongodb_uri",
        default="",
        secret=True,
        help="MongoDB server to "
        "use. Empty: start the embedded SecantusDB server in the data dir.",
    ),
    Option(name="database_name", default="huiyun", help="Database name on the server."),
    # security
    Option(
        name="secret_key",
        default="",
        secret=True,
        help="Key for signing join "
        "tokens and links. Empty: generated once and kept in "
        "<data dir>/secret_key.",
    ),
    Option(
        name="session_idle_minutes",
        default="30",
        parse=int,
        help="A session ends after this long without a request.",
    ),
    Option(
        name="session_max_hours",
        default="12",
        parse=int,
        help="A session ends this long after login whatever its use.",
    ),
    Option(
        name="login_failures_per_account",
        default="5",
        parse=int,
        help="Failed logins for one account within 15 minutes before it is throttled.",
    ),
    Option(
        name="login_failures_per_address",
        default="20",
        parse=int,
        help="Failed logins from one address within 15 minutes before it is throttled.",
    ),
    Option(
        name="max_body_bytes",
        default="1048576",
        parse=int,
        help="Largest request body accepted outside file uploads.",
    ),
    Option(
        name="trust_forwarded",
        default="false",
        parse=_bool,
        help="Trust X-Forwarded-For/-Proto from a reverse proxy in front of huiyun.",
    ),
    # interface
    Option(
        name="default_language",
        default="zh-CN",
        help="Language for visitors who have not chosen one: zh-CN or en.",
    ),
    # signaling and media
    Option(
        name="stun_urls",
        default="",
        parse=_str_list,
        help="Comma-separated STUN URLs given to peers. Empty: host candidates only.",
    ),
    Option(
        name="turn_urls",
        default="",
        parse=_str_list,
        help="Comma-separated TURN URLs (coturn with use-auth-secret).",
    ),
    Option(
        name="turn_secret",
        default="",
        secret=True,
        help="TURN REST API shared secret (coturn static-auth-secret).",
    ),
    Option(
        name="turn_ttl_seconds",
        default="3600",
        parse=int,
        help="Lifetime of TURN credentials handed to a peer.",
    ),
    Option(
        name="allowed_origins",
        default="",
        parse=_str_list,
        help="Extra origins allowed to open the signaling WebSocket.",
    ),
    # messages
    Option(
        name="smtp_host",
        default="",
        help="SMTP server for email. Empty: no email is sent.",
    ),
    Option(name="smtp_port", default="25", parse=int, help="SMTP port."),
    Option(name="smtp_from", default="huiyun@localhost", help="Sender address."),
    Option(name="smtp_username", default="", help="SMTP login, if required."),
    Option(name="smtp_password", default="", secret=True, help="SMTP password."),
    Option(name="smtp_starttls", default="false", parse=_bool, help="Use STARTTLS."),
    Option(
        name="sms_webhook_url",
        default="",
        help="SMS/WeChat gateway webhook URL. Empty: no SMS is sent.",
    ),
    Option(
        name="sms_webhook_secret",
        default="",
        secret=True,
        help="HMAC key that signs webhook calls in both directions.",
    ),
    Option(
        name="dispatch_interval_seconds",
        default="60",
        parse=int,
        help="Seconds between passes of the periodic jobs (message dispatcher, "
        "lease expiry, escalation); 0 turns them off.",
    ),
)

OPTION_BY_NAME: Mapping[str, Option] = {option.name: option for option in OPTIONS}


@dataclass(frozen=True, kw_only=True)
class Settings:
    """The effective settings of one process."""

    data_dir: Path
    host: str
    port: int
    public_url: str
    log_level: str
    mongodb_uri: str
    database_name: str
    secret_key: str
    session_idle_minutes: int
    session_max_hours: int
    login_failures_per_account: int
    login_failures_per_address: int
    max_body_bytes: int
    trust_forwarded: bool
    default_language: str
    stun_urls: tuple[str, ...]
    turn_urls: tuple[str, ...]
    turn_secret: str
    turn_ttl_seconds: int
    allowed_origins: tuple[str, ...]
    smtp_host: str
    smtp_port: int
    smtp_from: str
    smtp_username: str
    smtp_password: str
    smtp_starttls: bool
    sms_webhook_url: str
    sms_webhook_secret: str
    dispatch_interval_seconds: int

    @property
    def base_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        return f"http://{self.host}:{self.port}"

    def replace(self, **changes: Any) -> Settings:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return Settings(**values)

    def masked(self) -> dict[str, str]:
        """Every setting as text, secrets hidden, for `huiyun config`."""
        shown: dict[str, str] = {}
        for option in OPTIONS:
            value = getattr(self, option.name)
            if isinstance(value, tuple):
                text = ",".join(value)
            else:
                text = str(value)
            if option.name == "mongodb_uri":
                text = _mask_uri_password(text)
            elif option.secret and text:
                text = "********"
            shown[option.name] = text
        return shown


def _mask_uri_password(uri: str) -> str:
    parts = urlsplit(uri)
    # split the text by hand: a replica set's "h1:27017,h2:27017" has no
    # single port, and urlsplit's .port and .hostname fail or drop brackets
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return uri
    username = userinfo.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{username}:********@{hosts}"))


def load_settings(
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build settings from defaults, the TOML file, the environment and overrides."""
    environ = os.environ if environ is None else environ
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}

    raw = {option.name: option.default for option in OPTIONS}
    data_dir = overrides.get("data_dir") or environ.get("HUIYUN_DATA_DIR") or "./var"
    raw.update(_read_toml(environ.get("HUIYUN_CONFIG"), Path(data_dir)))
    for option in OPTIONS:
        if option.env_var in environ:
            raw[option.name] = environ[option.env_var]

    values: dict[str, Any] = {}
    for option in OPTIONS:
        values[option.name] = _parse(option, raw[option.name])
    values.update(overrides)
    values["data_dir"] = Path(values["data_dir"]).expanduser().resolve()
    return _validated(Settings(**values))


def _read_toml(explicit: str | None, data_dir: Path) -> dict[str, str]:
    path = Path(explicit) if explicit else data_dir / "huiyun.toml"
    if not path.exists():
        if explicit:
            raise SettingsError(
                f"HUIYUN_CONFIG names {str(path)!r}, which does not "
                "exist; create it or unset the variable"
            )
        return {}
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SettingsError(f"{path}: not valid TOML ({exc})") from None
    unknown = sorted(set(document) - set(OPTION_BY_NAME))
    if unknown:
        raise SettingsError(
            f"{path}: unknown settings {unknown}; "
            "run `huiyun config` to list the known ones"
        )
    return {name: _toml_text(value) for name, value in document.items()}


def _toml_text(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(item) for item in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _parse(option: Option, text: str) -> Any:
    try:
        return option.parse(text)
    except ValueError:
        raise SettingsError(
            f"{option.env_var}={text!r} is not valid: {option.help}"
        ) from None


def _validated(settings: Settings) -> Settings:
    if not 0 <= settings.port <= 65535:
        raise SettingsError(f"port {settings.port} is outside 0..65535")
    if settings.default_language not in ("zh-CN", "en"):
        raise SettingsError(
            f"default_language {settings.default_language!r}: expected zh-CN or en"
        )
    if settings.session_idle_minutes <= 0 or settings.session_max_hours <= 0:
        raise SettingsError("session lifetimes must be positive")
    return settings


def ensure_secret_key(settings: Settings) -> Settings:
    """Return settings with a secret key, creating <data dir>/secret_key once."""
    if settings.secret_key:
        return settings
    key_file = settings.data_dir / "secret_key"
    try:
        if not key_file.exists():
            _create_key_file(key_file)
        key = key_file.read_text(encoding="ascii").strip()
    except OSError as exc:
        raise SettingsError(
            f"data directory {str(settings.data_dir)!r} is not writable "
            f"({exc.strerror}); choose another with --data-dir or fix its permissions"
        ) from None
    return settings.replace(secret_key=key)


def _create_key_file(key_file: Path) -> None:
    key_file.parent.mkdir(parents=True, exist_ok=True)
    # exclusive create: two processes starting together keep one key; the
    # mode is set at creation so the key is never readable by others
    try:
        descriptor = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(descriptor, "w", encoding="ascii") as handle:
        handle.write(secrets.token_urlsafe(48))
