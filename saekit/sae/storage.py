"""SAE folders in SAELens' own format: saving by renames, recovering a killed save, loading.

Folder format (SAELens'):
    cfg.json                    the inference config (architecture, d_in, d_sae, metadata.hook_name ...)
    sae_weights.safetensors     W_enc, b_enc, W_dec, b_dec (+ threshold for jumprelu)
    sparsity.safetensors        "sparsity": log10 firing frequency per feature over the last window

Only safetensors are read from SAE folders; pickled .pt/.bin/.pkl files are refused, and registry
releases whose converter unpickles weights are refused too.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from sae_lens import SAE
from sae_lens.constants import SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME, SPARSITY_FILENAME
from sae_lens.saes.sae import TrainingSAE
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from saekit.artifacts import fault_point, match_umask
from saekit.model import hub_offline, hub_reachable
from saekit.sae.base import SAEError
from saekit.sae.interface import check_against_model, hook_of

SAE_FILES = (SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME, SPARSITY_FILENAME)
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt")
# sae-lens converters that read only safetensors / numpy (allow_pickle=False) files; the others
# (connor_rob_hook_z, goodfire, deepseek_r1, qwen_scope, dictionary_learning_1) torch.load pickles.
SAFE_REGISTRY_LOADERS = {"sae_lens", "gemma_2", "gemma_3", "llama_scope", "llama_scope_r1_distill",
                         "sparsify", "gemma_2_transcoder", "mwhanna_transcoder",
                         "mntss_clt_layer_transcoder", "temporal"}


def save_sae(sae: TrainingSAE, folder: str | Path, log_sparsity_F: torch.Tensor | None = None) -> Path:
    """Save the inference form of a training SAE in SAELens' format, replacing the folder by renames.

    The new SAE is written whole under a temporary name, the old folder is renamed aside, the new
    one renamed in, and the old folder's other files (checkpoints, metrics) moved over before the
    old SAE is deleted: at every instant one complete SAE exists, and `recover_sae_folder` finishes
    or undoes a save that a kill interrupted. A topk SAE trained with decoder-norm rescaling has the
    norms folded in; a batchtopk SAE is saved as the JumpReLU SAE it becomes at inference, as
    sae-lens' own trainer does.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise SAEError(f"{folder} is a file, not a folder: the SAE cannot be saved there")
    recover_sae_folder(folder)
    new = partial_path_for(folder)
    sae.save_inference_model(new)
    fault_point("save_sae.weights_written")
    if log_sparsity_F is not None:
        save_file({"sparsity": log_sparsity_F.detach().float().cpu().contiguous()}, str(new / SPARSITY_FILENAME))
    match_umask(*(p for p in new.iterdir() if p.is_file()))
    fault_point("save_sae.new_complete")
    if folder.exists():
        os.replace(folder, aside_path_for(folder))
        fault_point("save_sae.old_aside")
    os.replace(new, folder)
    fault_point("save_sae.new_in")
    _retire_aside(folder)
    return folder


def partial_path_for(folder: Path) -> Path:
    """Where save_sae writes the new folder before renaming it in."""
    return folder.with_name(f".{folder.name}.partial")


def aside_path_for(folder: Path) -> Path:
    """Where save_sae keeps the old folder while the new one is renamed in."""
    return folder.with_name(f".{folder.name}.old")


def recover_sae_folder(folder: str | Path) -> None:
    """Finish or undo a save_sae that a kill interrupted, so that `folder` holds all its files again.

    Only for writers (save_sae, training): a reader would race a live save. Readers use `sae_files_folder`.
    """
    folder = Path(folder)
    new, aside = partial_path_for(folder), aside_path_for(folder)
    if aside.exists() and new.exists():  # killed between renaming the old folder aside and the new one in
        if folder.exists():  # recreated meanwhile: keep what was put there too
            _move_entries(folder, new)
            shutil.rmtree(folder)
        os.replace(new, folder)
    _retire_aside(folder)
    shutil.rmtree(new, ignore_errors=True)  # an unfinished write; the old folder was never touched


def _retire_aside(folder: Path) -> None:
    """Move the old folder's checkpoints, metrics and the like into the new one, then delete the old SAE."""
    aside = aside_path_for(folder)
    if not aside.exists():
        return
    if not folder.exists():  # only outside meddling gets here: the old folder is the best there is
        os.replace(aside, folder)
        return
    _move_entries(aside, folder, skip=SAE_FILES)
    shutil.rmtree(aside)


def _move_entries(src: Path, dst: Path, skip: tuple[str, ...] = ()) -> None:
    """Rename every entry of src into dst, except those named in skip or already in dst."""
    for p in sorted(src.iterdir()):
        if p.name not in skip and not (dst / p.name).exists():
            os.replace(p, dst / p.name)
            fault_point("save_sae.entry_moved")


def sae_files_folder(folder: Path) -> Path:
    """Where the SAE of `folder` is readable now: the folder itself, or the complete new folder of a
    save_sae killed between its two renames (reading never renames, so it cannot race a live save)."""
    new, aside = partial_path_for(folder), aside_path_for(folder)
    if not (folder / SAE_WEIGHTS_FILENAME).exists() and aside.exists() and new.exists():
        return new
    return folder


# ---------------------------------------------------------------------------- loading


@dataclass
class LoadedSAE:
    """An inference SAE and where it came from."""
    sae: SAE
    source: str
    hook: str | None
    log_sparsity: torch.Tensor | None


def check_sae_folder(folder: Path) -> None:
    """Refuse folders without safetensors weights; never fall back to pickled files."""
    if folder.exists() and not folder.is_dir():
        raise SAEError(f"{folder} is a file, not an SAE folder (SAELens format: a folder holding "
                       f"{SAE_CFG_FILENAME} and {SAE_WEIGHTS_FILENAME})")
    if not folder.is_dir():
        raise SAEError(f"SAE folder {folder} does not exist")
    weights = folder / SAE_WEIGHTS_FILENAME
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if not weights.exists():
        found = (f"; it holds pickled files {pickles}, which saekit never unpickles: it reads only safetensors"
                 if pickles else "")
        raise SAEError(f"{folder} has no {SAE_WEIGHTS_FILENAME}{found}. Convert the SAE to SAELens' "
                       f"format (cfg.json + {SAE_WEIGHTS_FILENAME}) first")
    if not (folder / SAE_CFG_FILENAME).exists():
        raise SAEError(f"{folder} has no {SAE_CFG_FILENAME}: not a SAELens SAE folder")
    try:
        cfg = json.loads((folder / SAE_CFG_FILENAME).read_text())
    except json.JSONDecodeError as e:
        raise SAEError(f"{folder / SAE_CFG_FILENAME} is not valid JSON ({e})") from e
    k, d_sae = (cfg.get("k"), cfg.get("d_sae")) if isinstance(cfg, dict) else (None, None)
    if k is not None:
        if isinstance(k, bool) or not isinstance(k, (int, float)) or k != int(k) or k < 1:
            raise SAEError(f"{folder / SAE_CFG_FILENAME}: k = {k!r}; a TopK SAE keeps at least 1 latent per token")
        if isinstance(d_sae, int) and k > d_sae:
            raise SAEError(f"{folder / SAE_CFG_FILENAME}: k = {k} is more than d_sae = {d_sae} latents")


def load_sae(release_or_path: str | Path, sae_id: str | None = None, model=None, device: str = "cpu",
             dtype: str | None = None) -> LoadedSAE:
    """Load an SAE from a local SAELens folder, or a published one by sae-lens release and id.

    With `model`, the SAE's d_in and hook are checked against it (`check_against_model`).
    """
    path = Path(str(release_or_path)).expanduser()
    folder = sae_files_folder(path)
    if folder.exists() or str(release_or_path).startswith((".", "/", "~")):
        sae, sparsity = _load_from_folder(folder, device, dtype)
        source = str(path)
    else:
        sae, sparsity = _load_from_registry(str(release_or_path), sae_id, device, dtype or "float32")
        source = f"{release_or_path}:{sae_id}"
    loaded = LoadedSAE(sae=sae, source=source, hook=hook_of(sae), log_sparsity=sparsity)
    if model is not None:
        check_against_model(loaded, model)
    return loaded


def _load_from_folder(folder: Path, device: str, dtype: str | None) -> tuple[SAE, torch.Tensor | None]:
    """The SAE and its log sparsity from a SAELens folder; unreadable files are SAEErrors naming the file."""
    check_sae_folder(folder)
    try:
        sae = SAE.load_from_disk(folder, device=device, dtype=dtype)
    except SafetensorError as e:
        raise SAEError(f"{folder / SAE_WEIGHTS_FILENAME} is truncated or corrupt ({e}); "
                       "save or download the SAE again") from e
    except (KeyError, ValueError, TypeError, RuntimeError) as e:
        raise SAEError(f"cannot load the SAE in {folder}: {e}") from e
    check_finite_weights(sae, folder / SAE_WEIGHTS_FILENAME)
    path = folder / SPARSITY_FILENAME
    if not path.exists():
        return sae, None
    try:
        return sae, load_file(str(path)).get("sparsity")
    except SafetensorError as e:
        raise SAEError(f"{path} is truncated or corrupt ({e}); delete it or save the SAE again") from e


MAX_ABS_WEIGHT = 1e6
"""Beyond any trained SAE's weights; values this large overflow to inf in a float32 encode."""


def check_finite_weights(sae: SAE, where: str | Path) -> None:
    """Refuse an SAE with NaN, inf or absurd weights: every feature read through it would be NaN or inf."""
    for name, t in sae.state_dict().items():
        if not t.is_floating_point():
            continue
        if not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise SAEError(f"{where}: tensor {name!r} holds {bad} NaN/inf values; the SAE is unusable "
                           "(retrain it or restore a good copy)")
        if t.numel() and float(t.abs().max()) > MAX_ABS_WEIGHT:
            raise SAEError(f"{where}: tensor {name!r} holds values up to {float(t.abs().max()):.3g}, beyond "
                           f"{MAX_ABS_WEIGHT:g}; the SAE is unusable (retrain it or restore a good copy)")


def _load_from_registry(release: str, sae_id: str | None, device: str, dtype: str):
    from sae_lens.loading.pretrained_sae_loaders import get_conversion_loader_name
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    directory = get_pretrained_saes_directory()
    if release not in directory:
        raise SAEError(f"{release!r} is neither an SAE folder nor a sae-lens release; "
                       f"known releases include {sorted(directory)[:5]} ... ({len(directory)} in all)")
    ids = list(directory[release].saes_map)
    if sae_id is None or sae_id not in ids:
        what = "needs an SAE id" if sae_id is None else f"has no SAE id {sae_id!r}"
        raise SAEError(f"release {release!r} {what}; ids include {ids[:5]}")
    loader = get_conversion_loader_name(release)
    if loader not in SAFE_REGISTRY_LOADERS:
        raise SAEError(f"release {release!r} is stored as pickled weights (sae-lens converter {loader!r}); "
                       "saekit reads only safetensors and refuses to unpickle downloaded files")
    if not hub_reachable():
        why = "HF_HUB_OFFLINE is set" if hub_offline() else "the Hugging Face hub is unreachable"
        raise SAEError(f"cannot download {release}/{sae_id}: {why}. Pass a local SAELens folder instead")
    sae, _, sparsity = SAE.from_pretrained_with_cfg_and_sparsity(release, sae_id, device=device, dtype=dtype)
    check_finite_weights(sae, f"release {release!r}, SAE {sae_id!r}")
    return sae, sparsity


