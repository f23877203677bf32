"""Exports: emotion vectors and SAE features in the formats other tools read.

Vectors (`export_vectors`), from the emotion_vectors table:
    safetensors        one file, a tensor "<hook>/<emotion>" per vector, and a JSON index beside it
                       (<name>.json: emotion, hook, layer, norm, neutral PCs removed, model, corpus)
    gguf               a folder with <emotion>.gguf per emotion: llama.cpp's control-vector format
                       (`llama-cli --control-vector <emotion>.gguf`), which repeng's
                       ControlVector.import_gguf reads too
    steering-vectors   a folder with <emotion>.safetensors per emotion: tensors named by decoder-block
                       index, for steering_vectors.SteeringVector(layer_activations, "decoder_block")

Layers. llama.cpp adds `direction.<k>` to the output of block k (0-based, after the block's last
residual add; k = 0 is refused by its loader), and steering-vectors patches the output of decoder
block k: both are TransformerLens' blocks.<k>.hook_resid_post, and blocks.<k>.hook_resid_pre is
the output of block k - 1. Other hooks have no such layer and are refused.

Features (`export_features`), from the feature tables: a folder with batch-0.json in the layout
SAE-Dashboard's Neuronpedia runner writes and Neuronpedia's uploader reads (sae_dashboard's
NeuronpediaDashboardBatch: per feature its logit lens, activation histogram, firing fraction and
top-activating windows with per-token values), and saekit_features.json with each feature's
emotion selectivity, which that layout has no field for.

Every check (names, layers, existing files) runs before the first byte is written, and each file
is written under a temporary name and renamed: bad input writes nothing.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from saekit.artifacts import OutputError, atomic_write_bytes, check_writable
from saekit.db import Database, open_readonly
from saekit.db import features as DF
from saekit.errors import SaekitError
from saekit.model import RESIDUAL_HOOK, architecture_hint, hf_model_id, hook_layer

VECTOR_FORMATS = ("safetensors", "gguf", "steering-vectors")
CONTROL_VECTOR_ARCH = "controlvector"
BATCH_FILE = "batch-0.json"
FEATURES_INDEX = "saekit_features.json"


class ExportError(SaekitError, ValueError):
    """An export cannot be written as asked; the message says what and where. Nothing was written."""


# ---------------------------------------------------------------------------- layers


def block_output_layer(hook: str) -> int | None:
    """The block whose output a residual hook reads (resid_post of block k: k; resid_pre of block k: k - 1)."""
    m = RESIDUAL_HOOK.match(hook)
    if m is None:
        return None
    layer = int(m.group(1)) - (m.group(2) == "pre")
    return layer if layer >= 0 else None


def _format_layer(hook: str, fmt: str) -> int:
    """The layer number a format stores a hook's vector under; ExportError if it has none."""
    block = hook_layer(hook)
    if block is None:
        raise ExportError(f"hook {hook} has no layer: its vectors cannot be exported (choose hooks with --hook)")
    if fmt == "safetensors":
        return block
    layer = block_output_layer(hook)
    if layer is None or (fmt == "gguf" and layer == 0):
        why = ("llama.cpp never steers block 0's output (direction.0 is refused)" if layer == 0
               else "the format adds vectors to block outputs only (blocks.<k>.hook_resid_post, or resid_pre of k + 1)")
        raise ExportError(f"hook {hook} cannot be written as {fmt}: {why}; choose other hooks with --hook")
    return layer


# ---------------------------------------------------------------------------- vectors


def export_vectors(out: str | Path, fmt: str = "safetensors", db_path: str | Path | None = None,
                   emotions: Sequence[str] = (), hooks: Sequence[str] = (), model: str | None = None,
                   corpus: str | None = None, force: bool = False) -> list[Path]:
    """Write emotion vectors in `fmt` (see the module docstring); returns the files written."""
    if fmt not in VECTOR_FORMATS:
        raise ExportError(f"unknown vector format {fmt!r}; choose from {VECTOR_FORMATS}")
    _check_writable(out)
    with open_readonly(db_path) as db:
        rows = _vector_rows(db, emotions, hooks, model, corpus)
    layers = {h: _format_layer(h, fmt) for h in dict.fromkeys(r["hook"] for r in rows)}
    files = {"safetensors": _vectors_safetensors, "gguf": _vectors_gguf,
             "steering-vectors": _vectors_steering}[fmt](Path(out), rows, layers)
    return _write_all(files, force)


def _vector_rows(db: Database, emotions: Sequence[str], hooks: Sequence[str], model: str | None,
                 corpus: str | None) -> list[dict]:
    rows = DF.all_emotion_vectors(db)
    if not rows:
        raise ExportError(f"{db.path} holds no emotion vectors; run `saekit rank` (or `saekit study`) first")
    rows = _only(rows, "model_id", [model] if model else [], "model", "--model")
    rows = _only(rows, "corpus_id", [corpus] if corpus else [], "corpus", "--corpus")
    scopes = sorted({(r["model_id"], r["corpus_id"]) for r in rows})
    if len(scopes) > 1:
        raise ExportError(f"{db.path} holds vectors of several models or corpora {scopes}; choose one with "
                          "--model and --corpus")
    return _only(_only(rows, "emotion", emotions, "emotion", "--emotion"), "hook", hooks, "hook", "--hook")


def _only(rows: Sequence[Any], key: str, wanted: Sequence[str], what: str, option: str) -> list[Any]:
    """The rows whose `key` is among `wanted` (all when none are asked for); unknown names are an ExportError."""
    if not wanted:
        return list(rows)
    known = sorted({r[key] for r in rows})
    unknown = [w for w in wanted if w not in known]
    if unknown:
        raise ExportError(f"no {what} {unknown[0]!r} in the database; known: {known} ({option})")
    return [r for r in rows if r[key] in wanted]


def _vectors_safetensors(out: Path, rows: list[dict], layers: dict[str, int]) -> dict[Path, bytes]:
    from safetensors.numpy import save

    if out.suffix != ".safetensors":
        raise ExportError(f"{out}: name the vectors file *.safetensors (its index goes beside it as .json)")
    tensors = {f"{r['hook']}/{r['emotion']}": np.asarray(r["vector"], dtype=np.float32) for r in rows}
    first = rows[0]
    index = {"format": "saekit emotion vectors", "model": hf_model_id(first["model_id"]),
             "saekit_model": first["model_id"], "corpus_id": first["corpus_id"],
             "definition": "mean over an emotion's stories minus the mean over emotions, with the neutral "
                           "dialogues' top principal components projected out",
             "vectors": [{"tensor": f"{r['hook']}/{r['emotion']}", "emotion": r["emotion"], "hook": r["hook"],
                          "layer": layers[r["hook"]], "norm": r["norm"], "neutral_pcs": r["neutral_pcs"],
                          "d_model": len(r["vector"]), "run_id": r["run_id"]} for r in rows]}
    return {out: save(tensors, {"index": out.with_suffix(".json").name}),
            out.with_suffix(".json"): (json.dumps(index, indent=2) + "\n").encode()}


def _by_emotion(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r["emotion"], []).append(r)
    return out


def _layer_vectors(rows: list[dict], layers: dict[str, int]) -> dict[int, np.ndarray]:
    """An emotion's vectors by layer; two hooks meaning the same layer (resid_post k, resid_pre k + 1) are refused."""
    out: dict[int, np.ndarray] = {}
    for r in sorted(rows, key=lambda r: layers[r["hook"]]):
        layer = layers[r["hook"]]
        if layer in out:
            raise ExportError(f"two hooks of {r['emotion']} map to block output {layer}; choose one with --hook")
        out[layer] = np.asarray(r["vector"], dtype=np.float32)
    return out


def _vectors_gguf(out: Path, rows: list[dict], layers: dict[str, int]) -> dict[Path, bytes]:
    import gguf

    _check_folder(out)
    hint = architecture_hint(rows[0]["model_id"])
    files = {}
    for emotion, group in _by_emotion(rows).items():
        directions = _layer_vectors(group, layers)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "vector.gguf"
            writer = gguf.GGUFWriter(str(path), CONTROL_VECTOR_ARCH)
            writer.add_name(f"{emotion} emotion vector ({hf_model_id(rows[0]['model_id'])})")
            writer.add_string(f"{CONTROL_VECTOR_ARCH}.model_hint", hint)
            writer.add_uint32(f"{CONTROL_VECTOR_ARCH}.layer_count", len(directions))
            for layer, vec in directions.items():
                writer.add_tensor(f"direction.{layer}", vec)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
            writer.close()
            files[out / f"{_file_stem(emotion)}.gguf"] = path.read_bytes()
    return files


def _vectors_steering(out: Path, rows: list[dict], layers: dict[str, int]) -> dict[Path, bytes]:
    from safetensors.numpy import save

    _check_folder(out)
    files = {}
    for emotion, group in _by_emotion(rows).items():
        directions = _layer_vectors(group, layers)
        meta = {"layer_type": "decoder_block", "emotion": emotion, "model": hf_model_id(rows[0]["model_id"]),
                "hooks": json.dumps({str(layers[r["hook"]]): r["hook"] for r in group})}
        files[out / f"{_file_stem(emotion)}.safetensors"] = save({str(k): v for k, v in directions.items()}, meta)
    return files


# ---------------------------------------------------------------------------- features


def export_features(out: str | Path, db_path: str | Path | None = None, features: Sequence[int] = (),
                    emotions: Sequence[str] = (), top: int = 5, sae: str | None = None,
                    force: bool = False) -> list[Path]:
    """Write chosen features (default: the `top` most selective per emotion) as a Neuronpedia batch."""
    if top < 1:
        raise ExportError(f"--top must be at least 1, got {top}")
    out = Path(out)
    _check_folder(out)
    _check_writable(out)
    with open_readonly(db_path) as db:
        info = _one_sae(db, sae)
        chosen = _chosen_features(db, info, features, emotions, top)
        batch, index = _feature_batch(db, info, chosen)
    return _write_all({out / BATCH_FILE: _json_bytes(batch), out / FEATURES_INDEX: _json_bytes(index)}, force)


def _one_sae(db: Database, sae_id: str | None) -> DF.SaeRow:
    saes = DF.saes(db)
    if not saes:
        raise ExportError(f"{db.path} holds no SAE rankings; run `saekit rank --sae ...` first")
    if sae_id is None and len(saes) > 1:
        raise ExportError(f"{db.path} holds several SAEs; choose one with --sae: {[s['sae_id'] for s in saes]}")
    return _only(saes, "sae_id", [sae_id] if sae_id else [], "SAE", "--sae")[0]


def _chosen_features(db: Database, info: DF.SaeRow, features: Sequence[int], emotions: Sequence[str],
                     top: int) -> list[int]:
    if features:
        missing = [f for f in features if not 0 <= f < info["d_sae"]]
        if missing:
            raise ExportError(f"feature {missing[0]} does not exist: SAE {info['sae_id']} has features "
                              f"0..{info['d_sae'] - 1}")
        return list(dict.fromkeys(features))
    known = DF.ranked_emotions(db, info["sae_id"])
    _only([{"emotion": e} for e in known], "emotion", emotions, "emotion", "--emotion")
    return list(dict.fromkeys(DF.most_selective(db, info["sae_id"], top, list(emotions or known))))


def _feature_batch(db: Database, info: DF.SaeRow, chosen: list[int]) -> tuple[dict, dict]:
    """Neuronpedia's batch (model_id, layer, sae_set, sae_id_suffix, features) and saekit's selectivity index."""
    sae_id = info["sae_id"]
    feats = {r["feature"]: r for r in DF.feature_rows(db, sae_id, chosen)}
    examples: dict[int, list[dict]] = {}
    for r in DF.example_rows(db, sae_id, chosen):   # windows, then stories
        examples.setdefault(r["feature"], []).append(r)
    dataset, n_prompts = DF.first_corpus(db) or ("", 0)
    stats: dict[int, list[dict]] = {}
    for stat in DF.stats_by_rank(db, sae_id, chosen):
        row: dict[str, Any] = dict(stat)
        stats.setdefault(int(row.pop("feature")), []).append(row)
    batch = {"model_id": hf_model_id(info["model_id"]), "layer": info["layer"],
             "sae_set": f"saekit-{info['architecture']}-{info['d_sae']}", "sae_id_suffix": None,
             "features": [_np_feature(f, feats.get(f, {}), examples.get(f, []), dataset, n_prompts) for f in chosen]}
    index = {"sae_id": sae_id, "hook": info["hook"], "model": hf_model_id(info["model_id"]),
             "selectivity": "per feature, every emotion by selectivity_rank (feature_emotion_stats, train split)",
             "features": {str(f): stats.get(f, []) for f in chosen}}
    return batch, index


def _np_feature(idx: int, row: dict, examples: list[dict], dataset: str, n_prompts: int) -> dict:
    """One feature in NeuronpediaDashboardFeature's layout (fields saekit has no data for are empty)."""
    heights, values = _histogram(row.get("hist_counts") or [])
    return {"feature_index": idx,
            "neuron_alignment_indices": [], "neuron_alignment_values": [], "neuron_alignment_l1": [],
            "correlated_neurons_indices": [], "correlated_neurons_l1": [], "correlated_neurons_pearson": [],
            "correlated_features_indices": [], "correlated_features_l1": [], "correlated_features_pearson": [],
            "neg_str": list(row.get("suppressed_tokens") or []), "neg_values": _rounded(row.get("suppressed_logits")),
            "pos_str": list(row.get("promoted_tokens") or []), "pos_values": _rounded(row.get("promoted_logits")),
            "frac_nonzero": float(row.get("firing_rate") or 0.0),
            "freq_hist_data_bar_values": values, "freq_hist_data_bar_heights": heights,
            "logits_hist_data_bar_heights": [], "logits_hist_data_bar_values": [],
            "n_prompts_total": n_prompts, "n_tokens_in_prompt": 0, "dataset": dataset,
            "decoder_weights_dist": [], "vector": [],
            "activations": [_np_activation(x) for x in examples]}


def _np_activation(x: dict) -> dict:
    """A top-activating window (NeuronpediaDashboardActivation; bins -1 / max / -1 mark 'top activations')."""
    values = _rounded(x["token_activations"])
    return {"bin_min": -1, "bin_max": max(values, default=0.0), "bin_contains": -1, "tokens": list(x["tokens"]),
            "values": values, "qualifying_token_index": int(np.argmax(values)) if values else 0}


def _histogram(counts: Sequence[int]) -> tuple[list[float], list[float]]:
    """Bar heights and centres of saekit's log-spaced activation histogram (bin i: (2^(i-9), 2^(i-8)])."""
    bars = [(float(n), round(1.5 * 2.0 ** (i - 9), 6)) for i, n in enumerate(counts) if n]
    return [h for h, _ in bars], [v for _, v in bars]


def _rounded(values) -> list[float]:
    return [round(float(v), 3) for v in values or []]


# ---------------------------------------------------------------------------- writing


def _file_stem(name: str) -> str:
    return re.sub(r"[^\w.-]", "_", name)


def _check_folder(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} is a file; this format writes a folder (one file per emotion), give a folder name")


def _json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=1, ensure_ascii=False) + "\n").encode()


def _write_all(files: dict[Path, bytes], force: bool) -> list[Path]:
    """Write every file (each atomically), after checking that none exists unless `force`."""
    existing = [p for p in files if p.exists()]
    if existing and not force:
        raise ExportError(f"{existing[0]} exists; pass --force to replace it"
                          + (f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""))
    folders = [p for p in files if p.is_dir()]
    if folders:
        raise ExportError(f"{folders[0]} is a folder; cannot write a file there")
    try:
        for path, data in files.items():
            atomic_write_bytes(path, data)
    except OSError as e:
        raise ExportError(f"cannot write {e.filename or path}: {e.strerror or e}") from e
    return list(files)


def _check_writable(out: str | Path) -> None:
    try:
        check_writable(out, "export")
    except OutputError as e:
        raise ExportError(str(e)) from e

