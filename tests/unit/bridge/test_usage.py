"""Usage objects: OpenAI's `prompt_tokens_details.cached_tokens` from the prefix cache."""

from __future__ import annotations

from millm.v1 import inference_service_pb2 as pb
from openai_bridge.openai_api import responses_translate, translate


def finished(prompt: int, completion: int, cached: int) -> pb.GenerateFinished:
    usage = pb.Usage(prompt_tokens=prompt, completion_tokens=completion, cached_tokens=cached)
    return pb.GenerateFinished(usage=usage)


def test_cached_tokens_count_each_prompt_once() -> None:
    # Two prompts, two samples each: the prompt's numbers come from its first sample.
    choices = [finished(40, 5, 30), finished(40, 7, 30), finished(12, 3, 0), finished(12, 2, 0)]
    assert translate.usage_total(choices, samples=2) == {
        "prompt_tokens": 52,
        "completion_tokens": 17,
        "total_tokens": 69,
        "prompt_tokens_details": {"cached_tokens": 30},
    }


def test_the_responses_api_reports_them_as_input_tokens_details() -> None:
    chat_usage = translate.usage_total([finished(39, 4, 38)])
    assert responses_translate.usage(chat_usage) == {
        "input_tokens": 39,
        "input_tokens_details": {"cached_tokens": 38, "cache_write_tokens": 0},
        "output_tokens": 4,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 43,
    }
