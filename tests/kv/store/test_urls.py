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


def test_an_unknown_query_parameter_is_refused_when_opened_listing_the_accepted() -> None:
    # It used to reach redis-py, which failed only at the first request, far from the cause.
    for url in (f"redis://127.0.0.1:1/0?secret={SECRET}", f"rediss://127.0.0.1:1/0?tenant=a&secret={SECRET}"):
        with pytest.raises(ValueError, match="unknown query parameter") as err:
            open_store(url)
        message = str(err.value)
        assert SECRET not in message
        assert "secret=" in message and "RAGCOMPRESS_STORE_SECRET" in message  # where it does go
        for accepted in ("tenant", "namespace", "ttl_s", "max_bytes", "socket_timeout", "db"):
            assert accepted in message.split("accepted: ")[1]
    with pytest.raises(ValueError, match=r"tenantt.*accepted: .*tenant"):
        open_store("redis://127.0.0.1:1/0?tenantt=acme")
    # TLS options only where there is TLS: a plain connection would reject them at first use
    with pytest.raises(ValueError, match="ssl_ca_certs"):
        open_store("redis://127.0.0.1:1/0?ssl_ca_certs=/etc/ca.pem")
    with pytest.raises(ValueError, match="accepted: max_bytes"):
        open_store("memory://?max_byte=10")


def test_accepted_query_parameters_reach_the_connection() -> None:
    store = open_store("redis://127.0.0.1:1/0?socket_timeout=0.5&tenant=acme&client_name=idx")
    assert isinstance(store, RedisStore) and store.tenant == "acme"
    kwargs = store.pool.connection_kwargs
    assert kwargs["socket_timeout"] == 0.5 and kwargs["client_name"] == "idx" and "tenant" not in kwargs
    tls = open_store("rediss://127.0.0.1:1/0?ssl_cert_reqs=none&ssl_ca_certs=/etc/ca.pem")
    assert isinstance(tls, RedisStore) and tls.pool.connection_kwargs["ssl_ca_certs"] == "/etc/ca.pem"


def test_the_spec_checks_the_redis_query_when_written() -> None:
    from ragcompress.kv.store.spec import StoreSpec
    from ragcompress.pipeline import PipelineError
    from ragcompress.pipeline.spec import parse_spec

    with pytest.raises(ValueError, match=r"redis_url: .*unknown query parameter"):
        StoreSpec(redis_url=f"redis://127.0.0.1:1/0?secret={SECRET}")
    with pytest.raises(PipelineError, match=r"kv\.store: store URL .*unknown query parameter") as err:
        parse_spec({"kv": {"store": f"redis://127.0.0.1:1/0?secret={SECRET}"}})
    assert SECRET not in str(err.value)


@pytest.mark.parametrize("form", ["{p}", "file://{p}"])
def test_a_tenant_for_a_disk_store_is_refused_not_ignored(form: str, tmp_path: Path) -> None:
    # A tenant used to be dropped silently: two tenants would have shared one directory.
    target = tmp_path / "chunks"
    with pytest.raises(ValueError, match=r"tenant 'acme'.*directory of its own") as err:
        open_store(form.format(p=target), tenant="acme")
    assert str(target / "acme") in str(err.value)  # the way out, spelled for this store
    assert not target.exists()  # refused before anything was created
    open_store(str(target / "acme"))  # the way out works


def test_a_tenant_for_a_memory_store_is_refused() -> None:
    with pytest.raises(ValueError, match=r"tenant 'acme'.*memory store"):
        open_store("memory://", tenant="acme")
    with pytest.raises(ValueError, match="tenant"):
        open_store("memory://?tenant=acme")  # not a memory store's parameter either
