"""What leaves saekit: SAE metadata that rebuilds the training activations, emotion vectors in the
formats llama.cpp / repeng / steering-vectors read, and features as Neuronpedia dashboard JSON."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from saekit.activations import Activations
from saekit.cli import app
from saekit.db import Database, read_only_query
from saekit.export import BATCH_FILE, FEATURES_INDEX, ExportError, block_output_layer, export_features, export_vectors
from saekit.model import DEFAULT_MODEL, EMBEDDED_HF_ID, hf_model_id, load_model, model_alias

runner = CliRunner()
HOOKS = ["blocks.1.hook_resid_post", "blocks.2.hook_resid_post"]


@pytest.fixture(scope="module")
def study(tiny_study):
    return tiny_study / "study.duckdb", tiny_study / "study"


def db_vectors(db) -> dict[tuple[str, str], np.ndarray]:
    rows = read_only_query("SELECT hook, emotion, vector FROM emotion_vectors", db).to_pylist()
    return {(r["hook"], r["emotion"]): np.asarray(r["vector"], dtype=np.float32) for r in rows}


# ---------------------------------------------------------------------------- SAE metadata


def test_model_ids_map_to_the_hub_and_back():
    assert hf_model_id(DEFAULT_MODEL) == EMBEDDED_HF_ID and model_alias(EMBEDDED_HF_ID) == DEFAULT_MODEL
    assert hf_model_id("tiny") == model_alias("tiny") == "tiny"


def test_sae_metadata_alone_rebuilds_the_harvested_activations(study):
    from sae_lens import SAE

    _, out = study
    meta = SAE.load_from_disk(out / "sae").cfg.metadata   # sae-lens loads the folder, extra keys and all
    manifest = Activations.open(out / "activations").manifest
    assert meta.model_name == "tiny" and meta.hook_name == "blocks.2.hook_resid_post"
    assert meta.prepend_bos is False and meta.context_size == 64 and meta.dataset_path == "shipped"
    assert meta.saekit_corpus_hash == manifest["identity"]["documents"]
    assert meta.seqpos_slice == [1, None] and meta.saekit_token_rule["skip_first"] == 1

    from saekit.corpus import load_corpus

    model = load_model(model_alias(meta.model_name))
    texts = {r.id: r.text for r in load_corpus(meta.dataset_path)}
    acts = Activations.open(out / "activations")
    stored = next(acts.iter_shard_tensors(meta.hook_name))
    for i in (0, 7, 31):
        ids = model.tokenizer(texts[acts.documents[i]["id"]]).input_ids[: meta.context_size]
        assert (ids[0] == model.tokenizer.bos_token_id) == meta.prepend_bos
        _, cache = model.run_with_cache(torch.tensor([ids]), names_filter=meta.hook_name)
        rebuilt = cache[meta.hook_name][0]
        mine = stored["doc_index"] == i
        assert stored["token_id"][mine].tolist() == ids
        torch.testing.assert_close(rebuilt, stored["acts"][mine], atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------- vectors


def test_block_output_layers_follow_llama_cpp_and_steering_vectors():
    assert block_output_layer("blocks.5.hook_resid_post") == 5
    assert block_output_layer("blocks.5.hook_resid_pre") == 4     # the output of block 4
    assert block_output_layer("blocks.0.hook_resid_pre") is None  # the embeddings: no block's output
    assert block_output_layer("blocks.5.hook_mlp_out") is None and block_output_layer("ln_final.hook_normalized") is None


def test_safetensors_export_holds_every_vector_and_its_index(study, tmp_path):
    from safetensors.numpy import load_file

    db, _ = study
    written = export_vectors(tmp_path / "v.safetensors", "safetensors", db)
    assert written == [tmp_path / "v.safetensors", tmp_path / "v.json"]
    tensors, index = load_file(tmp_path / "v.safetensors"), json.loads((tmp_path / "v.json").read_text())
    truth = db_vectors(db)
    assert index["model"] == "tiny" and index["corpus_id"] == "shipped" and len(index["vectors"]) == len(truth) == 16
    stored = {(r["hook"], r["emotion"]): r for r in read_only_query(
        "SELECT hook, emotion, norm, neutral_pcs FROM emotion_vectors", db).to_pylist()}
    for entry in index["vectors"]:
        key = (entry["hook"], entry["emotion"])
        np.testing.assert_array_equal(tensors[entry["tensor"]], truth[key])
        assert entry["layer"] == int(entry["hook"].split(".")[1]) and entry["d_model"] == 64
        assert entry["norm"] == stored[key]["norm"] and entry["neutral_pcs"] == stored[key]["neutral_pcs"]


def gguf_field(reader, key):
    field = reader.get_field(key)
    return field.contents() if field is not None else None


def test_gguf_export_is_a_llama_cpp_control_vector_per_emotion(study, tmp_path):
    import gguf

    db, _ = study
    written = export_vectors(tmp_path / "cv", "gguf", db, emotions=["calm", "afraid"])
    assert sorted(p.name for p in written) == ["afraid.gguf", "calm.gguf"]
    truth = db_vectors(db)
    for emotion in ("calm", "afraid"):
        reader = gguf.GGUFReader(tmp_path / "cv" / f"{emotion}.gguf")
        assert gguf_field(reader, "general.architecture") == "controlvector"
        assert gguf_field(reader, "controlvector.model_hint") == "llama"
        assert gguf_field(reader, "controlvector.layer_count") == 2
        # llama.cpp adds direction.<k> to block k's output (k >= 1), TransformerLens' blocks.<k>.hook_resid_post;
        # repeng's ControlVector.import_gguf reads the same names into directions[k]
        tensors = {t.name: t for t in reader.tensors}
        assert set(tensors) == {"direction.1", "direction.2"}
        for k in (1, 2):
            t = tensors[f"direction.{k}"]
            assert t.tensor_type == gguf.GGMLQuantizationType.F32 and list(t.shape) == [64]
            np.testing.assert_array_equal(np.asarray(t.data), truth[(f"blocks.{k}.hook_resid_post", emotion)])


def test_steering_vectors_export_patches_the_block_outputs_the_hooks_read(study, tmp_path, tiny_model):
    """steering-vectors' SteeringVector(layer_activations, "decoder_block") adds layer_activations[k] to
    decoder block k's output: the same model as adding the vector at blocks.<k>.hook_resid_post."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from saekit.model import decoder_layers, hf_model_of

    db, _ = study
    export_vectors(tmp_path / "sv", "steering-vectors", db, emotions=["calm"])
    path = tmp_path / "sv" / "calm.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    layers = {int(k): v for k, v in load_file(path).items()}
    assert meta["layer_type"] == "decoder_block" and sorted(layers) == [1, 2]
    assert json.loads(meta["hooks"]) == {"1": HOOKS[0], "2": HOOKS[1]}
    ids = tiny_model.tokenizer("The cat sat on the mat", return_tensors="pt").input_ids
    hf = hf_model_of(tiny_model)
    handles = [decoder_layers(hf)[k].register_forward_hook(
        lambda mod, args, out, v=v: (out[0] + v,) + tuple(out[1:]) if isinstance(out, tuple) else out + v)
        for k, v in layers.items()]
    try:
        with torch.no_grad():
            patched = hf(ids).logits
    finally:
        for h in handles:
            h.remove()
    with torch.no_grad():
        hooked = tiny_model.run_with_hooks(ids, fwd_hooks=[(f"blocks.{k}.hook_resid_post", lambda a, hook, v=v: a + v)
                                                           for k, v in layers.items()])
        clean = hf(ids).logits
    torch.testing.assert_close(patched, hooked, atol=1e-4, rtol=1e-4)
    assert (patched - clean).abs().max() > 1e-3   # the vectors did change something


# ---------------------------------------------------------------------------- features

# SAE-Dashboard 0.8.0's NeuronpediaDashboardBatch / Feature / Activation.to_dict(): the batch-N.json its
# Neuronpedia runner writes, which its loader (NeuronpediaDashboardBatch(**json)) and Neuronpedia's
# convert-saedashboard-to-neuronpedia-export.py read; the loader refuses any other key.
BATCH_KEYS = {"model_id", "layer", "sae_set", "sae_id_suffix", "features"}
FEATURE_KEYS = {"feature_index", "neuron_alignment_indices", "neuron_alignment_values", "neuron_alignment_l1",
                "correlated_neurons_indices", "correlated_neurons_l1", "correlated_neurons_pearson",
                "correlated_features_indices", "correlated_features_l1", "correlated_features_pearson", "neg_str",
                "neg_values", "pos_str", "pos_values", "frac_nonzero", "freq_hist_data_bar_values",
                "freq_hist_data_bar_heights", "logits_hist_data_bar_heights", "logits_hist_data_bar_values",
                "n_prompts_total", "n_tokens_in_prompt", "dataset", "decoder_weights_dist", "activations", "vector"}
ACTIVATION_KEYS = {"bin_min", "bin_max", "bin_contains", "tokens", "values", "qualifying_token_index"}


def test_features_export_is_neuronpedia_dashboard_json(study, tmp_path):
    db, _ = study
    export_features(tmp_path / "np", db, top=3)
    batch = json.loads((tmp_path / "np" / BATCH_FILE).read_text())
    expected = read_only_query("SELECT DISTINCT feature FROM feature_emotion_stats WHERE selectivity_rank <= 3",
                               db).column("feature").to_pylist()
    assert set(batch) == BATCH_KEYS and batch["model_id"] == "tiny" and batch["layer"] == 2
    assert sorted(f["feature_index"] for f in batch["features"]) == sorted(expected)
    feats = {r["feature"]: r for r in read_only_query("SELECT * FROM features", db).to_pylist()}
    windows = {(r["feature"], r["example_rank"]): r for r in read_only_query(
        "SELECT * FROM feature_examples WHERE kind = 'window'", db).to_pylist()}
    for f in batch["features"]:
        row = feats[f["feature_index"]]
        assert set(f) == FEATURE_KEYS
        assert f["pos_str"] == row["promoted_tokens"] and f["neg_str"] == row["suppressed_tokens"]
        assert f["pos_values"] == pytest.approx(row["promoted_logits"], abs=1e-3)
        assert f["frac_nonzero"] == pytest.approx(row["firing_rate"])
        assert sum(f["freq_hist_data_bar_heights"]) == sum(row["hist_counts"])
        assert f["activations"], "every exported feature has examples"
        first = f["activations"][0]   # the strongest window comes first
        assert set(first) == ACTIVATION_KEYS
        window = windows[(f["feature_index"], 1)]
        assert first["tokens"] == window["tokens"]
        assert first["values"] == pytest.approx(window["token_activations"], abs=1e-3)
        assert first["values"][first["qualifying_token_index"]] == max(first["values"]) == first["bin_max"]
    index = json.loads((tmp_path / "np" / FEATURES_INDEX).read_text())
    some = str(expected[0])
    assert {r["emotion"] for r in index["features"][some]} == set(
        read_only_query("SELECT emotion FROM emotions", db).column("emotion").to_pylist())


def test_named_features_are_exported_in_order(study, tmp_path):
    db, _ = study
    export_features(tmp_path / "np", db, features=[7, 3, 7])
    batch = json.loads((tmp_path / "np" / BATCH_FILE).read_text())
    assert [f["feature_index"] for f in batch["features"]] == [7, 3]


# ---------------------------------------------------------------------------- bad input writes nothing


def listing(folder):
    return sorted(p.relative_to(folder) for p in folder.rglob("*"))


@pytest.mark.parametrize("args, message", [
    (["vectors", "{out}/v.safetensors", "--emotion", "ecstatic"], "no emotion 'ecstatic'"),
    (["vectors", "{out}/v.safetensors", "--hook", "blocks.9.hook_resid_post"], "no hook 'blocks.9.hook_resid_post'"),
    (["vectors", "{out}/v.gguf"], "name the vectors file \\*.safetensors"),
    (["vectors", "{out}/cv", "--format", "onnx"], "unknown vector format 'onnx'"),
    (["features", "{out}/np", "--emotion", "ecstatic"], "no emotion 'ecstatic'"),
    (["features", "{out}/np", "--feature", "4096"], "feature 4096 does not exist: .* features 0..255"),
    (["features", "{out}/np", "--sae", "elsewhere"], "no SAE 'elsewhere'"),
    (["features", "{out}/np", "--top", "0"], "--top must be at least 1"),
])
def test_bad_export_fails_with_a_message_and_writes_nothing(study, tmp_path, args, message):
    db, _ = study
    out = tmp_path / "out"
    out.mkdir()
    result = runner.invoke(app, ["export", *[a.format(out=out) for a in args], "--db", str(db)])
    assert result.exit_code == 2 and "error:" in result.output
    assert re.search(message, " ".join(result.output.split())), result.output
    assert listing(out) == []


def test_existing_files_are_kept_without_force_and_replaced_with_it(study, tmp_path):
    db, _ = study
    (tmp_path / "cv").mkdir()
    (tmp_path / "cv" / "calm.gguf").write_text("mine")
    args = ["export", "vectors", str(tmp_path / "cv"), "--format", "gguf", "--db", str(db)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "calm.gguf exists; pass --force" in " ".join(result.output.split())
    assert listing(tmp_path / "cv") == [Path("calm.gguf")]   # no other emotion written either
    assert (tmp_path / "cv" / "calm.gguf").read_text() == "mine"
    assert runner.invoke(app, args + ["--force"]).exit_code == 0
    assert len(listing(tmp_path / "cv")) == 8 and (tmp_path / "cv" / "calm.gguf").read_bytes()[:4] == b"GGUF"

    export_features(tmp_path / "np", db, top=1)
    before = (tmp_path / "np" / BATCH_FILE).read_bytes()
    with pytest.raises(ExportError, match="exists; pass --force"):
        export_features(tmp_path / "np", db, top=2)
    assert (tmp_path / "np" / BATCH_FILE).read_bytes() == before


def test_a_vector_whose_hook_has_no_layer_is_refused(study, tmp_path):
    db, _ = study
    copy = tmp_path / "copy.duckdb"
    shutil.copy(db, copy)
    with Database(copy) as d:
        row = d.sql("SELECT model_id, corpus_id, vector FROM emotion_vectors LIMIT 1")[0]
        d.insert("emotion_vectors", [{"model_id": row[0], "corpus_id": row[1], "hook": "ln_final.hook_normalized",
                                      "emotion": "calm", "norm": 1.0, "neutral_pcs": 1, "vector": row[2]}])
    for fmt, out in (("safetensors", tmp_path / "v.safetensors"), ("gguf", tmp_path / "cv"),
                     ("steering-vectors", tmp_path / "sv")):
        with pytest.raises(ExportError, match="hook ln_final.hook_normalized has no layer"):
            export_vectors(out, fmt, copy)
        assert not out.exists()
    # block 0's output exists for steering-vectors, but llama.cpp refuses direction.0
    with Database(copy) as d:
        d.sql("UPDATE emotion_vectors SET hook = 'blocks.0.hook_resid_post' WHERE hook = 'ln_final.hook_normalized'")
    with pytest.raises(ExportError, match="llama.cpp never steers block 0's output"):
        export_vectors(tmp_path / "cv", "gguf", copy, emotions=["calm"])
    assert not (tmp_path / "cv").exists()
    export_vectors(tmp_path / "sv", "steering-vectors", copy, emotions=["calm"], hooks=["blocks.0.hook_resid_post"])
    assert (tmp_path / "sv" / "calm.safetensors").exists()
