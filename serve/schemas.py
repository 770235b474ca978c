"""Request bodies, typed: FastAPI validates them (422 in OpenAI's error shape) before any model
work, and they make the OpenAPI schema at /docs. The models are strict (no `"0"` for a number, no
`0` for `false`), so what the schema calls invalid the server refuses; and the error statuses a
route can answer are documented with their body (`ERRORS`, `GENERATION_ERRORS`, `WRITE_ERRORS`)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ragtune.platform.errors import RagtuneError

Mode = Literal["dense", "bm25", "hybrid"]
# every request object keeps the fields it does not have (extra="allow") so that the route can
# refuse them by name with a 400, at any depth, instead of dropping them (Body.unknown_fields)
STRICT = ConfigDict(extra="allow", strict=True)


class Body(BaseModel):
    """A request object (at any depth). `IGNORED`: fields OpenAI clients send that change nothing
    here, accepted and ignored (docs/serve.md); any other field it does not have is refused."""

    model_config = STRICT
    IGNORED: ClassVar[tuple[str, ...]] = ()

    def unknown_fields(self, prefix: str = "") -> list[str]:
        """The fields this object and the objects in it do not have, as paths
        (`messages[0].foo`, `rag.bar`), save the IGNORED ones."""
        # a field sent as null asks for nothing (SDK objects dumped back: `audio: None`)
        out = [prefix + k for k, v in (self.model_extra or {}).items()
               if k not in self.IGNORED and v is not None]
        for name in type(self).model_fields:
            value = getattr(self, name)
            items = enumerate(value) if isinstance(value, list) else [(None, value)]
            for i, v in items:
                if isinstance(v, Body):
                    out += v.unknown_fields(f"{prefix}{name}{'' if i is None else f'[{i}]'}.")
        return out

    def refuse_unknown(self, hint: str = "") -> None:
        """A 400 naming every field this server does not implement."""
        unknown = self.unknown_fields()
        if unknown:
            raise RagtuneError(f"unknown field(s): {', '.join(unknown)}: this server does not "
                               f"implement them{hint}", param=unknown[0])


class ErrorDetail(BaseModel):
    message: str = Field(description="what went wrong and what to do about it")
    type: str = Field(description="invalid_request_error, authentication_error, permission_error, "
                      "not_found_error, rate_limit_error, timeout_error, conflict_error, server_error")
    param: str | None = Field(None, description="the offending field, when one is")
    code: int = Field(description="the HTTP status")


class ErrorResponse(BaseModel):
    """Every error, in OpenAI's shape."""

    error: ErrorDetail


def _error(why: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": why}


# What a route may answer besides its success (FastAPI's `responses=`), for /docs and clients.
ERRORS: dict[int | str, dict[str, Any]] = {
    400: _error("bad input the schema cannot express (a name's characters, a prompt over the "
                "context window, an option this server does not have)"),
    401: _error("no API key, or one this server does not know"),
    403: _error("the key lacks the scope, or may not use this collection or adapter"),
    404: _error("no such model, adapter, collection, document or job"),
    413: _error("the request body is over RAGTUNE_MAX_UPLOAD_MB"),
    422: _error("the request does not match this schema"),
    500: _error("a file of a collection or adapter is damaged (the message names it)"),
    503: _error("the server is shutting down: retry on another replica or once it restarted"),
}
GENERATION_ERRORS: dict[int | str, dict[str, Any]] = {
    429: _error("the generation queue is full: retry after the Retry-After header's seconds"),
    504: _error("the generation took longer than RAGTUNE_REQUEST_TIMEOUT and was cancelled"),
}
WRITE_ERRORS: dict[int | str, dict[str, Any]] = {
    409: _error("another writer holds the collection's lock: retry when it is done"),
    507: _error("the disk is full: nothing was changed"),
}


class TextPart(Body):
    type: Literal["text"]
    text: str




class FunctionCall(Body):
    IGNORED = ("parsed_arguments",)  # the openai SDK's parse helpers add it to a call
    name: str
    arguments: str = Field(description="the arguments, a JSON object in a string")


class ToolCall(Body):
    IGNORED = ("index",)  # a streamed call, assembled by the openai SDK, keeps its index
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(Body):
    IGNORED = ("name", "refusal", "annotations", "parsed")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    tool_calls: list[ToolCall] | None = Field(None, description="an assistant's calls")
    tool_call_id: str | None = Field(None, description="a tool message: the call it answers")

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class FunctionSpec(Body):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = Field(None, description="a JSON Schema (default: none)")
    strict: bool | None = Field(None, description="calls are always held to the schema here")


class ToolSpec(Body):
    type: Literal["function"]
    function: FunctionSpec


class NamedFunction(Body):
    name: str


class NamedToolChoice(Body):
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaSpec(Body):
    model_config = ConfigDict(extra="allow", populate_by_name=True, strict=True)
    name: str = "response"
    description: str | None = None
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None


class ResponseFormat(Body):
    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: JsonSchemaSpec | None = None


class RagSpec(Body):
    """Retrieval for this request (ragtune's extension; the openai SDK sends it via extra_body)."""

    collection: str = Field(min_length=1, max_length=64)
    k: int = Field(5, ge=1, le=50)
    mode: Mode = "dense"
    where: dict[str, str] | None = None


class StreamOptions(Body):
    include_usage: bool = False


class ChatRequest(Body):
    # fields an OpenAI client may send that change nothing here (docs/serve.md)
    IGNORED = ("metadata", "service_tier", "prompt_cache_key", "safety_identifier")
    model_config = ConfigDict(extra="allow", strict=True, json_schema_extra={"examples": [
        {"model": "base", "max_tokens": 16,
         "messages": [{"role": "user", "content": "How much does the Basic plan cost?"}],
         "rag": {"collection": "docs", "k": 2}}]})
    model: str = Field(min_length=1, max_length=200)
    messages: list[Message] = Field(min_length=1, max_length=256)
    temperature: float | None = Field(None, ge=0, le=2, description="default 0 (greedy)")
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(1, ge=1, le=8, description="choices: the same prompt decoded n times in "
                   "one batch (each its own seed: seed, seed+1, ...)")
    stream: bool = False
    store: bool | None = Field(None, description="false: this answer is not recorded (feedback "
                               "cannot refer to it); recorded by default (RAGTUNE_RECORD_ANSWERS)")
    stream_options: StreamOptions | None = None
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    repetition_penalty: float | None = Field(None, gt=0, le=10, description="vLLM's extension")
    response_format: ResponseFormat | None = None
    tools: list[ToolSpec] | None = Field(None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = Field(
        None, description="default: auto with tools, none without")
    parallel_tool_calls: bool | None = Field(None, description="default true")
    logprobs: bool | None = Field(None, description="each token's log-probability, under the "
                                  "model's own distribution (before penalties and grammars)")
    top_logprobs: int | None = Field(None, ge=0, le=20, description="with logprobs: the most "
                                     "likely alternatives per token")
    rag: RagSpec | None = None
    user: str | None = Field(None, description="accepted and ignored")

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> list[str]:
        stops = [v] if isinstance(v, str) else list(v or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop: up to 4 non-empty strings")
        return stops


class EmbeddingsRequest(Body):
    model_config = ConfigDict(extra="allow", strict=True, json_schema_extra={"examples": [
        {"model": "default", "input": ["refund policy", "shipping times"]}]})
    model: str = Field("default", max_length=200)
    input: str | list[str] = Field(description="one text or a list of up to 2048 texts")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = Field(None, description="accepted and ignored")

    @field_validator("input")
    @classmethod
    def _inputs(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and not 1 <= len(v) <= 2048:
            raise ValueError("input: between 1 and 2048 texts")
        return v


class SearchRequest(Body):
    model_config = ConfigDict(extra="allow", strict=True, json_schema_extra={"examples": [
        {"query": "How much does the Basic plan cost?", "k": 3, "mode": "hybrid"}]})
    query: str = Field(min_length=1, max_length=10_000)
    k: int = Field(5, ge=1, le=100)
    mode: Mode = "dense"
    where: dict[str, str] | None = None
