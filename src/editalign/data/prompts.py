"""Prompt rendering and the one prompt/response boundary rule.

The sequence ``prompt_text + response`` is tokenized in one call, as the model will read it
in training, and a token belongs to the response as soon as its character span ends after
the prompt's last character. A token that a tokenizer merges *across* the boundary
therefore belongs to the response (it is predicted from the prompt and carries response
text), and the two sides of an edit pair may then differ in their last prompt token; this
is why each labelled side keeps its own ``response_start``.

Labelling (:mod:`editalign.data.labeling`), the benchmark's initial policy and the reward
model judge all encode through here, so a model reads a prompt the same way everywhere.
"""

from __future__ import annotations

from typing import Any, Literal

ChatTemplateMode = Literal["auto", "always", "never"]
CHAT_TEMPLATE_MODES = ("auto", "always", "never")


def render_prompt(prompt: str | list[dict[str, str]], tokenizer: Any,
                  mode: ChatTemplateMode = "auto") -> tuple[str, bool]:
    """The prompt as text, and whether the tokenizer should add its special tokens.

    A chat template already writes the special tokens (BOS, role markers) into the text, so
    tokenizing its output must not add them a second time.
    """
    has_template = getattr(tokenizer, "chat_template", None) is not None
    if isinstance(prompt, str):
        if mode == "always" and has_template:
            prompt = [{"role": "user", "content": prompt}]
        else:
            return prompt, True
    if mode != "never" and has_template:
        text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        return text, False
    lines = [f"{m['role']}: {m['content']}" for m in prompt]
    return "\n".join(lines) + "\nassistant: ", True


def split_response(
    encoding: Any, prompt_len: int, eos_id: int
) -> tuple[list[int], int, list[tuple[int, int]]]:
    """Ids of ``prompt_text + response`` plus EOS, where the response starts (the boundary
    rule above), and each response token's character span within the response (EOS: (0, 0)).

    ``encoding`` holds ``input_ids`` and ``offset_mapping`` of the text; ``prompt_len`` is
    the rendered prompt's length in characters.
    """
    ids: list[int] = list(encoding["input_ids"])
    offsets: list[tuple[int, int]] = [tuple(o) for o in encoding["offset_mapping"]]
    start = next((t for t, (_, end) in enumerate(offsets) if end > prompt_len), len(ids))
    response_offsets = [(max(s, prompt_len) - prompt_len, e - prompt_len)
                        for s, e in offsets[start:]]
    return [*ids, eos_id], start, [*response_offsets, (0, 0)]


def encode_example(tokenizer: Any, prompt: str | list[dict[str, str]], response: str,
                   max_length: int | None = None) -> tuple[list[int], int]:
    """Token ids of prompt + response + EOS (the prompt in the chat template when there is
    one, as ``editalign label`` renders it) and where the response starts; cut to
    ``max_length`` tokens when longer."""
    text, add_special = render_prompt(prompt, tokenizer, "auto")
    enc = tokenizer(text + response, add_special_tokens=add_special, return_offsets_mapping=True)
    ids, start, _ = split_response(enc, len(text), tokenizer.eos_token_id)
    if max_length and len(ids) > max_length:
        ids = ids[:max_length]
    return ids, start
