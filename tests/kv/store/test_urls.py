"""Store URLs: secrets never printed, ``file://`` URLs that name a host refused, tenant names
strict (issue #13, item 6). No server needed: the Redis URLs point at a closed port."""

from __future__ import annotations

from pathlib import Path

import pytest

from ragcompress.kv.store.disk import DiskStore
from ragcompress.kv.store.open import StoreUnavailableError, open_store, redact_url
from ragcompress.kv.store.redis import RedisStore

SECRET = "hunter2-s3cret"


@pytest.mark.parametrize(
    "url",
    [
        f"redis://:{SECRET}@127.0.0.1:6379/0",
        f"redis://default:{SECRET}@127.0.0.1:6379/0?ttl_s=5",
        f"redis://127.0.0.1:6379/0?password={SECRET}",
        f"rediss://127.0.0.1:6379/0?tenant=acme&secret={SECRET}&ssl_cert_reqs=none",
        f"redis://127.0.0.1/0?token={SECRET}",
        f"redis://127.0.0.1/0?api_key={SECRET}",
        f"redis://127.0.0.1/0?Redis_Password={SECRET}",
        f"redis://{SECRET}@127.0.0.1/0",  # a lone userinfo: some services put a token there
    ],
)
def test_redact_url_hides_every_secret(url: str) -> None:
    shown = redact_url(url)
    assert SECRET not in shown
    assert "***" in shown and "127.0.0.1" in shown


def test_redact_url_keeps_what_is_not_secret() -> None:
    url = "rediss://127.0.0.1:6380/2?tenant=acme&ttl_s=5&ssl_cert_reqs=none"
    assert redact_url(url) == url
    assert redact_url("file:///data/chunks") == "file:///data/chunks"
    assert redact_url("chunks/sub") == "chunks/sub"
    assert redact_url("redis://[::1/0") == "<unparsable URL>"  # never raises


def test_store_errors_do_not_print_the_secret() -> None:
    url = f"redis://:{SECRET}@127.0.0.1:1/0?password={SECRET}"
    store = open_store(url)
    assert isinstance(store, RedisStore) and SECRET not in repr(store)
    with pytest.raises(StoreUnavailableError) as info:
        store.ping()
    assert SECRET not in str(info.value) and SECRET not in info.value.url
    for bad in (f"nosuch://x?password={SECRET}", f"memory://?max_bytes=-1&token={SECRET}"):
        with pytest.raises(ValueError) as err:
            open_store(bad)
        assert SECRET not in str(err.value)


@pytest.mark.parametrize(
    "url", ["file://chunks/sub", "file://example.com/data", "file:chunks", "file:///a?x=1"]
)
def test_file_urls_that_are_not_absolute_paths_are_refused(url: str) -> None:
    # `file://chunks/sub` used to open /sub: the host part was dropped silently.
    with pytest.raises(ValueError, match="file:///"):
        open_store(url)


@pytest.mark.parametrize("form", ["file://{p}", "file://localhost{p}", "file:{p}", "{p}"])
def test_file_urls_of_absolute_paths_open_a_disk_store(form: str, tmp_path: Path) -> None:
    target = tmp_path / "chunks"
    store = open_store(form.format(p=target))
    assert isinstance(store, DiskStore) and store.directory == target and target.is_dir()


def test_a_relative_plain_path_is_a_relative_disk_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store("chunks/sub")
    assert isinstance(store, DiskStore) and (tmp_path / "chunks" / "sub").is_dir()


@pytest.mark.parametrize("name", ["acme\n", "", "a b", "a:b", "{acme}", "x" * 65, "acme\r"])
def test_bad_tenant_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="tenant"):
        open_store("redis://127.0.0.1:1/0", tenant=name)
    with pytest.raises(ValueError, match="tenant"):
        RedisStore("redis://127.0.0.1:1/0", tenant=name)
    with pytest.raises(ValueError, match="namespace"):
        RedisStore("redis://127.0.0.1:1/0", namespace=name)


def test_a_tenant_in_the_url_is_checked_too() -> None:
    with pytest.raises(ValueError, match="tenant"):
        open_store("redis://127.0.0.1:1/0?tenant=acme%0A")
    store = open_store("redis://127.0.0.1:1/0?tenant=acme.prod-1_a")
    assert isinstance(store, RedisStore) and store.tenant == "acme.prod-1_a"
