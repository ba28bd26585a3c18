"""A model name that cannot load fails at once, in one line naming the known models, instead of
a minute of hub retries ending in a transformers traceback; names that can load still resolve."""

from __future__ import annotations

from pathlib import Path

import pytest
from huggingface_hub import constants

from ragcompress.models.load import known_models, load_reader, resolve_path


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


@pytest.mark.parametrize("name", ["./no-such-model", "/nowhere/model", "~/no/such/model", "a/b/c"])
def test_a_missing_folder_is_named_with_the_known_models(name: str) -> None:
    with pytest.raises(FileNotFoundError, match="no model folder") as err:
        resolve_path(name)
    assert name in str(err.value) and "smollm2-135m-instruct" in str(err.value)
    assert "qwen2.5-coder-1.5b-instruct" in str(err.value)  # the fetchable ones too


def test_an_uncached_hub_id_offline_fails_at_once(offline: None) -> None:
    with pytest.raises(FileNotFoundError, match=r"unknown model 'org/no-such-model'.*offline"):
        load_reader("org/no-such-model", device="cpu")


def test_known_models_lists_aliases_and_fetch_names() -> None:
    line = known_models()
    assert "all-minilm-l6-v2" in line and "ragcompress models fetch" in line


def test_an_existing_folder_and_a_hub_id_online_resolve_unchanged(tmp_path: Path) -> None:
    assert resolve_path(str(tmp_path)) == str(tmp_path)
    if not constants.HF_HUB_OFFLINE:
        assert resolve_path("org/name") == "org/name"  # users with a hub keep hub ids
