"""Request validation: every field typed and range-checked, limits from `ServeConfig`, errors that name the field.

Bodies are validated with `model_validate_json(raw, context=Limits)`, so malformed JSON, a wrong type, a missing or
unknown field and a configured limit all fail the same way: ApiError(400) whose `param` is the field's dotted path
(`messages.0.content`) — the shape the OpenAI API uses, so its clients show the message. Nothing out of range
reaches the engine: a seed is an unsigned 63-bit integer even after the per-choice and per-turn offsets, floats are
finite.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal
from uuid import uuid4

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from medr3.config import ServeConfig
from medr3.data import Question
from medr3.protocol import plain_text

_LETTER = re.compile(r"^[A-J]$")
MAX_SEED = 2**63 - 1  # the engine seeds a 64-bit signed generator: a larger seed fails inside it
RETRY_AFTER_S = 10  # a 503's Retry-After: about what a new engine takes to start on the tiny model
ENGINE_RESTARTING = "the model engine stopped and a new one is starting: retry shortly"


class ApiError(Exception):
    """A request that cannot be served; rendered as `{"error": {message, type, param, code}}` with `status`."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def __reduce__(self):  # rebuilt from its fields when it crosses a Serve handle (serve/app.py), not from args
        return type(self), (self.status, self.message, self.param, self.code)

    def body(self) -> dict:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(RETRY_AFTER_S)} if self.status == 503 else {}

    @classmethod
    def from_failure(cls, err: Exception) -> ApiError:
        """Our failure as the client sees it: a dead engine is a 503 to retry (a new one is starting), the rest a 500
        without internals. vLLM's EngineDeadError is matched by name, so that no vllm is imported here."""
        if type(err).__name__ == "EngineDeadError":
            return cls(503, ENGINE_RESTARTING, None, "engine_unavailable")
        return cls(500, f"internal error ({type(err).__name__})")


@dataclass(frozen=True)
class Limits:
    """The configured request limits validators check against (passed as pydantic validation context)."""

    max_prompt_chars: int
    max_tokens: int
    max_n: int
    max_searches: int

    @classmethod
    def from_config(cls, serve: ServeConfig) -> Limits:
        return cls(serve.max_prompt_chars, serve.max_tokens, serve.max_n, serve.max_searches)


class _Request(BaseModel):
    # strict: "1" is not an int and "true" is not a bool; forbid: a misspelt field is an error, not silently ignored.
    # allow_inf_nan off: JSON's NaN/Infinity extensions are refused, never compared against a range.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


def _limits(info: ValidationInfo) -> Limits:
    return info.context["limits"]


def _check_prompt_size(chars: int, limits: Limits, field: str) -> None:
    if chars > limits.max_prompt_chars:
        raise ValueError(f"{field} is {chars} characters; this server accepts at most {limits.max_prompt_chars}")


class ChatMessage(_Request):
    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=10_000_000)
    name: str | None = None


class StreamOptions(_Request):
    include_usage: bool = False


class ChatRequest(_Request):
    """OpenAI chat completions. `stop`, `logprobs`, tools and the like are not supported and are refused by name.

    `continue_final_message` (as in vLLM's server): continue the last, assistant message instead of starting a new
    one; a prefill ending in `<search>query</search>` is answered with documents first, as in training.
    """

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    user: str | None = None
    continue_final_message: bool = False

    @field_validator("n")
    @classmethod
    def _n_limit(cls, n: int, info: ValidationInfo) -> int:
        if n > _limits(info).max_n:
            raise ValueError(f"at most {_limits(info).max_n} choices per request")
        return n

    @field_validator("seed")
    @classmethod
    def _seed_room(cls, seed: int | None, info: ValidationInfo) -> int | None:
        # Choice i, turn t samples with seed + i + t (serve/app.py, serve/chat.py): each must stay a valid seed.
        offsets = info.data.get("n", 1) - 1 + _limits(info).max_searches
        if seed is not None and seed + offsets > MAX_SEED:
            raise ValueError(f"must be at most {MAX_SEED - offsets} with this n (seed + choice + turn <= 2**63-1)")
        return seed

    @field_validator("max_tokens", "max_completion_tokens")
    @classmethod
    def _token_limit(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and value > _limits(info).max_tokens:
            raise ValueError(f"at most {_limits(info).max_tokens} tokens per response on this server")
        return value

    @field_validator("messages")
    @classmethod
    def _prompt_size(cls, messages: list[ChatMessage], info: ValidationInfo) -> list[ChatMessage]:
        if not any(m.content.strip() for m in messages):
            raise ValueError("the prompt is empty: every message's content is blank")
        _check_prompt_size(sum(len(m.content) for m in messages), _limits(info), "the prompt")
        return messages

    @field_validator("continue_final_message")
    @classmethod
    def _prefill_is_assistant(cls, value: bool, info: ValidationInfo) -> bool:
        messages = info.data.get("messages")  # absent when messages itself failed
        if value and messages and messages[-1].role != "assistant":
            raise ValueError("needs the last message to be the assistant's")
        if value and messages and not messages[-1].content.strip():
            raise ValueError("needs a non-blank assistant message to continue")
        return value

    @property
    def response_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class AnswerRequest(_Request):
    """A medical question for the full Med-R³ protocol: reasoning, searches, answer."""

    question: str = Field(min_length=1)
    options: dict[str, str] | None = None
    max_searches: int | None = Field(None, ge=0)

    @field_validator("question")
    @classmethod
    def _question(cls, question: str, info: ValidationInfo) -> str:
        if not question.strip():
            raise ValueError("the question is blank")
        _check_prompt_size(len(question), _limits(info), "the question")
        return question.strip()

    @field_validator("options")
    @classmethod
    def _options(cls, options: dict[str, str] | None, info: ValidationInfo) -> dict[str, str] | None:
        if options is None:
            return None
        if len(options) < 2:
            raise ValueError("give at least two options, or none for an open question")
        bad = [k for k in options if not _LETTER.match(k)]
        if bad:
            raise ValueError(f"option keys must be single letters A-J, got {bad}")
        if any(not v.strip() for v in options.values()):
            raise ValueError("option texts must not be blank")
        _check_prompt_size(sum(map(len, options.values())), _limits(info), "the options")
        return {k: v.strip() for k, v in sorted(options.items())}

    @field_validator("max_searches")
    @classmethod
    def _searches(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and value > _limits(info).max_searches:
            raise ValueError(f"at most {_limits(info).max_searches} searches on this server")
        return value

    def to_question(self, tokenizer) -> Question:
        """The request as a Question of plain text (`medr3.protocol.plain_text`): no special token, no protocol
        tag; an option is one line, so it cannot forge the next. Raises ApiError(400) when nothing is left."""
        question = plain_text(self.question, tokenizer).strip()
        options = {k: " ".join(plain_text(v, tokenizer).split()) for k, v in (self.options or {}).items()}
        for field, text in [("question", question), *((f"options.{k}", v) for k, v in options.items())]:
            if not text:
                raise ApiError(400, f"{field}: nothing is left once protocol tags are removed", field, "invalid_value")
        return Question(f"req-{uuid4().hex}", question, options, None, "")


def parse_request(model: type[_Request], raw: bytes, limits: Limits) -> _Request:
    """Validate a JSON body into `model`, or raise ApiError(400) naming the first bad field."""
    try:
        return model.model_validate_json(raw or b"", context={"limits": limits})
    except ValidationError as err:
        raise _to_api_error(err) from None


def _to_api_error(err: ValidationError) -> ApiError:
    problems = []
    for e in err.errors(include_url=False):
        field = ".".join(str(p) for p in e["loc"]) or "body"
        if e["type"] == "json_invalid":
            problems.append(("body", f"body is not valid JSON ({e['ctx'].get('error', 'parse error')})"))
        elif e["type"] == "extra_forbidden":
            problems.append((field, f"{field}: unknown or unsupported field"))
        else:
            problems.append((field, f"{field}: {e['msg'].removeprefix('Value error, ')}"))
    message = "; ".join(m for _, m in problems[:3]) + (f" (and {len(problems) - 3} more)" if len(problems) > 3 else "")
    return ApiError(400, message, problems[0][0], "invalid_value")
