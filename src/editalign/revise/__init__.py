"""Create minimal edits with an LLM: client, prompt templates, filters, request cache.

See docs/revise.md. The command is ``editalign revise``; the pieces are usable alone:
:class:`ChatClient` (any OpenAI-compatible endpoint), :class:`RequestCache`,
:func:`load_template`, the filters and :func:`revise_pairs`.
"""

from editalign.llm.cache import RequestCache, request_key
from editalign.llm.client import (
    AnswerTooLarge,
    ChatClient,
    ClientConfig,
    ClientStats,
    Completion,
    FatalRequestError,
    RequestFailed,
    redact,
)
from editalign.revise.filters import (
    Decision,
    Scorer,
    check_completion,
    check_edit_ratio,
    clean_completion,
    edit_ratio,
    reward_filter,
)
from editalign.revise.prompts import Template, TemplateError, load_template, shipped_templates
from editalign.revise.reviser import ReviseOptions, ReviseResult, revise_pairs, revise_pairs_async

__all__ = [
    "AnswerTooLarge",
    "ChatClient",
    "ClientConfig",
    "ClientStats",
    "Completion",
    "Decision",
    "FatalRequestError",
    "RequestCache",
    "RequestFailed",
    "ReviseOptions",
    "ReviseResult",
    "Scorer",
    "Template",
    "TemplateError",
    "check_completion",
    "check_edit_ratio",
    "clean_completion",
    "edit_ratio",
    "load_template",
    "redact",
    "request_key",
    "revise_pairs",
    "revise_pairs_async",
    "reward_filter",
    "shipped_templates",
]
