"""Prompt templates for the reviser: plain text files the user can replace.

A template file has an optional comment header (lines starting with ``#`` before the
first section) and two sections, ``[system]`` (optional) and ``[user]``, each running to
the next section header. Placeholders are ``{{prompt}}``, ``{{response}}`` and
``{{reference}}``; they are substituted in one pass, so text inside the data that happens
to look like a placeholder is never expanded. A template that uses ``{{reference}}``
needs a reference answer for each row (SPA's revisions were made this way).

``--template NAME`` picks a shipped template (``minimal``, ``minimal-reference``,
``strict``); ``--template path/to/file.txt`` reads the user's own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from editalign.data.pairs import EditPair

PLACEHOLDERS = ("prompt", "response", "reference")
_PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")
_SECTION = re.compile(r"^\[(system|user)\]\s*$", re.MULTILINE)


class TemplateError(ValueError):
    """A template file that cannot be used (unknown placeholder, no [user] section)."""


@dataclass(frozen=True)
class Template:
    """A parsed template: ``name`` (file stem or shipped name), ``system`` and ``user`` text."""

    name: str
    system: str
    user: str

    @property
    def needs_reference(self) -> bool:
        return any(m.group(1) == "reference" for m in _PLACEHOLDER.finditer(self.system + self.user))

    def render(self, prompt: str, response: str, reference: str | None = None) -> list[dict[str, str]]:
        """Chat messages for one row."""
        values = {"prompt": prompt, "response": response, "reference": reference or ""}
        messages = []
        if self.system:
            messages.append({"role": "system", "content": _fill(self.system, values)})
        messages.append({"role": "user", "content": _fill(self.user, values)})
        return messages


def _fill(text: str, values: dict[str, str]) -> str:
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


def shipped_templates() -> list[str]:
    """Names of the templates shipped with editalign."""
    folder = resources.files("editalign.revise") / "prompts"
    return sorted(p.name.removesuffix(".txt") for p in folder.iterdir() if p.name.endswith(".txt"))


def parse_template(text: str, name: str) -> Template:
    """Parse template text; raises :class:`TemplateError` naming the template."""
    parts = _SECTION.split(text)
    header, sections = parts[0], parts[1:]
    if any(line.strip() and not line.lstrip().startswith("#") for line in header.splitlines()):
        raise TemplateError(f"template {name!r}: text before the first [system]/[user] section "
                            "(only '#' comment lines may come first)")
    found: dict[str, str] = {}
    for role, body in zip(sections[::2], sections[1::2], strict=True):
        if role in found:
            raise TemplateError(f"template {name!r}: section [{role}] appears twice")
        found[role] = body.strip("\n")
    if not found.get("user", "").strip():
        raise TemplateError(f"template {name!r}: needs a non-empty [user] section")
    for match in _PLACEHOLDER.finditer(text):
        if match.group(1) not in PLACEHOLDERS:
            raise TemplateError(f"template {name!r}: unknown placeholder {match.group(0)!r}; "
                                f"allowed: {', '.join('{{' + p + '}}' for p in PLACEHOLDERS)}")
    if "{{response}}" not in found["user"].replace(" ", "") + found.get("system", "").replace(" ", ""):
        raise TemplateError(f"template {name!r}: never shows the response ({{{{response}}}})")
    return Template(name=name, system=found.get("system", "").strip(), user=found["user"].strip())


def load_template(name_or_path: str) -> Template:
    """A shipped template by name, or a template file by path."""
    path = Path(name_or_path)
    if path.suffix == ".txt" or path.exists() or "/" in name_or_path:
        if not path.is_file():
            raise FileNotFoundError(f"template file {name_or_path} not found")
        return parse_template(path.read_text(encoding="utf-8"), path.stem)
    if name_or_path not in shipped_templates():
        raise TemplateError(f"unknown template {name_or_path!r}: shipped templates are "
                            f"{', '.join(shipped_templates())}; or pass a path to a .txt file")
    text = (resources.files("editalign.revise") / "prompts" / f"{name_or_path}.txt").read_text(
        encoding="utf-8")
    return parse_template(text, name_or_path)


def prompt_text(pair: EditPair) -> str:
    """The pair's prompt as text: chat prompts become ``role: content`` lines."""
    if isinstance(pair.prompt, str):
        return pair.prompt
    return "\n".join(f"{m['role']}: {m['content']}" for m in pair.prompt)


def reference_of(pair: EditPair) -> str | None:
    """The reference answer for reference templates.

    ``meta["reference"]`` when the data has one (the ``spa`` preset keeps Alpaca's
    ``output`` there); otherwise the input's own ``revised`` text when it differs from the
    original (for ``preference`` data: the chosen reply). None when there is neither.
    """
    reference = pair.meta.get("reference")
    if isinstance(reference, str) and reference.strip():
        return reference
    return pair.revised if pair.revised.strip() and pair.revised != pair.original else None
