"""Corpus reading, windowing and config validation: each mistake is a clear error."""

from __future__ import annotations

import json
import re

import pytest

from inference_service.errors import InvalidArgumentError, NotFoundError
from inference_service.training.config import (
    ModelFacts,
    TrainingConfig,
    resolve,
    with_defaults,
)
from inference_service.training.corpus import (
    corpus_files,
    read_documents,
    resolve_path,
    tokenize_windows,
)

FACTS = ModelFacts(d_in=576, d_out=576, max_context=8192)


class CharTokenizer:
    """One token per character: enough to check windowing exactly."""

    bos_token_id = 1
    eos_token_id = 2

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [10 + (ord(c) % 50) for c in text]}


def test_documents_come_from_txt_and_jsonl_files_in_a_folder(tmp_path):
    (tmp_path / "b.jsonl").write_text(
        json.dumps({"body": "second"}) + "\n\n" + json.dumps({"body": "third"}) + "\n"
    )
    (tmp_path / "a.txt").write_text("first para\n\n\nstill a.txt\n")
    (tmp_path / "notes.md").write_text("ignored")
    docs = list(read_documents(corpus_files(tmp_path), "body"))
    assert docs == ["first para", "still a.txt", "second", "third"]


def test_bad_jsonl_names_the_line_and_the_field(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"text": "ok"}) + "\n{oops\n")
    with pytest.raises(InvalidArgumentError, match=r"c\.jsonl line 2 is not JSON"):
        list(read_documents([path], "text"))
    path.write_text(json.dumps({"content": "x"}) + "\n")
    with pytest.raises(InvalidArgumentError, match="no string field 'text'") as caught:
        list(read_documents([path], "text"))
    assert caught.value.param == "text_field"


def test_windows_are_cut_with_bos_and_eos_and_split_by_seed():
    docs = ["abcdefg", "hijklmnop", "qrstu"]  # 7 + 9 + 5 chars, an EOS after each: 24 tokens
    windows = tokenize_windows(
        iter(docs), CharTokenizer(), context_size=4, prepend_bos=True, eval_fraction=0.25, seed=3
    )
    assert windows.context_size == 4
    everything = [w.tolist() for w in windows.train] + [w.tolist() for w in windows.eval]
    assert len(everything) == 8 and len(windows.eval) == 2  # 24 tokens / 3 per window
    assert all(w[0] == 1 for w in everything)
    body = sorted(tuple(w[1:]) for w in everything)
    stream = [t for d in docs for t in [*CharTokenizer()(d)["input_ids"], 2]]
    assert body == sorted(tuple(stream[i : i + 3]) for i in range(0, 24, 3))
    again = tokenize_windows(
        iter(docs), CharTokenizer(), context_size=4, prepend_bos=True, eval_fraction=0.25, seed=3
    )
    assert again.fingerprint == windows.fingerprint and again.eval.equal(windows.eval)


def test_a_corpus_too_small_for_two_windows_is_refused():
    with pytest.raises(InvalidArgumentError, match="too few for two windows"):
        tokenize_windows(
            iter(["abc"]),
            CharTokenizer(),
            context_size=8,
            prepend_bos=False,
            eval_fraction=0.1,
            seed=0,
        )


def test_paths_stay_inside_the_data_root(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "c.txt").write_text("x")
    (tmp_path / "secret.txt").write_text("x")
    assert resolve_path(tmp_path / "root", "c.txt") == (tmp_path / "root" / "c.txt").resolve()
    for escape in ("../secret.txt", str(tmp_path / "secret.txt")):
        with pytest.raises(InvalidArgumentError, match="inside the training data root"):
            resolve_path(tmp_path / "root", escape)
    with pytest.raises(NotFoundError):
        resolve_path(tmp_path / "root", "missing.txt")
    with pytest.raises(InvalidArgumentError, match="MILLM_TRAINING_DATA_ROOT"):
        resolve_path(None, "c.txt")


def valid(**changes) -> dict:
    return {"hook_name": "blocks.6.hook_resid_post", "corpus_id": "c", **changes}


def test_defaults_fill_zero_fields_and_derive_width():
    resolved = resolve(with_defaults(valid(architecture="", k=0, expansion_factor=4)), FACTS)
    assert resolved.architecture == "topk" and resolved.k == 32
    assert resolved.d_sae == 4 * 576 and resolved.decoder_norm == "unit"
    assert resolve(with_defaults(valid(architecture="standard")), FACTS).decoder_norm == "none"


@pytest.mark.parametrize(
    ("changes", "param", "text"),
    [
        (dict(d_sae=64, k=65), "k", "between 1 and the width (64)"),
        (dict(learning_rate=-0.1), "learning_rate", "positive"),
        (dict(architecture="gated"), "architecture", "one of standard, jumprelu, topk"),
        (dict(hook_name=""), "hook_name", "required"),
        (dict(corpus_id=""), "corpus", "Name a corpus"),
        (dict(context_size=9000), "context_size", "between 2 and 8192"),
        (dict(eval_fraction=0.7), "eval_fraction", "below 0.5"),
        (dict(skip=True), "skip", "transcoder"),
        (dict(hook_name_out="blocks.6.hook_mlp_out"), "architecture", "no topk transcoder"),
        (dict(normalize_activations="layer_norm"), "normalize_activations", "constant_norm"),
    ],
)
def test_bad_hyperparameters_name_the_field(changes, param, text):
    with pytest.raises(InvalidArgumentError, match=re.escape(text)) as caught:
        resolve(with_defaults(valid(**changes)), FACTS)
    assert caught.value.param == param


def test_json_configs_are_type_checked():
    assert TrainingConfig.from_json({"k": 8, "learning_rate": 1}).learning_rate == 1.0
    with pytest.raises(InvalidArgumentError, match="k must be a int") as caught:
        TrainingConfig.from_json({"k": "8"})
    assert caught.value.param == "config.k"
    with pytest.raises(InvalidArgumentError, match="must be a int"):
        TrainingConfig.from_json({"k": True})
    with pytest.raises(InvalidArgumentError, match="Unknown training setting"):
        TrainingConfig.from_json({"width": 8})
