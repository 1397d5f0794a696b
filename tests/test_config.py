"""Configuration: value objects, named defaults, the environment, and a key that never shows."""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import Any

import attrs
import pytest

from fal_edit_async import (
    DEFAULT_LIMITS,
    DEFAULT_POLLING,
    DEFAULT_QUEUE_URL,
    DEFAULT_REST_URL,
    DEFAULT_RETRY,
    DEFAULT_TIMEOUTS,
    ClientConfig,
    Credentials,
    InputError,
    Limits,
    Polling,
    RetryPolicy,
    Timeouts,
)

KEY = "sk-live-0123456789abcdef"
KEY_ID, KEY_SECRET = "key-id-4242", "key-secret-9f9f9f"

# --- from_env ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "key"),
    [
        pytest.param({}, None, id="neither"),
        pytest.param({"FAL_KEY": KEY}, KEY, id="FAL_KEY"),
        pytest.param(
            {"FAL_KEY_ID": KEY_ID, "FAL_KEY_SECRET": KEY_SECRET},
            f"{KEY_ID}:{KEY_SECRET}",
            id="FAL_KEY_ID-and-FAL_KEY_SECRET",
        ),
        pytest.param(
            {"FAL_KEY": KEY, "FAL_KEY_ID": KEY_ID, "FAL_KEY_SECRET": KEY_SECRET},
            KEY,
            id="FAL_KEY-wins-over-the-pair",
        ),
        pytest.param(
            {"FAL_KEY": "", "FAL_KEY_ID": KEY_ID, "FAL_KEY_SECRET": KEY_SECRET},
            f"{KEY_ID}:{KEY_SECRET}",
            id="empty-FAL_KEY-falls-back-to-the-pair",
        ),
        pytest.param({"FAL_KEY_ID": KEY_ID}, None, id="FAL_KEY_ID-alone"),
        pytest.param({"FAL_KEY_SECRET": KEY_SECRET}, None, id="FAL_KEY_SECRET-alone"),
        pytest.param({"FAL_KEY": ""}, None, id="empty-FAL_KEY"),
    ],
)
def test_credentials_from_env(environ: dict[str, str], key: str | None) -> None:
    """FAL_KEY, else FAL_KEY_ID:FAL_KEY_SECRET joined as fal-client joins them, else no key."""
    config = ClientConfig.from_env(environ)

    assert key == (config.credentials.key if config.credentials else None)
    assert config.credentials == Credentials.from_env(environ)


def test_no_environment_means_defaults() -> None:
    """With an empty environment every setting is its named default."""
    assert ClientConfig() == ClientConfig.from_env({})


@pytest.mark.parametrize(
    ("environ", "queue_url", "rest_url"),
    [
        pytest.param(
            {"FAL_QUEUE_URL": "http://127.0.0.1:8765"},
            "http://127.0.0.1:8765",
            DEFAULT_REST_URL,
            id="queue",
        ),
        pytest.param(
            {"FAL_REST_URL": "https://rest.example.test/"},
            DEFAULT_QUEUE_URL,
            "https://rest.example.test",
            id="rest-trailing-slash-dropped",
        ),
        pytest.param(
            {"FAL_QUEUE_URL": "http://q.test/base/", "FAL_REST_URL": "http://r.test"},
            "http://q.test/base",
            "http://r.test",
            id="both",
        ),
        pytest.param(
            {"FAL_QUEUE_URL": "", "FAL_REST_URL": ""},
            DEFAULT_QUEUE_URL,
            DEFAULT_REST_URL,
            id="empty-means-default",
        ),
    ],
)
def test_base_urls_from_env(environ: dict[str, str], queue_url: str, rest_url: str) -> None:
    """FAL_QUEUE_URL and FAL_REST_URL override the base URLs, without a trailing slash."""
    config = ClientConfig.from_env(environ)

    assert (queue_url, rest_url) == (config.queue_url, config.rest_url)


def test_arguments_win_over_the_environment() -> None:
    """An explicit api_key or URL beats the environment variable for the same setting."""
    environ = {
        "FAL_KEY": "env-key",
        "FAL_QUEUE_URL": "http://env-queue.test",
        "FAL_REST_URL": "http://env-rest.test",
    }

    config = ClientConfig.from_env(
        environ, api_key=KEY, queue_url="http://arg-queue.test", rest_url="http://arg-rest.test"
    )

    assert Credentials(KEY) == config.credentials
    assert ("http://arg-queue.test", "http://arg-rest.test") == (config.queue_url, config.rest_url)


def test_api_key_argument_wins_over_the_key_pair() -> None:
    """An explicit api_key also beats FAL_KEY_ID + FAL_KEY_SECRET."""
    config = ClientConfig.from_env(
        {"FAL_KEY_ID": KEY_ID, "FAL_KEY_SECRET": KEY_SECRET}, api_key=KEY
    )

    assert Credentials(KEY) == config.credentials


def test_none_overrides_keep_the_default() -> None:
    """An override passed as None means "not given", so the default stays."""
    config = ClientConfig.from_env({}, timeouts=None, limits=Limits(jobs=64))

    assert DEFAULT_TIMEOUTS == config.timeouts
    assert Limits(jobs=64) == config.limits


def test_from_env_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an explicit mapping, from_env reads the process environment."""
    for name in ("FAL_KEY_ID", "FAL_KEY_SECRET", "FAL_REST_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FAL_KEY", KEY)
    monkeypatch.setenv("FAL_QUEUE_URL", "http://127.0.0.1:9")

    config = ClientConfig.from_env()

    assert (Credentials(KEY), "http://127.0.0.1:9") == (config.credentials, config.queue_url)


@pytest.mark.parametrize(
    ("environ", "kwargs", "field", "allowed"),
    [
        pytest.param({"FAL_QUEUE_URL": "ftp://q.test"}, {}, "queue_url", "an http(s) base URL",
                     id="FAL_QUEUE_URL-ftp"),
        pytest.param({"FAL_REST_URL": "rest.fal.ai"}, {}, "rest_url", "an http(s) base URL",
                     id="FAL_REST_URL-without-scheme"),
        pytest.param({}, {"queue_url": 8080}, "queue_url", "an http(s) base URL",
                     id="queue_url-not-a-string"),
        pytest.param({"FAL_KEY": "   "}, {}, "api_key", "a non-empty key on one line",
                     id="FAL_KEY-blank"),
        pytest.param({}, {"api_key": ""}, "api_key", "a non-empty key on one line",
                     id="api_key-empty"),
        pytest.param({}, {"api_key": "two\nlines"}, "api_key", "a non-empty key on one line",
                     id="api_key-two-lines"),
    ],
)  # fmt: skip
def test_invalid_configuration_raises_input_error(
    environ: dict[str, str], kwargs: dict[str, Any], field: str, allowed: str
) -> None:
    """An invalid URL or key, from the environment or an argument, raises InputError."""
    with pytest.raises(InputError) as caught:
        ClientConfig.from_env(environ, **kwargs)

    assert (field, allowed) == (caught.value.field, caught.value.allowed)


def test_base_url_without_host_is_refused() -> None:
    """A base URL must name a host: ``http://`` alone is refused."""
    with pytest.raises(InputError, match="queue_url"):
        ClientConfig(queue_url="http://")


# --- value objects -------------------------------------------------------------------------------


def test_defaults_are_named_constants() -> None:
    """ClientConfig() is built from the DEFAULT_* constants."""
    config = ClientConfig()

    assert (DEFAULT_QUEUE_URL, DEFAULT_REST_URL) == (config.queue_url, config.rest_url)
    assert (DEFAULT_TIMEOUTS, DEFAULT_LIMITS, DEFAULT_RETRY, DEFAULT_POLLING) == (
        config.timeouts,
        config.limits,
        config.retry,
        config.polling,
    )
    assert "https://queue.fal.run" == DEFAULT_QUEUE_URL
    assert "https://rest.fal.ai" == DEFAULT_REST_URL


@pytest.mark.parametrize("cls", [Timeouts, Limits, RetryPolicy, Polling])
def test_value_objects_compare_by_value_and_are_frozen(cls: Callable[..., Any]) -> None:
    """Equal settings compare equal, hash alike, read well, and cannot be changed in place."""
    value = cls()

    assert value == cls()
    assert hash(value) == hash(cls())
    assert repr(value).startswith(f"{cls.__name__}(")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        value.x = 1


def test_stream_idle_outlasts_fals_keep_alive() -> None:
    """The default idle timeout for the status stream exceeds fal's 15 s keep-alive."""
    assert DEFAULT_TIMEOUTS.stream_idle > 15


POSITIVE = "a positive number"
NON_NEGATIVE = "zero or a positive number"


@pytest.mark.parametrize(
    ("cls", "field", "value", "allowed"),
    [
        pytest.param(Timeouts, "connect", 0, POSITIVE, id="Timeouts.connect-zero"),
        pytest.param(Timeouts, "read", -1.0, POSITIVE, id="Timeouts.read-negative"),
        pytest.param(Timeouts, "stream_idle", True, POSITIVE, id="Timeouts.stream_idle-bool"),
        pytest.param(Timeouts, "cancel", 0.0, POSITIVE, id="Timeouts.cancel-zero"),
        pytest.param(Limits, "max_connections", 0, POSITIVE, id="Limits.max_connections-zero"),
        pytest.param(Limits, "jobs", -4, POSITIVE, id="Limits.jobs-negative"),
        pytest.param(Limits, "uploads", False, POSITIVE, id="Limits.uploads-bool"),
        pytest.param(Limits, "downloads", 0, POSITIVE, id="Limits.downloads-zero"),
        pytest.param(RetryPolicy, "max_attempts", 0, POSITIVE, id="RetryPolicy.max_attempts-zero"),
        pytest.param(RetryPolicy, "base_delay", -0.1, NON_NEGATIVE, id="RetryPolicy.base_delay"),
        pytest.param(RetryPolicy, "max_delay", True, NON_NEGATIVE, id="RetryPolicy.max_delay-bool"),
        pytest.param(RetryPolicy, "max_retry_after", -1, NON_NEGATIVE, id="RetryPolicy.cap"),
        pytest.param(Polling, "queued_interval", -1, NON_NEGATIVE, id="Polling.queued_interval"),
        pytest.param(Polling, "in_progress_interval", -0.5, NON_NEGATIVE, id="Polling.in_progress"),
        pytest.param(Polling, "max_interval", -2, NON_NEGATIVE, id="Polling.max_interval"),
        pytest.param(Polling, "backoff", 0, POSITIVE, id="Polling.backoff-zero"),
        pytest.param(Polling, "stream_failures", 0, POSITIVE, id="Polling.stream_failures-zero"),
        pytest.param(Timeouts, "connect", "5", POSITIVE, id="Timeouts.connect-string"),
        pytest.param(Timeouts, "cancel", float("inf"), POSITIVE, id="Timeouts.cancel-inf"),
        pytest.param(RetryPolicy, "max_delay", float("inf"), NON_NEGATIVE, id="RetryPolicy.inf"),
        pytest.param(Polling, "backoff", float("nan"), POSITIVE, id="Polling.backoff-nan"),
    ],
)  # fmt: skip
def test_invalid_settings_raise_input_error(
    cls: Callable[..., Any], field: str, value: object, allowed: str
) -> None:
    """A setting out of range (or a bool) raises InputError naming ``Class.field``."""
    with pytest.raises(InputError) as caught:
        cls(**{field: value})

    name = getattr(cls, "__name__", "")
    assert f"{name}.{field}: invalid value {value!r}; expected {allowed}" == str(caught.value)


@pytest.mark.parametrize(
    ("cls", "fields"),
    [
        pytest.param(RetryPolicy, ["base_delay", "max_delay", "max_retry_after"], id="RetryPolicy"),
        pytest.param(
            Polling, ["queued_interval", "in_progress_interval", "max_interval"], id="Polling"
        ),
    ],
)
def test_zero_waits_are_allowed_for_tests(cls: Callable[..., Any], fields: list[str]) -> None:
    """Delays and intervals may be zero, so tests never sleep."""
    value = cls(**dict.fromkeys(fields, 0))

    assert [0] * len(fields) == [getattr(value, f) for f in fields]


# --- credentials and key redaction ---------------------------------------------------------------


def test_credentials_header_value() -> None:
    """The Authorization header value is ``Key <key>``."""
    assert f"Key {KEY}" == Credentials(KEY).header_value


def test_credentials_compare_by_key() -> None:
    """Two Credentials with the same key are equal."""
    assert Credentials(KEY) == Credentials(KEY) != Credentials("other")


def _texts(value: object) -> list[str]:
    return [repr(value), str(value), f"{value}", f"{value!r}", format(value, "")]


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(Credentials(KEY), id="Credentials"),
        pytest.param(Credentials(f"{KEY_ID}:{KEY_SECRET}"), id="Credentials-pair"),
        pytest.param(ClientConfig.from_env({"FAL_KEY": KEY}), id="ClientConfig-from-FAL_KEY"),
        pytest.param(
            ClientConfig.from_env({"FAL_KEY_ID": KEY_ID, "FAL_KEY_SECRET": KEY_SECRET}),
            id="ClientConfig-from-pair",
        ),
        pytest.param(ClientConfig(credentials=Credentials(KEY)), id="ClientConfig"),
    ],
)
def test_key_never_appears_in_repr_or_str(value: object) -> None:
    """Neither Credentials nor ClientConfig shows the key (or half of a pair) when printed."""
    for text in _texts(value):
        for secret in (KEY, KEY_ID, KEY_SECRET):
            assert secret not in text
    assert "<redacted>" in repr(value)


def _raise_with_key(make: Callable[[], object]) -> BaseException:
    with pytest.raises(Exception) as caught:
        make()
    return caught.value


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: Credentials(f"{KEY}\nsecond line"), id="key-with-newline"),
        pytest.param(lambda: Credentials(f"  {KEY}\n"), id="key-with-trailing-newline"),
        pytest.param(lambda: ClientConfig.from_env({}, api_key=f"{KEY}\n"), id="api_key-argument"),
        pytest.param(lambda: ClientConfig.from_env({"FAL_KEY": f"{KEY}\nx"}), id="FAL_KEY"),
        pytest.param(
            lambda: ClientConfig.from_env({"FAL_KEY_ID": KEY_ID, "FAL_KEY_SECRET": "s\n" + KEY}),
            id="FAL_KEY_SECRET",
        ),
        pytest.param(
            lambda: ClientConfig.from_env({"FAL_KEY": KEY, "FAL_QUEUE_URL": "ftp://x"}),
            id="bad-url-with-a-valid-key",
        ),
        pytest.param(
            lambda: ClientConfig.from_env({"FAL_KEY": KEY}, timeouts=Timeouts(connect=0)),
            id="bad-timeout-with-a-valid-key",
        ),
        pytest.param(
            lambda: attrs.evolve(ClientConfig.from_env({"FAL_KEY": KEY}), rest_url="nope"),
            id="evolve-a-config-holding-a-key",
        ),
    ],
)  # fmt: skip
def test_key_never_appears_in_exception_text(make: Callable[[], object]) -> None:
    """No error raised while handling a key shows it: message, repr, args, fields or traceback."""
    exc = _raise_with_key(make)

    texts = [
        str(exc),
        repr(exc),
        repr(exc.args),
        repr(vars(exc)),
        "".join(traceback.format_exception(exc)),
    ]
    for text in texts:
        for secret in (KEY, KEY_ID, KEY_SECRET):
            assert secret not in text


def test_plain_string_credentials_never_leak() -> None:
    """A key passed as a plain string is either refused or wrapped: never shown in the repr."""
    try:
        config = ClientConfig(credentials=KEY)  # type: ignore[arg-type]
    except InputError as exc:
        assert KEY not in str(exc)
    else:
        assert KEY not in repr(config)
