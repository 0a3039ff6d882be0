"""Turns chat turns and plain text into token ids with the model's own tokenizer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from inference_service.engine.types import ChatTurn
from inference_service.errors import InvalidArgumentError

# OpenAI's newer "developer" role means what chat templates call "system".
_ROLE_ALIASES = {"developer": "system"}
_KNOWN_ROLES = frozenset({"system", "user", "assistant", "tool"})


def render_chat(tokenizer: Any, turns: Sequence[ChatTurn]) -> list[int]:
    """Token ids of `turns` in the chat template, ending with the assistant's cue."""
    if not turns:
        raise InvalidArgumentError(
            "'messages' must contain at least one message.", param="messages"
        )
    messages = []
    for index, turn in enumerate(turns):
        role = _ROLE_ALIASES.get(turn.role, turn.role)
        if role not in _KNOWN_ROLES:
            raise InvalidArgumentError(
                f"messages[{index}].role is {turn.role!r}; expected one of "
                "'system', 'developer', 'user', 'assistant' or 'tool'.",
                param="messages",
            )
        messages.append({"role": role, "content": turn.content})
    if not getattr(tokenizer, "chat_template", None):
        raise InvalidArgumentError(
            "This model has no chat template; send a plain prompt to the completions "
            "endpoint instead.",
            param="messages",
        )
    # Rendered to text first: with tokenize=True transformers 5 returns a
    # BatchEncoding whose shape depends on other flags. The template already
    # contains the special tokens, so encoding must not add more.
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return list(tokenizer.encode(text, add_special_tokens=False))


def encode_text(tokenizer: Any, text: str, *, add_special_tokens: bool = True) -> list[int]:
    """Token ids of plain text (a completions prompt or an embedding input)."""
    return list(tokenizer.encode(text, add_special_tokens=add_special_tokens))


def decode_tokens(tokenizer: Any, token_ids: Sequence[int]) -> str:
    return tokenizer.decode(list(token_ids), skip_special_tokens=False)
