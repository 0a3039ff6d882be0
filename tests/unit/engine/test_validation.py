"""Request checks: errors name the OpenAI field and the valid range."""

from __future__ import annotations

import pytest

from inference_service.engine.types import SamplingOptions
from inference_service.engine.validation import fit_context, validate_prompt, validate_sampling
from inference_service.errors import ContextLengthExceededError, InvalidArgumentError


@pytest.mark.parametrize(
    ("options", "param", "words"),
    [
        (SamplingOptions(temperature=2.5), "temperature", "between 0 and 2"),
        (SamplingOptions(temperature=-0.1), "temperature", "between 0 and 2"),
        (SamplingOptions(temperature=float("nan")), "temperature", "between 0 and 2"),
        (SamplingOptions(top_p=0.0), "top_p", "greater than 0"),
        (SamplingOptions(top_p=1.5), "top_p", "at most 1"),
        (SamplingOptions(logprobs=True, top_logprobs=21), "top_logprobs", "between 0 and 20"),
        (SamplingOptions(top_logprobs=2), "top_logprobs", "requires logprobs"),
        (SamplingOptions(stop=("a", "b", "c", "d", "e")), "stop", "at most 4"),
        (SamplingOptions(stop=("",)), "stop", "empty"),
        (SamplingOptions(frequency_penalty=2.1), "frequency_penalty", "between -2 and 2"),
        (SamplingOptions(presence_penalty=-3), "presence_penalty", "between -2 and 2"),
        (SamplingOptions(max_tokens=0), "max_tokens", "at least 1"),
    ],
)
def test_bad_option_names_its_field(options: SamplingOptions, param: str, words: str) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        validate_sampling(options)
    assert caught.value.param == param
    assert words in caught.value.message


def test_edge_values_are_valid() -> None:
    validate_sampling(
        SamplingOptions(
            temperature=2.0,
            top_p=1.0,
            logprobs=True,
            top_logprobs=20,
            stop=("a", "b", "c", "d"),
            frequency_penalty=-2.0,
            presence_penalty=2.0,
            max_tokens=1,
        )
    )
    validate_sampling(SamplingOptions(temperature=0))


def test_empty_prompt_and_unknown_token_are_refused() -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        validate_prompt([], 100)
    assert caught.value.param == "messages"
    with pytest.raises(InvalidArgumentError) as caught:
        validate_prompt([1, 100], 100, param="prompt")
    assert caught.value.param == "prompt"


def test_missing_max_tokens_takes_default_or_what_is_left() -> None:
    fitted = fit_context(SamplingOptions(), 100, max_context_tokens=8192, default_max_tokens=512)
    assert fitted.max_tokens == 512
    fitted = fit_context(SamplingOptions(), 8000, max_context_tokens=8192, default_max_tokens=512)
    assert fitted.max_tokens == 192


def test_max_tokens_beyond_context_is_refused_with_numbers() -> None:
    with pytest.raises(ContextLengthExceededError) as caught:
        fit_context(
            SamplingOptions(max_tokens=200), 8000, max_context_tokens=8192, default_max_tokens=5
        )
    assert caught.value.param == "max_tokens"
    assert (
        "This model's maximum context length is 8192 tokens; the prompt has 8000 tokens "
        "and max_tokens asks for 200." in caught.value.message
    )


def test_prompt_filling_the_context_is_refused_on_messages() -> None:
    with pytest.raises(ContextLengthExceededError) as caught:
        fit_context(SamplingOptions(), 8192, max_context_tokens=8192, default_max_tokens=5)
    assert caught.value.param == "messages"
