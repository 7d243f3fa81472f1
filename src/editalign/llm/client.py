"""An OpenAI-compatible chat client for bulk revision: concurrency limit, retries, cache.

Works with any server that speaks ``POST {api_base}/chat/completions`` (OpenAI, vLLM,
TGI, llama.cpp, ``transformers serve``). Requests that fail with HTTP 429 or 5xx, time
out, lose their connection or return a body that is not the expected JSON are retried
with exponential back-off and full jitter (a ``Retry-After`` header is honoured);
401/403/404 stop the run at once, because every other request would fail the same way.
Every answer is written to the :class:`~editalign.llm.cache.RequestCache` before it is
used.

Bounds on what a server can do to the client:

- ``timeout`` is a **total deadline per attempt** (connect, send, every byte of the answer),
  not an idle timeout: a server trickling one byte at a time cannot hold a request longer.
- The answer body is read in chunks and abandoned past :meth:`ClientConfig.answer_byte_limit`
  (``max_tokens`` × :data:`ANSWER_BYTES_PER_TOKEN`, at least :data:`MIN_ANSWER_BYTES`), so
  a huge answer costs neither memory nor cache space: the request fails with
  :class:`AnswerTooLarge`.
- Redirects are not followed (the request, with its key, goes only to the given endpoint);
  a 3xx answer stops the run with the status and ``Location``.
- The API key is only ever put into the ``Authorization`` header: it is not part of the
  cache key, and :func:`redact` removes it from every answer and error message before they
  leave the client, so a server that echoes it back cannot get it into the cache, the
  output, the logs or an error message.

The API judge of ``editalign eval winrate`` (``api:URL``) sends its requests through this
client too, so the same bounds hold there.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx

from editalign.llm.cache import RequestCache, request_key

logger = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 425, 429})  # and every 5xx
FATAL_STATUS = frozenset({401, 403, 404})
# Bytes of response body allowed per requested token. A token is ~4 characters of text; JSON
# escaping (\uXXXX), the envelope (ids, usage, logprobs, a reasoning field) can multiply that
# several times, so 256 is a generous ceiling that no honest answer reaches.
ANSWER_BYTES_PER_TOKEN = 256
MIN_ANSWER_BYTES = 64 * 1024
REDACTED = "[REDACTED]"
USAGE_KEYS = ("prompt_tokens", "completion_tokens", "total_tokens")


class RequestFailed(Exception):
    """One request that still failed after all retries (or failed in a way not worth retrying)."""


class FatalRequestError(RuntimeError):
    """An error that every request would hit (bad key, unknown model or endpoint, redirect)."""


class AnswerTooLarge(RequestFailed):
    """The answer body exceeded the byte limit; ``prefix`` is its (redacted) beginning."""

    def __init__(self, message: str, prefix: str = "") -> None:
        super().__init__(message)
        self.prefix = prefix


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` with every secret (and its JSON-escaped form) replaced by ``[REDACTED]``."""
    for secret in secrets:
        if not secret:
            continue
        for form in {secret, json.dumps(secret)[1:-1]}:
            text = text.replace(form, REDACTED)
    return text


@dataclass
class ClientConfig:
    """Where to send requests and how hard to try. ``api_key`` is never printed (``repr=False``)."""

    api_base: str
    model: str
    api_key: str | None = field(default=None, repr=False)
    concurrency: int = 4
    timeout: float = 120.0
    max_retries: int = 5
    backoff_base: float = 1.0
    backoff_max: float = 30.0
    temperature: float = 0.0
    max_tokens: int = 512
    seed: int | None = None
    max_answer_bytes: int | None = None  # None: derived from max_tokens (answer_byte_limit)

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {self.timeout}")
        if not self.api_base.startswith(("http://", "https://")):
            raise ValueError(f"api_base must start with http:// or https://, got {self.api_base!r}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.max_answer_bytes is not None and self.max_answer_bytes < 1:
            raise ValueError(f"max_answer_bytes must be >= 1, got {self.max_answer_bytes}")

    @property
    def answer_byte_limit(self) -> int:
        """Most bytes of response body read for one answer."""
        if self.max_answer_bytes is not None:
            return self.max_answer_bytes
        return max(MIN_ANSWER_BYTES, ANSWER_BYTES_PER_TOKEN * self.max_tokens)

    @property
    def url(self) -> str:
        return self.api_base.rstrip("/") + "/chat/completions"

    def sampling(self) -> dict[str, Any]:
        params: dict[str, Any] = {"temperature": self.temperature, "max_tokens": self.max_tokens}
        if self.seed is not None:
            params["seed"] = self.seed
        return params


@dataclass
class Completion:
    """One answer: the text, why generation stopped, and whether it came from the cache."""

    text: str
    finish_reason: str | None
    cached: bool
    attempts: int = 0
    usage: dict[str, Any] = field(default_factory=dict)
    model: str | None = None  # the model the server says answered (None: not said)


@dataclass
class ClientStats:
    """Counts for the final summary."""

    requests: int = 0
    cache_hits: int = 0
    answered: int = 0
    failed: int = 0
    too_large: int = 0
    retries: collections.Counter[str] = field(default_factory=collections.Counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"requests_sent": self.requests, "cache_hits": self.cache_hits,
                "answered": self.answered, "failed": self.failed, "too_large": self.too_large,
                "retries": dict(self.retries), "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens}


class _Retryable(Exception):
    def __init__(self, cause: str, retry_after: float | None = None) -> None:
        super().__init__(cause)
        self.cause, self.retry_after = cause, retry_after


def _retry_after(headers: httpx.Headers) -> float | None:
    value = headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def parse_answer(body: bytes) -> dict[str, Any]:
    """``{"text", "finish_reason", "usage", "model"}`` from a chat-completions response body.

    Raises ``ValueError`` when the body is not JSON of that shape (a truncated or garbled
    response), which the client treats as retryable.
    """
    try:
        data = json.loads(body)
        choice = data["choices"][0]
        message = choice["message"]
        content = message.get("content")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as err:
        raise ValueError(f"malformed response ({type(err).__name__})") from None
    if content is not None and not isinstance(content, str):
        raise ValueError("malformed response (content is not text)")
    try:
        (content or "").encode("utf-8")
    except UnicodeEncodeError:  # an unpaired surrogate escaped in the JSON: no file takes it
        raise ValueError("malformed response (content is not valid Unicode)") from None
    # Only what is used, in the types it is used as: the rest of a server's answer is never
    # stored (a huge or hostile usage object would otherwise reach the cache).
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    usage = {key: value for key, value in usage.items()
             if key in USAGE_KEYS and type(value) is int and value >= 0}
    finish = choice.get("finish_reason") if isinstance(choice, dict) else None
    finish = finish[:64] if isinstance(finish, str) else None
    # The model that answered, as the server names it (it may differ from the one asked for).
    served = data.get("model") if isinstance(data.get("model"), str) else None
    return {"text": content or "", "finish_reason": finish, "usage": usage,
            **({"model": served[:200]} if served else {})}


class ChatClient:
    """Async chat client; use as ``async with ChatClient(config, cache) as client``."""

    def __init__(self, config: ClientConfig, cache: RequestCache | None = None, *,
                 stats: ClientStats | None = None, rng: random.Random | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.config, self.cache = config, cache
        self.stats = stats or ClientStats()
        self._rng = rng or random.Random()
        self._semaphore = asyncio.Semaphore(config.concurrency)
        headers = {"content-type": "application/json"}
        if config.api_key:
            headers["authorization"] = f"Bearer {config.api_key}"
        self._http = httpx.AsyncClient(
            headers=headers, transport=transport, follow_redirects=False,
            timeout=httpx.Timeout(config.timeout, connect=min(config.timeout, 10.0)),
            limits=httpx.Limits(max_connections=config.concurrency))

    async def __aenter__(self) -> ChatClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._http.aclose()

    def key(self, messages: list[dict[str, str]]) -> str:
        return request_key(self.config.api_base, self.config.model, messages,
                           self.config.sampling())

    def backoff(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry ``attempt`` (1-based): full jitter, capped."""
        ceiling = min(self.config.backoff_max, self.config.backoff_base * 2 ** (attempt - 1))
        delay = self._rng.uniform(0, ceiling)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.config.backoff_max))
        return delay

    async def complete(self, messages: list[dict[str, str]]) -> Completion:
        """The answer to ``messages``: from the cache, else from the server (then cached)."""
        key = self.key(messages)
        if self.cache is not None and (hit := self.cache.get(key)) is not None:
            self.stats.cache_hits += 1
            return Completion(hit["text"], hit.get("finish_reason"), cached=True,
                              usage=hit.get("usage") or {}, model=hit.get("model"))
        payload = {"model": self.config.model, "messages": messages, **self.config.sampling(),
                   "stream": False}
        attempt = 0
        while True:
            attempt += 1
            try:
                async with self._semaphore:
                    answer = await self._post(payload)
            except AnswerTooLarge:
                self.stats.too_large += 1
                raise
            except RequestFailed:
                self.stats.failed += 1
                raise
            except _Retryable as err:
                if attempt > self.config.max_retries:
                    self.stats.failed += 1
                    raise RequestFailed(f"{err.cause} (gave up after {attempt} attempts)") from None
                self.stats.retries[err.cause] += 1
                delay = self.backoff(attempt, err.retry_after)
                logger.debug("retrying after %s in %.1f s (attempt %d)", err.cause, delay, attempt)
                await asyncio.sleep(delay)
                continue
            break
        if self.cache is not None:
            self.cache.put(key, answer)
        self.stats.answered += 1
        usage = answer["usage"]
        self.stats.prompt_tokens += int(usage.get("prompt_tokens") or 0)
        self.stats.completion_tokens += int(usage.get("completion_tokens") or 0)
        return Completion(answer["text"], answer["finish_reason"], cached=False,
                          attempts=attempt, usage=usage, model=answer.get("model"))

    def _redact(self, text: str) -> str:
        return redact(text, [self.config.api_key])

    async def _post(self, payload: dict[str, Any]) -> dict[str, Any]:
        """One attempt; everything that leaves here (answer text, error messages) is redacted."""
        self.stats.requests += 1
        try:
            answer = await self._attempt(payload)
        except (_Retryable, RequestFailed, FatalRequestError) as err:
            err.args = tuple(self._redact(a) if isinstance(a, str) else a for a in err.args)
            for name in ("cause", "prefix"):
                if isinstance(value := getattr(err, name, None), str):
                    setattr(err, name, self._redact(value))
            raise
        answer["text"] = self._redact(answer["text"])
        for key in ("finish_reason", "model"):
            if answer.get(key) is not None:
                answer[key] = self._redact(answer[key])
        return answer

    async def _attempt(self, payload: dict[str, Any]) -> dict[str, Any]:
        try:
            # A total deadline, not httpx's per-read timeout: a server that sends a byte
            # just often enough would otherwise hold the request forever.
            async with asyncio.timeout(self.config.timeout):
                status, headers, body = await self._exchange(payload)
        except (TimeoutError, httpx.TimeoutException):
            raise _Retryable("timeout") from None
        except httpx.TransportError as err:
            raise _Retryable(f"connection error ({type(err).__name__})") from None
        if 300 <= status < 400:
            location = headers.get("location")
            raise FatalRequestError(
                f"{self.config.url} answered HTTP {status} (a redirect"
                + (f" to {location}" if location else ", no Location header")
                + "); redirects are not followed, so that the request and its API key go only "
                "to the given endpoint: use the final URL as the API base")
        if status in FATAL_STATUS:
            raise FatalRequestError(
                f"{self.config.url} answered HTTP {status}"
                + (" (check the API key)" if status in (401, 403) else
                   f" (check --api-base and that the server knows model {self.config.model!r})"))
        if status in RETRY_STATUS or status >= 500:
            raise _Retryable(f"http {status}", _retry_after(headers))
        if status >= 400:
            snippet = self._redact(body.decode("utf-8", "replace"))[:200]
            raise RequestFailed(f"HTTP {status}: {snippet}")
        try:
            return parse_answer(body)
        except ValueError as err:
            raise _Retryable(str(err)) from None

    async def _exchange(self, payload: dict[str, Any]) -> tuple[int, httpx.Headers, bytes]:
        """Status, headers and body, reading at most the answer byte limit."""
        limit = self.config.answer_byte_limit
        async with self._http.stream("POST", self.config.url, json=payload) as response:
            status, headers = response.status_code, response.headers
            if 300 <= status < 400:
                return status, headers, b""
            declared = headers.get("content-length", "")
            if declared.isdigit() and int(declared) > limit and status < 300:
                raise self._too_large(limit, f"the server announced {int(declared)} bytes", b"")
            chunks, size = [], 0
            async for chunk in response.aiter_bytes():
                chunks.append(chunk)
                size += len(chunk)
                if size > limit and status < 300:
                    raise self._too_large(limit, f"more than {limit} bytes", b"".join(chunks))
                if size > limit:
                    break  # an error's body: its beginning is all the message needs
        return status, headers, b"".join(chunks)

    def _too_large(self, limit: int, what: str, head: bytes) -> AnswerTooLarge:
        derived = ("" if self.config.max_answer_bytes is not None else
                   f"; the limit is {ANSWER_BYTES_PER_TOKEN} bytes per --max-tokens token "
                   f"({self.config.max_tokens}), at least {MIN_ANSWER_BYTES}")
        # Redact before cutting, so a key straddling the cut cannot leave a readable part.
        prefix = self._redact(head[:4096].decode("utf-8", "replace"))[:200]
        return AnswerTooLarge(f"answer too large ({what}, limit {limit} bytes{derived}); "
                              "not read further, not cached", prefix)
