"""The docid scheme registry, and what the rest of the toolkit reads from a scheme: enhanced-docid
text, model construction and its codebook refusals, a preset that switches the encoding."""
from __future__ import annotations

import pytest
import yaml

from ddro.docids.schemes import ENCODINGS, SCHEMES, get_scheme
from ddro.errors import DDROError
from model_fixtures import DOCS, docid_folder, small_args, tiny_bert_encoder

# offset 3, width 5: codes (0, 0) (0, 1) (1, 0, 0) (1, 0, 1) (1, 1, 0) (2, 0), prefix-free
SEMANTIC_TOKENS = [(3, 8), (3, 9), (4, 8, 13), (4, 8, 14), (4, 9, 13), (5, 8)]
SEMANTIC = dict(encoding="semantic", tokens=SEMANTIC_TOKENS, add_doc_num=5 * 3,
                params={"k": 5, "c": 5, "width": 5})


def test_registry_names_every_scheme_once_and_only_tu_uses_tokenizer_ids():
    assert ENCODINGS == ("pq", "tu", "atomic", "semantic", "rq") == tuple(SCHEMES)
    assert all(SCHEMES[name].name == name and get_scheme(name) is SCHEMES[name] for name in ENCODINGS)
    assert [n for n in ENCODINGS if SCHEMES[n].uses_tokenizer_ids] == ["tu"]
    assert [n for n in ENCODINGS if SCHEMES[n].ends_with_eos] == ["tu"]
    assert [n for n in ENCODINGS if not SCHEMES[n].allows_own_vocab] == ["tu"]
    assert [n for n in ENCODINGS if SCHEMES[n].subspace_codebook] == ["pq"]
    with pytest.raises(DDROError, match="unknown --encoding 'bm25'"):
        get_scheme("bm25")


def test_encoding_help_lists_every_scheme(capsys):
    from ddro.docids.build import main

    with pytest.raises(SystemExit):
        main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert all(f"{name}: " in help_text for name in ENCODINGS)
    assert "--semantic_k" in help_text and "--rq_levels" in help_text and "--rq_bits" in help_text


def test_enhanced_text_shows_each_positions_code(tmp_path, minilm_tokenizer):
    from ddro.instances.enhanced import docid_renderer

    semantic = docid_folder(tmp_path / "sem", DOCS, **SEMANTIC)
    render = docid_renderer(semantic, minilm_tokenizer)
    assert [render(t) for t in semantic.tokens[:3]] == ["semantic 0 0", "semantic 0 1", "semantic 1 0 0"]
    rq = docid_folder(tmp_path / "rq", DOCS, encoding="rq", params={"levels": 2, "centroids": 4}, m=2, k=4,
                      add_doc_num=8)
    assert docid_renderer(rq, minilm_tokenizer)(rq.tokens[5]) == "rq 1 1"  # 5 = 1 + 4 * 1
    bare = docid_folder(tmp_path / "bare", DOCS, encoding="rq", params={"levels": 2}, add_doc_num=8)
    with pytest.raises(DDROError, match="RQ manifest params lack 'levels'/'centroids'"):
        docid_renderer(bare, minilm_tokenizer)


@pytest.fixture
def minilm_tokenizer():
    from ddro.tokenizer import load_tokenizer

    return load_tokenizer("offline:minilm")


def test_a_variable_length_table_builds_a_model_that_decodes_it(tmp_path):
    from ddro.eval.trie import DocidTrie
    from ddro.modeling import build_model, output_rows
    from ddro.modeling.build import _new_head

    tiny_bert_encoder(tmp_path / "bert")
    table = docid_folder(tmp_path / "sem", DOCS, **SEMANTIC)
    assert table.required_vocab == 3 + 15 and table.max_len == 3
    built = build_model(small_args("minilm-decoder", tmp_path / "bert"), table)
    assert output_rows(built.model) == table.required_vocab
    assert built.model.generation_config.max_new_tokens == 3
    trie = DocidTrie(list(table.groups), end_token=built.model.generation_config.eos_token_id)
    assert len(trie) == 6 and trie.allowed([4, 8]) == [13, 14] and trie.allowed([5, 8]) == [2]
    assert _new_head(small_args("t5", tmp_path), table)  # a T5 gets an untied head for new tokens


@pytest.mark.parametrize("setting", [dict(dense_prior="l2"), dict(docid_init="codebook"),
                                     dict(dense_prior="ip", docid_init="codebook")])
def test_codebook_uses_are_refused_for_non_pq_docids_before_building(tmp_path, setting):
    from ddro.modeling import build_model

    table = docid_folder(tmp_path / "rq", DOCS, encoding="rq", params={"levels": 2, "centroids": 4},
                         add_doc_num=8)
    with pytest.raises(DDROError, match="needs PQ docids .* set docid_init random and dense_prior none"):
        build_model(small_args("minilm-decoder", tmp_path / "no-encoder-needed", **setting), table)


@pytest.mark.parametrize("encoding", ["semantic", "rq"])
def test_a_preset_switching_the_encoding_passes_every_stage_parser(tmp_path, encoding):
    from ddro.pipeline import PipelineArguments, check_stage_arguments, load_preset

    preset = load_preset("tiny")
    preset["docids"] = {**preset["docids"], "encoding": encoding, "rq_bits": "auto", "semantic_k": 10}
    preset["sft"] = {**preset["sft"], "docid_init": "random", "dense_prior": "none"}  # PQ's centroids only
    path = tmp_path / f"tiny-{encoding}.yaml"
    path.write_text(yaml.safe_dump(preset))
    args = PipelineArguments(collection=str(tmp_path), output=str(tmp_path / "out"), preset=str(path))
    check_stage_arguments(tmp_path / "out", args, load_preset(str(path)))
