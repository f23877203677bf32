"""Reading activations: forward hooks on a plain transformers model's blocks, under TransformerLens names."""

from __future__ import annotations

import torch

from saekit.model.structure import RESIDUAL_HOOK, decoder_layers


class _StopForward(Exception):
    pass


def residual_capture(hf, tokens_BT: torch.Tensor, mask_BT: torch.Tensor, hooks: list[str],
                     stop_at: int | None) -> dict[str, torch.Tensor]:
    """Residual-stream activations under TransformerLens names from a plain transformers model.

    blocks.L.hook_resid_pre is block L's input, blocks.L.hook_resid_post its output. Forward hooks
    on the blocks record them and the pass stops after block `stop_at - 1` (or runs the base
    model without its LM head): no bridge wrappers, no logits, so it costs a plain forward or less.
    """
    layers = decoder_layers(hf)
    captured: dict[str, torch.Tensor] = {}
    handles = []

    def post(name):
        def hook(module, args, output):
            captured[name] = (output[0] if isinstance(output, tuple) else output).detach()
        return hook

    def pre(name):
        def hook(module, args, kwargs):
            captured[name] = (args[0] if args else kwargs["hidden_states"]).detach()
        return hook

    try:
        for name in hooks:
            m = RESIDUAL_HOOK.match(name)
            assert m is not None, name  # callers pass residual hooks only (harvest.only_residual)
            layer, kind = layers[int(m.group(1))], m.group(2)
            handles.append(layer.register_forward_hook(post(name)) if kind == "post"
                           else layer.register_forward_pre_hook(pre(name), with_kwargs=True))
        if stop_at is not None:
            def stop(module, args, output):
                raise _StopForward
            handles.append(layers[stop_at - 1].register_forward_hook(stop))
        try:
            hf.get_decoder()(input_ids=tokens_BT, attention_mask=mask_BT, use_cache=False)
        except _StopForward:
            pass
    finally:
        for h in handles:
            h.remove()
    return captured

