"""LangChain's standard chat-model tests (``langchain-tests``) on ChatRagCompress, over a tiny
seeded Llama with the packaged tokenizer (no hub, no GPU).

Switched off, by the suite's documented properties only, is what this model does not do:
tool calling and structured output (see the reasons below). Image, audio, PDF and JSON-mode
inputs are off by the suite's defaults, which already match: the reader reads text only.
"""

from __future__ import annotations

import inspect
from functools import cache
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_ragcompress import ChatRagCompress
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from ragcompress.generate import Generator


@cache
def tiny_generator() -> Generator:
    from ragcompress.models.load import load_tokenizer
    from tests.support.tiny import make_tiny_llama

    tok = load_tokenizer()
    return Generator.from_model(make_tiny_llama(len(tok), seed=0), tok)


class _Settings:
    @property
    def chat_model_class(self) -> type[BaseChatModel]:
        return ChatRagCompress

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"generator": tiny_generator()}

    @property
    def has_tool_calling(self) -> bool:
        # The reader (SmolLM2-135M and the tiny test model) has no tool-call format to parse.
        return False

    @property
    def has_structured_output(self) -> bool:
        # No tool calling, no JSON mode and no constrained decoding: nothing would make the
        # output follow a schema.
        return False

    @property
    def supports_model_override(self) -> bool:
        # One chat model wraps one loaded reader; a per-call model= is refused, not switched.
        return False


class TestChatRagCompressUnit(_Settings, ChatModelUnitTests):
    pass


class TestChatRagCompressIntegration(_Settings, ChatModelIntegrationTests):
    pass


# The suite's async cases are coroutines: run them with pytest-asyncio (which langchain-tests
# installs), marking only those, without switching the whole project to asyncio_mode = "auto".
for _name, _test in inspect.getmembers(TestChatRagCompressIntegration, inspect.iscoroutinefunction):
    if _name.startswith("test_"):
        setattr(TestChatRagCompressIntegration, _name, pytest.mark.asyncio(_test))
