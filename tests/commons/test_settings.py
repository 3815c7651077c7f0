"""Settings: documented in the README, read in order, secrets masked."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest

from commons.settings import (
    OPTIONS,
    SettingsError,
    ensure_secret_key,
    load_settings,
)

README = Path(__file__).resolve().parents[2] / "README.md"
TABLE_ROW = re.compile(r"^\| `(HUIYUN_[A-Z0-9_]+)` \| `([^`]*)` \|", re.MULTILINE)


def documented_options() -> dict[str, str]:
    assert README.exists(), "README.md must document every setting in a table"
    return dict(TABLE_ROW.findall(README.read_text(encoding="utf-8")))


def test_every_setting_is_in_the_readme_table() -> None:
    documented = documented_options()
    missing = [o.env_var for o in OPTIONS if o.env_var not in documented]
    assert missing == [], f"add these to README.md's configuration table: {missing}"
    unknown = sorted(set(documented) - {o.env_var for o in OPTIONS})
    assert unknown == [], f"README.md documents settings that do not exist: {unknown}"
    for option in OPTIONS:
        shown = documented[option.env_var]
        assert shown == (option.default or "(empty)"), option.env_var


def test_defaults_then_toml_then_environment_then_overrides(tmp_path: Path) -> None:
    (tmp_path / "huiyun.toml").write_text(
        'port = 9000\nlog_level = "DEBUG"\nstun_urls = ["stun:a:3478", "stun:b"]\n'
        "trust_forwarded = true\n",
        encoding="utf-8",
    )
    environ = {"HUIYUN_DATA_DIR": str(tmp_path), "HUIYUN_LOG_LEVEL": "WARNING"}
    settings = load_settings({"host": "127.0.0.2"}, environ=environ)
    assert settings.data_dir == tmp_path.resolve()
    assert settings.port == 9000
    assert settings.log_level == "WARNING"
    assert settings.host == "127.0.0.2"
    assert settings.stun_urls == ("stun:a:3478", "stun:b")
    assert settings.trust_forwarded is True
    assert settings.session_idle_minutes == 30
    assert settings.base_url == "http://127.0.0.2:9000"


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        (
            {"HUIYUN_PORT": "eighty"},
            "HUIYUN_PORT='eighty' is not valid: Port `huiyun serve` binds.",
        ),
        (
            {"HUIYUN_SMTP_STARTTLS": "maybe"},
            "HUIYUN_SMTP_STARTTLS='maybe' is not valid: Use STARTTLS.",
        ),
        ({"HUIYUN_PORT": "70000"}, "port 70000 is outside 0..65535"),
        (
            {"HUIYUN_DEFAULT_LANGUAGE": "fr"},
            "default_language 'fr': expected zh-CN or en",
        ),
        ({"HUIYUN_SESSION_IDLE_MINUTES": "0"}, "session lifetimes must be positive"),
    ],
)
def test_bad_values_name_the_setting(
    tmp_path: Path, environ: dict[str, str], message: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({"data_dir": str(tmp_path)}, environ=environ)
    assert str(caught.value) == message


def test_toml_file_errors(tmp_path: Path) -> None:
    (tmp_path / "huiyun.toml").write_text("prot = 1\n", encoding="utf-8")
    with pytest.raises(SettingsError) as caught:
        load_settings({"data_dir": str(tmp_path)}, environ={})
    assert str(caught.value) == (
        f"{tmp_path / 'huiyun.toml'}: unknown settings ['prot']; "
        "run `huiyun config` to list the known ones"
    )
    missing = tmp_path / "nowhere.toml"
    with pytest.raises(SettingsError) as caught:
        load_settings(
            {"data_dir": str(tmp_path)}, environ={"HUIYUN_CONFIG": str(missing)}
        )
    assert str(caught.value) == (
        f"HUIYUN_CONFIG names {str(missing)!r}, which does not exist; "
        "create it or unset the variable"
    )


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("", ""),
        ("mongodb://db.example:27017/", "mongodb://db.example:27017/"),
        (
            "mongodb://huiyun:s3cret@db.example:27017/?authSource=admin",
            "mongodb://huiyun:********@db.example:27017/?authSource=admin",
        ),
        (
            "mongodb://huiyun:s3cret@host1:27017,host2:27018/?replicaSet=rs0",
            "mongodb://huiyun:********@host1:27017,host2:27018/?replicaSet=rs0",
        ),
        (
            "mongodb+srv://huiyun:p%40ss@cluster.example.net/huiyun",
            "mongodb+srv://huiyun:********@cluster.example.net/huiyun",
        ),
        (
            "mongodb://huiyun:s3cret@[::1]:27017/",
            "mongodb://huiyun:********@[::1]:27017/",
        ),
    ],
)
def test_masked_uri_hides_only_the_password(
    tmp_path: Path, uri: str, shown: str
) -> None:
    settings = load_settings(
        {"data_dir": str(tmp_path), "mongodb_uri": uri}, environ={}
    )
    assert settings.masked()["mongodb_uri"] == shown


def test_masked_hides_every_secret(tmp_path: Path) -> None:
    environ = {
        option.env_var: f"value-of-{option.name}"
        for option in OPTIONS
        if option.secret and option.name != "mongodb_uri"
    }
    settings = load_settings({"data_dir": str(tmp_path)}, environ=environ)
    shown = settings.masked()
    assert set(shown) == {option.name for option in OPTIONS}
    for option in OPTIONS:
        if option.secret and option.name != "mongodb_uri":
            assert shown[option.name] == "********", option.name
    assert "value-of" not in str(shown)
    assert shown["port"] == "8080"
    assert shown["data_dir"] == str(tmp_path.resolve())


def test_secret_key_is_made_once_and_kept_private(tmp_path: Path) -> None:
    settings = load_settings({"data_dir": str(tmp_path / "data")}, environ={})
    first = ensure_secret_key(settings)
    second = ensure_secret_key(settings)
    assert len(first.secret_key) >= 64
    assert first.secret_key == second.secret_key
    key_file = tmp_path / "data" / "secret_key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    given = ensure_secret_key(settings.replace(secret_key="from-the-environment"))
    assert given.secret_key == "from-the-environment"


def test_secret_key_in_an_unusable_data_dir_is_a_settings_error(
    tmp_path: Path,
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory", encoding="utf-8")
    settings = load_settings({"data_dir": str(blocker / "data")}, environ={})
    with pytest.raises(SettingsError) as caught:
        ensure_secret_key(settings)
    assert str(caught.value) == (
        f"data directory {str(blocker / 'data')!r} is not writable "
        "(Not a directory); choose another with --data-dir or fix its permissions"
    )
