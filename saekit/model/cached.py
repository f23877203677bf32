"""Cached passes on the plain model: scoring continuations and stepping a KV cache under edits.

The bridge swaps its own components into the transformers model in place, and with transformers
5.x those components never see the KV cache (it arrives as `cache`, they read `past_key_values`):
a cached continuation through them attends to itself alone. Cached passes therefore run on a
plain twin of the model that shares the bridge's weights.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import torch

from saekit.errors import SaekitError
from saekit.model.catalogue import ModelLoadError
from saekit.model.structure import RESIDUAL_HOOK, decoder_layers, hf_model_of, is_bridge, model_device, pad_batch

# plain twin of the model that shares the bridge's weights.

_TWINS: Any = None
"""bridge -> its plain twin (a weak-keyed dictionary, made on first use)."""


class CachedScoringError(SaekitError, ValueError):
    """Cached scoring was asked for something it cannot do exactly (a non-residual hook, an empty prefix)."""


def plain_model(model):
    """The plain transformers model with a bridge's weights (shared, not copied) and none of its wrappers;
    a model that is no bridge is returned as it is."""
    global _TWINS
    if not is_bridge(model):
        return model
    import copy
    import weakref

    from transformers import AutoModelForCausalLM

    if _TWINS is None:
        _TWINS = weakref.WeakKeyDictionary()
    twin = _TWINS.get(model)
    if twin is not None:
        return twin
    hf = hf_model_of(model)
    with torch.device("meta"):  # no memory: every tensor is the bridge's below
        # PyTorch's fused attention: about a quarter faster than eager on 1-2k-token contexts on CPU
        twin = AutoModelForCausalLM.from_config(copy.deepcopy(hf.config), attn_implementation="sdpa")
    # The bridge keeps each original module as `_original_component` of its wrapper: without that
    # segment, a name of the bridged model is the plain model's name for the same tensor.
    source: dict[str, torch.Tensor] = {}
    for name, t in [*hf.named_parameters(remove_duplicate=False), *hf.named_buffers(remove_duplicate=False)]:
        source.setdefault(name.replace("._original_component", ""), t)
    for kind in ("_parameters", "_buffers"):
        for mod_name, mod in twin.named_modules(remove_duplicate=False):
            slots = getattr(mod, kind)
            for leaf in [k for k, v in slots.items() if v is not None]:
                full = f"{mod_name}.{leaf}" if mod_name else leaf
                if full not in source:
                    raise ModelLoadError(f"cannot find {full} of {type(twin).__name__} in the bridged model")
                slots[leaf] = source[full]
    twin.eval()
    _TWINS[model] = twin
    return twin


def cacheable_hook(hook: str) -> bool:
    """Whether cached scoring can apply an edit at this hook (the residual stream, as forward hooks on blocks)."""
    return RESIDUAL_HOOK.match(hook) is not None


@contextmanager
def block_hooks(hf, hooks: Sequence[tuple[str, Any]]) -> Iterator[None]:
    """Edits fn(act_BTD) -> act_BTD at blocks.L.hook_resid_post (block L's output) or hook_resid_pre
    (its input), as torch forward hooks on the plain model's blocks, removed on exit."""
    layers = decoder_layers(hf)
    handles = []

    def post(fn):
        def hook(module, args, output):
            if isinstance(output, tuple):
                return (fn(output[0]), *output[1:])
            return fn(output)
        return hook

    def pre(fn):
        def hook(module, args, kwargs):
            if args:
                return (fn(args[0]), *args[1:]), kwargs
            return args, dict(kwargs, hidden_states=fn(kwargs["hidden_states"]))
        return hook

    try:
        for name, fn in hooks:
            m = RESIDUAL_HOOK.match(name)
            if m is None:
                raise CachedScoringError(f"cached scoring edits the residual stream only, not {name!r}")
            layer = layers[int(m.group(1))]
            handles.append(layer.register_forward_hook(post(fn)) if m.group(2) == "post"
                           else layer.register_forward_pre_hook(pre(fn), with_kwargs=True))
        yield
    finally:
        for h in handles:
            h.remove()


def new_cache(hf):
    """A cache that keeps every past position in every layer. A config-shaped cache keeps only the last
    window of a sliding-window layer (Gemma 3: 512 tokens) and cannot be cut back to a shorter prefix,
    which every branch needs; the sliding layers' attention masks still apply the window."""
    from transformers import DynamicCache

    return DynamicCache()


def cache_kwargs(module, cache) -> dict[str, Any]:
    """The cache under the name this transformers version takes (`cache` from 5.x, else `past_key_values`)."""
    import inspect

    name = "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"
    return {name: cache, "use_cache": True}


def stop_token_ids(tokenizer, hf) -> set[int]:
    """The tokens that end a reply: the generation config's end-of-sequence ids and the tokenizer's."""
    ids = hf.generation_config.eos_token_id if getattr(hf, "generation_config", None) is not None else None
    out = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    if tokenizer.eos_token_id is not None:
        out.add(tokenizer.eos_token_id)
    return out


HooksFor = Any
"""Callable (start, mask_BT) -> [(hook name, fn(act_BTD) -> act_BTD)]: the edits of one chunk of a
cached pass whose first token sits at absolute position `start` (mask_BT: its real tokens)."""


@torch.inference_mode()
def score_continuations(model, context_ids: Sequence[int], branches: Sequence[tuple[int, Sequence[Sequence[int]]]],
                        hooks_for: HooksFor | None = None) -> list[list[torch.Tensor]]:
    """Per-token log-probabilities of continuations after prefixes of one context, through a KV cache.

    `branches` are (prefix length, [continuation ids, ...]): each continuation follows
    context_ids[:prefix length]. One pass over the context (no LM head) fills the cache up to the
    longest prefix less its last token; each branch then runs its continuations as one right-padded
    batch from the cache cut to its prefix less one token, fed that last token first, so the
    prefix is computed once for every branch and continuation. Returns, per branch and
    continuation, the log-probability [len(continuation)] of each of its tokens: the numbers a
    full forward pass over prefix + continuation gives, up to float rounding, with the same edits.
    """
    import copy

    hf = plain_model(model)
    device = model_device(hf)
    hooks_for = hooks_for or (lambda start, mask_BT: [])
    if any(p < 1 or p > len(context_ids) for p, _ in branches):
        raise CachedScoringError(f"prefix lengths must be within 1..{len(context_ids)} (the context's length)")
    need = max((p for p, _ in branches), default=1) - 1
    cache = new_cache(hf)
    if need:
        decoder = hf.get_decoder()
        with block_hooks(hf, hooks_for(0, torch.ones(1, need, dtype=torch.bool))):
            decoder(input_ids=torch.tensor([list(context_ids[:need])], device=device), **cache_kwargs(decoder, cache))
    out = []
    for prefix_len, conts in branches:
        rows = [[int(context_ids[prefix_len - 1])] + [int(t) for t in c[:-1]] for c in conts]
        tokens_BT, mask_BT = pad_batch(rows, 0)
        branch = copy.deepcopy(cache) if prefix_len > 1 else new_cache(hf)
        if branch.get_seq_length() > prefix_len - 1:
            branch.crop(prefix_len - 1 - branch.get_seq_length())  # a negative count: tokens to drop
        branch.batch_repeat_interleave(len(rows))
        attn_BT = torch.cat([torch.ones(len(rows), prefix_len - 1, dtype=torch.long), mask_BT.long()], dim=1)
        with block_hooks(hf, hooks_for(prefix_len - 1, mask_BT)):
            logits = hf(input_ids=tokens_BT.to(device), attention_mask=attn_BT.to(device),
                        **cache_kwargs(hf, branch)).logits
        logp_BTV = logits.float().log_softmax(-1)
        out.append([logp_BTV[b, :len(c)].gather(-1, torch.tensor([list(c)], device=device).T).squeeze(-1).cpu()
                    for b, c in enumerate(conts)])
    return out
