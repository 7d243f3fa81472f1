"""Create minimal edits with an LLM: prompt templates, filters, the revising loop.

See docs/revise.md. The command is ``editalign revise``; the pieces are usable alone:
:func:`load_template`, the filters and :func:`revise_pairs`. The client that sends the
requests (:class:`~editalign.llm.client.ChatClient`, any OpenAI-compatible endpoint) and its
request cache (:class:`~editalign.llm.cache.RequestCache`) live in :mod:`editalign.llm`,
which the API judge shares.
"""

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
    "Decision",
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
    "revise_pairs",
    "revise_pairs_async",
    "reward_filter",
    "shipped_templates",
]
