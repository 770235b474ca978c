"""LangChain's standard chat model tests (langchain-tests) against a real ragtune server: the
real embedded generator (SmolLM2-135M-Instruct) behind uvicorn on loopback, driven by
langchain-openai's `ChatOpenAI`. Tool calls come from constrained decoding (platform/tools.py),
so a forced call always parses; whether the model picks the right arguments, or calls a tool at
all when it may answer in text, is the model's own doing. The slowest file of the suite's kind
(~45 requests to the real model, the structured-output ones ~60 tokens each: minutes, not
seconds, on 2 cores)."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_openai import ChatOpenAI
from langchain_tests.integration_tests import ChatModelIntegrationTests

from ragtune.generate.engine import Engine
from ragtune.platform.settings import DEFAULT_GENERATOR, Settings
from ragtune.serve.app import create_app
from tests.serve_helpers import Server, make_adapter

pytestmark = pytest.mark.integration

SERVER: dict[str, Any] = {}


@pytest.fixture(scope="module", autouse=True)
def real_server(tmp_path_factory, imported_generator):
    """One server for the module on the imported SmolLM2, and an identity adapter `same` (LoRA
    with B = 0) so that a call-time `model` override has another model to name."""
    root = tmp_path_factory.mktemp("lc-standard")
    models = root / "home" / "models"
    models.mkdir(parents=True)
    (models / imported_generator.name).symlink_to(imported_generator)
    settings = Settings(home=root / "home")
    make_adapter(settings, imported_generator, "same", 0, root, identity=True)
    engine = Engine(settings, max_batch=4, queue_size=16)
    with pytest.warns(UserWarning, match="no API keys"):
        app = create_app(settings, engine)
    with Server(app) as server:
        SERVER["url"] = server.url
        yield server
    engine.close()


# max_tokens by test, for speed: a text answer needs few tokens to be checked; a tool call needs
# room for its whole `<tool_call>{...}</tool_call>`; a JSON answer the most (a call or a JSON answer
# cut by the budget is closed early and ends with finish_reason "length": no tool call, and the
# openai SDK's structured-output parse refuses it)
TEXT, TOOL_CALL, WHOLE_JSON = 16, 48, 100  # 100: the suite's own max_tokens


def budget(test: str) -> int:
    if test.startswith(("test_structured_output", "test_json_mode")):
        return WHOLE_JSON
    if "tool" in test or test.startswith(("test_agent_loop", "test_structured_few_shot")):
        return TOOL_CALL
    return TEXT


# what SmolLM2-135M does not do, at temperature 0 (deterministic): each seen, the server's part
# checked (the calls and JSON it returns are well formed; finish_reason says "length" when true)
MODEL_LIMITS = {
    "test_agent_loop": "with tool_choice auto the model answers the weather question in text "
                       "(an invented forecast) instead of calling get_weather",
    "test_json_mode": "JSON mode holds the answer to JSON, not to keys: the model writes only "
                      "\"setup\", though the prompt asks for setup and punchline",
    "test_structured_output_optional_param": "on 'Give me the setup to a joke about cats, no "
                      "punchline.' the model repeats a sentence inside the punchline string until "
                      "max_tokens: finish_reason length, which the openai SDK's parse refuses",
    "test_unicode_tool_call_integration": "the forced call to unicode_customer is well formed, "
                      "but for the Japanese name the model writes customer_name \"\"",
}


class TestRagtuneChatOpenAI(ChatModelIntegrationTests):
    @pytest.fixture(autouse=True)
    def _model_limits(self, request: Any) -> None:
        reason = MODEL_LIMITS.get(request.node.originalname)
        if reason:
            # not strict: greedy decoding on another CPU may break a near-tie the other way
            request.applymarker(pytest.mark.xfail(reason=f"SmolLM2-135M: {reason}", strict=False))

    @property
    def chat_model_class(self) -> type[ChatOpenAI]:
        return ChatOpenAI

    @property
    def chat_model_params(self) -> dict[str, Any]:
        # stream_usage: langchain-openai asks for usage in streams only from api.openai.com
        # unless told; ragtune sends it (stream_options.include_usage)
        return {"base_url": SERVER["url"] + "/v1", "api_key": "unused", "model": DEFAULT_GENERATOR,
                "max_tokens": TEXT, "max_retries": 0, "timeout": 120, "stream_usage": True}

    @pytest.fixture
    def model(self, request: Any) -> ChatOpenAI:
        """The suite's fixture, with the budget above by test."""
        return self.chat_model_class(**{**self.standard_chat_model_params, **self.chat_model_params,
                                        "max_tokens": budget(request.node.originalname),
                                        **(getattr(request, "param", None) or {})})

    @property
    def has_tool_calling(self) -> bool:
        return True

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def has_structured_output(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def model_override_value(self) -> str:
        return "same"

    # media: the embedded generator reads text only (the API takes text content parts), and the
    # suite's media tests download their image, audio and PDF from the internet
    @property
    def supports_image_inputs(self) -> bool:
        return False

    @property
    def supports_image_urls(self) -> bool:
        return False

    @property
    def supports_audio_inputs(self) -> bool:
        return False

    @property
    def supports_pdf_inputs(self) -> bool:
        return False

    @property
    def supports_image_tool_message(self) -> bool:
        return False

    @property
    def supports_pdf_tool_message(self) -> bool:
        return False
