"""SAEs: the only module that imports sae_lens.

Builds sae-lens training SAEs (topk, batchtopk, jumprelu, standard) from plain arguments, saves
them in SAELens' own format and loads them back, from a local folder or sae-lens' registry of
published releases, and checks an SAE against a model.

Folder format (SAELens'):
    cfg.json                    the inference config (architecture, d_in, d_sae, metadata.hook_name ...)
    sae_weights.safetensors     W_enc, b_enc, W_dec, b_dec (+ threshold for jumprelu)
    sparsity.safetensors        "sparsity": log10 firing frequency per feature over the last window

Only safetensors are read from SAE folders; pickled .pt/.bin/.pkl files are refused, and registry
releases whose converter unpickles weights are refused too.

`topk_training_forward` is a faster TopK training pass than sae-lens' own: it selects the k
latents with a dense encoder matmul under no_grad, then computes their values, the decoding and
all gradients through the k selected latents only (as EleutherAI's sparsify does).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from sae_lens import SAE, __version__ as SAE_LENS_VERSION  # noqa: F401  (re-exported for provenance)
from sae_lens.constants import SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME, SPARSITY_FILENAME
from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig
from sae_lens.saes.sae import SAEMetadata, TrainingSAE, TrainStepInput, TrainStepOutput
from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

from saekit.artifacts import fault_point, match_umask
from saekit.model import d_model, hub_offline, hub_reachable
from saekit.errors import SaekitError

ARCHITECTURES = ("topk", "batchtopk", "jumprelu", "standard")
SAE_FILES = (SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME, SPARSITY_FILENAME)
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt")
# sae-lens converters that read only safetensors / numpy (allow_pickle=False) files; the others
# (connor_rob_hook_z, goodfire, deepseek_r1, qwen_scope, dictionary_learning_1) torch.load pickles.
SAFE_REGISTRY_LOADERS = {"sae_lens", "gemma_2", "gemma_3", "llama_scope", "llama_scope_r1_distill",
                         "sparsify", "gemma_2_transcoder", "mwhanna_transcoder",
                         "mntss_clt_layer_transcoder", "temporal"}

_TRAINING_CLASSES = {
    "topk": (TopKTrainingSAE, TopKTrainingSAEConfig),
    "batchtopk": (BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig),
    "jumprelu": (JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig),
    "standard": (StandardTrainingSAE, StandardTrainingSAEConfig),
}


class SAEError(SaekitError, RuntimeError):
    """An SAE could not be built, saved, loaded or matched to a model; the message says why."""


# ---------------------------------------------------------------------------- building


def build_training_sae(architecture: str, d_in: int, d_sae: int, *, k: float = 32,
                       l1_coefficient: float = 5.0, l1_warm_up_steps: int = 0,
                       l0_coefficient: float = 1.0, jumprelu_init_threshold: float = 0.01,
                       jumprelu_bandwidth: float = 0.05, aux_loss_coefficient: float = 1 / 32,
                       use_aux_loss: bool = True, normalize_activations: str = "none",
                       dtype: str = "float32", device: str = "cpu",
                       metadata: dict[str, Any] | None = None) -> TrainingSAE:
    """A fresh sae-lens training SAE (weights from torch's current RNG; seed it first)."""
    if architecture not in _TRAINING_CLASSES:
        raise SAEError(f"unknown architecture {architecture!r}; choose one of {list(ARCHITECTURES)}")
    cls, cfg_cls = _TRAINING_CLASSES[architecture]
    # The trainer estimates and folds "expected_average_only_in" itself (as sae-lens' trainer does),
    # so the SAE sees already scaled inputs and its config says "none".
    sae_norm = "layer_norm" if normalize_activations == "layer_norm" else "none"
    common = dict(d_in=d_in, d_sae=d_sae, dtype=dtype, device=device, normalize_activations=sae_norm,
                  metadata=SAEMetadata(**(metadata or {})))
    if architecture in ("topk", "batchtopk"):
        k_value = int(k) if architecture == "topk" else float(k)
        cfg = cfg_cls(k=k_value, aux_loss_coefficient=aux_loss_coefficient if use_aux_loss else 0.0, **common)
    elif architecture == "jumprelu":
        cfg = cfg_cls(l0_coefficient=l0_coefficient, jumprelu_init_threshold=jumprelu_init_threshold,
                      jumprelu_bandwidth=jumprelu_bandwidth,
                      pre_act_loss_coefficient=aux_loss_coefficient if use_aux_loss else None, **common)
    else:
        cfg = cfg_cls(l1_coefficient=l1_coefficient, l1_warm_up_steps=l1_warm_up_steps, **common)
    return cls(cfg)


def coefficient_values(sae: TrainingSAE, step: int) -> dict[str, float]:
    """The sparsity coefficients at `step` (linear warm-up, as sae-lens' CoefficientScheduler)."""
    out = {}
    for name, c in sae.get_coefficients().items():
        value, warm = (c, 0) if isinstance(c, (int, float)) else (c.value, c.warm_up_steps)
        out[name] = value * min(1.0, (step + 1) / warm) if warm > 0 else value
    return out


def training_forward(sae: TrainingSAE, sae_in_BD: torch.Tensor, dead_F: torch.Tensor | None,
                     step: int, fast_topk: bool = True) -> TrainStepOutput:
    """One training forward pass: the sparse TopK path for topk SAEs, sae-lens' own otherwise."""
    if fast_topk and type(sae) is TopKTrainingSAE:
        return topk_training_forward(sae, sae_in_BD, dead_F)
    return sae.training_forward_pass(TrainStepInput(
        sae_in=sae_in_BD, coefficients=coefficient_values(sae, step), dead_neuron_mask=dead_F,
        n_training_steps=step, is_logging_step=False))


# ---------------------------------------------------------------------------- sparse TopK


class _SelectedPreacts(torch.autograd.Function):
    """pre_BK = x_BD @ W_enc[:, idx_BK] + b_enc[idx_BK], with O(B*K*D) backward.

    The values come precomputed from the dense no-grad encoder matmul; only the gradients are
    computed here, through the selected latents alone (a dense backward costs O(B*F*D)).
    """

    @staticmethod
    def forward(ctx, x_BD, W_enc_DF, b_enc_F, idx_BK, pre_BK):
        ctx.save_for_backward(x_BD, W_enc_DF, idx_BK)
        return pre_BK.clone()

    @staticmethod
    def backward(ctx, grad_BK):
        x_BD, W_enc_DF, idx_BK = ctx.saved_tensors
        B, K = idx_BK.shape
        n_latents = W_enc_DF.shape[1]
        flat_idx = idx_BK.reshape(-1)
        grad_x = grad_W = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = F.embedding_bag(idx_BK, W_enc_DF.t().contiguous(), per_sample_weights=grad_BK, mode="sum")
        if ctx.needs_input_grad[1]:
            rows = torch.arange(B, device=x_BD.device).repeat_interleave(K)
            g_FB = torch.sparse_coo_tensor(torch.stack([flat_idx, rows]), grad_BK.reshape(-1),
                                           (n_latents, B), check_invariants=False)
            grad_W = torch.sparse.mm(g_FB, x_BD).t()
        if ctx.needs_input_grad[2]:
            grad_b = torch.zeros(n_latents, dtype=grad_BK.dtype, device=grad_BK.device)
            grad_b.index_add_(0, flat_idx, grad_BK.reshape(-1))
        return grad_x, grad_W, grad_b, None, None


def _decode_selected(idx_BK, acts_BK, W_dec_FD):
    return F.embedding_bag(idx_BK, W_dec_FD, per_sample_weights=acts_BK, mode="sum")


def topk_training_forward(sae: TopKTrainingSAE, x_BD: torch.Tensor,
                          dead_F: torch.Tensor | None) -> TrainStepOutput:
    """sae-lens' TopK training pass (same loss, same gradients) that never decodes dense latents.

    `feature_acts` is returned as a sparse COO tensor [B, F] (sae-lens' trainer accepts those too).
    """
    cfg = sae.cfg
    if cfg.normalize_activations != "none":
        raise SAEError("the sparse TopK path needs normalize_activations 'none' inside the SAE")
    sae_in_BD = x_BD.to(sae.dtype)
    centred_BD = sae_in_BD - sae.b_dec * cfg.apply_b_dec_to_input
    norm_F = sae.W_dec.norm(dim=-1) if cfg.rescale_acts_by_decoder_norm else None
    with torch.no_grad():
        # rank by pre * norm, folding the norms into the (small) weights instead of the [B, F] output
        if norm_F is not None:
            ranked_BF = torch.addmm(sae.b_enc * norm_F, centred_BD, sae.W_enc * norm_F)
        else:
            ranked_BF = torch.addmm(sae.b_enc, centred_BD, sae.W_enc)
        top_BK, idx_BK = ranked_BF.topk(cfg.k, dim=-1, sorted=False)
        pre_BK = top_BK / norm_F[idx_BK] if norm_F is not None else top_BK
    pre_BK = _SelectedPreacts.apply(centred_BD, sae.W_enc, sae.b_enc, idx_BK, pre_BK)
    if norm_F is not None:
        sel_norm_BK = norm_F[idx_BK]
        acts_BK = (pre_BK * sel_norm_BK).relu()
        recon_BD = _decode_selected(idx_BK, acts_BK / sel_norm_BK, sae.W_dec) + sae.b_dec
    else:
        acts_BK = pre_BK.relu()
        recon_BD = _decode_selected(idx_BK, acts_BK, sae.W_dec) + sae.b_dec
    mse = (recon_BD - sae_in_BD).pow(2).sum(-1).mean()
    aux = _topk_aux_loss(sae, sae_in_BD, centred_BD, recon_BD, ranked_BF, norm_F, dead_F)
    B, K = idx_BK.shape
    rows = torch.arange(B, device=idx_BK.device).repeat_interleave(K)
    feats_BF = torch.sparse_coo_tensor(torch.stack([rows, idx_BK.reshape(-1)]), acts_BK.detach().reshape(-1),
                                       (B, cfg.d_sae), check_invariants=False)
    return TrainStepOutput(sae_in=sae_in_BD, sae_out=recon_BD, feature_acts=feats_BF, hidden_pre=ranked_BF,
                           loss=mse + aux, losses={"mse_loss": mse, "auxiliary_reconstruction_loss": aux})


def _topk_aux_loss(sae, sae_in_BD, centred_BD, recon_BD, ranked_BF, norm_F, dead_F):
    """sae-lens' AuxK loss: the top dead latents reconstruct the live latents' residual."""
    n_dead = int(dead_F.sum()) if dead_F is not None else 0
    if n_dead == 0 or sae.cfg.aux_loss_coefficient == 0:
        return recon_BD.new_tensor(0.0)
    k_aux = sae_in_BD.shape[-1] // 2
    scale = min(n_dead / k_aux, 1.0)
    k_aux = min(k_aux, n_dead)
    with torch.no_grad():
        dead_idx = dead_F.nonzero().flatten().to(ranked_BF.device)
        top_BK, pos_BK = ranked_BF.index_select(1, dead_idx).topk(k_aux, dim=-1, sorted=False)
        idx_BK = dead_idx[pos_BK]
        pre_BK = top_BK / norm_F[idx_BK] if norm_F is not None else top_BK
    pre_BK = _SelectedPreacts.apply(centred_BD, sae.W_enc, sae.b_enc, idx_BK, pre_BK)
    # with decoder-norm rescaling the acts are pre * norm, decoded through W_dec / norm: the norms cancel
    recons_BD = _decode_selected(idx_BK, pre_BK, sae.W_dec)
    residual_BD = (sae_in_BD - recon_BD).detach()
    return sae.cfg.aux_loss_coefficient * scale * (recons_BD - residual_BD).pow(2).sum(-1).mean()


# ---------------------------------------------------------------------------- saving


def set_metadata(sae: TrainingSAE, fields: dict[str, Any]) -> None:
    """Set fields of the metadata that save_sae writes into cfg.json (extra keys load in sae-lens too)."""
    for key, value in fields.items():
        sae.cfg.metadata[key] = value


def fold_activation_scale(sae: TrainingSAE, scaling_factor: float) -> None:
    """Fold a constant input scaling into the weights (sae-lens' own fold)."""
    sae.fold_activation_norm_scaling_factor(scaling_factor)


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


def training_state_tensors(sae: TrainingSAE) -> dict[str, torch.Tensor]:
    """Parameters and buffers of a training SAE, for checkpoints."""
    return {k: v.detach().contiguous() for k, v in sae.state_dict().items()}


def load_training_state(sae: TrainingSAE, tensors: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        sae.load_state_dict(tensors, strict=True)


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
        json.loads((folder / SAE_CFG_FILENAME).read_text())
    except json.JSONDecodeError as e:
        raise SAEError(f"{folder / SAE_CFG_FILENAME} is not valid JSON ({e})") from e


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
    loaded = LoadedSAE(sae=sae, source=source, hook=sae.cfg.metadata.hook_name, log_sparsity=sparsity)
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


def check_finite_weights(sae: SAE, where: str | Path) -> None:
    """Refuse an SAE with NaN or inf weights: every feature read through it would be NaN."""
    for name, t in sae.state_dict().items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise SAEError(f"{where}: tensor {name!r} holds {bad} NaN/inf values; the SAE is unusable "
                           "(retrain it or restore a good copy)")


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


# ---------------------------------------------------------------------------- the adapter's small interface
# Other modules read an SAE's facts through these, never through sae-lens attributes.


def hook_of(sae) -> str | None:
    """The hook point the SAE was trained on (sae-lens keeps it in cfg.metadata)."""
    return getattr(getattr(sae.cfg, "metadata", None), "hook_name", None)


def model_name_of(sae) -> str | None:
    return getattr(getattr(sae.cfg, "metadata", None), "model_name", None)


def decoder_FD(sae) -> torch.Tensor:
    """Decoder rows [d_sae, d_in]: one direction per latent."""
    return sae.W_dec


def d_in_of(sae) -> int:
    return int(sae.cfg.d_in)


def d_sae_of(sae) -> int:
    return int(sae.cfg.d_sae)


def hook_width(model, hook: str) -> int:
    """The last dimension of `hook`'s activations, from a one-token forward pass."""
    if hook not in model.hook_dict:
        raise SAEError(f"the SAE reads hook {hook!r}, which this model does not have "
                       f"(e.g. {sorted(h for h in model.hook_dict if 'resid_post' in h)[:3]})")
    if "hook_resid" in hook:
        return d_model(model)
    seen: dict[str, int] = {}

    def grab(act, hook):
        seen["d"] = act.shape[-1]
        return act

    device = next(model.parameters()).device
    with torch.no_grad():
        model.run_with_hooks(torch.zeros((1, 1), dtype=torch.long, device=device),
                             fwd_hooks=[(hook, grab)], return_type=None)
    return seen["d"]


def check_against_model(loaded: LoadedSAE | SAE, model, hook: str | None = None) -> None:
    """Raise SAEError when the SAE's hook is missing from the model or its d_in is not the hook's width."""
    sae = loaded.sae if isinstance(loaded, LoadedSAE) else loaded
    hook = hook or sae.cfg.metadata.hook_name
    if hook is None:
        width, where = d_model(model), "the model's d_model"
    else:
        width, where = hook_width(model, hook), f"the width of {hook}"
    if sae.cfg.d_in != width:
        raise SAEError(f"SAE d_in is {sae.cfg.d_in} but {where} is {width}: this SAE was trained on "
                       f"another model or hook (SAE model: {sae.cfg.metadata.model_name!r})")


def describe(loaded: LoadedSAE) -> dict[str, Any]:
    """A summary for printing: architecture, sizes, hook, model, source."""
    cfg = loaded.sae.cfg
    out = {"source": loaded.source, "architecture": cfg.architecture(), "d_in": cfg.d_in, "d_sae": cfg.d_sae,
           "hook": cfg.metadata.hook_name, "model": cfg.metadata.model_name, "dtype": cfg.dtype}
    if hasattr(cfg, "k"):
        out["k"] = cfg.k
    return out
