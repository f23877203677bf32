"""What a study will cost before it runs: tokens, FLOPs, time, peak memory and disk per step.

Reads only the model's config.json (or the known sizes of the embedded models) and its tokenizer,
never the weights. Formulas (T tokens, d = d_model, F = SAE latents, k = active latents):
- forward up to the hooked layer: 2 x (parameters of the blocks run) x T (attention's T^2 term left out);
- SAE training, TopK: 6·d·F·T (dense encoder, forward + backward) + 6·k·d·T (sparse decoder);
  other architectures: 12·d·F·T (encoder and decoder dense); then its evaluation: 2·d·F per held-out
  token, and with lm_metrics 3 full forwards (clean, SAE spliced, ablated) of eval_docs texts;
- ranking: 2·d·F·T (encoding every harvested token), plus the logit lens 2·F·d·V of every feature and
  the own-word checks 2·R·d·V per emotion and direction set (R random directions; V the vocabulary);
- experiments: 2 x (all parameters) x T over every setting's prompts, as each task counts them
  (Task.cost; prompt lengths are assumptions, stated in each step's note: the rough part of the plan),
  plus greedy generation's one-token steps, each priced as one read of the weights from memory.
Time = FLOPs / a rate measured by timed matmuls on this device (one of the model's shape and dtype,
one of the SAE's), or a stated device profile; a generation step = weight bytes / a bandwidth
measured by a timed matrix-vector product larger than the caches.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

from saekit.config import ConfigError
from saekit.model import DEFAULT_MODEL, EMBEDDED, GEMMA_MODEL, QWEN_MODEL, TINY_MODEL, parse_dtype

SMOLLM2_135M = {"num_hidden_layers": 30, "hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9,
                "num_key_value_heads": 3, "vocab_size": 49152, "tie_word_embeddings": True}
GEMMA3_270M = {"num_hidden_layers": 18, "hidden_size": 640, "intermediate_size": 2048, "num_attention_heads": 4,
               "num_key_value_heads": 1, "vocab_size": 262144, "tie_word_embeddings": True}
# the embedded Qwen2.5-Coder-1.5B-Instruct: its GGUF's sizes; untied (the GGUF has its own output matrix)
QWEN25_CODER_15B = {"num_hidden_layers": 28, "hidden_size": 1536, "intermediate_size": 8960, "num_attention_heads": 12,
                    "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": False}
KNOWN_CONFIGS = {
    DEFAULT_MODEL: SMOLLM2_135M,
    GEMMA_MODEL: GEMMA3_270M,
    QWEN_MODEL: QWEN25_CODER_15B,
    # published config.json values, so the shipped GPU config plans without a download
    "Qwen/Qwen2.5-1.5B-Instruct": {"num_hidden_layers": 28, "hidden_size": 1536, "intermediate_size": 8960,
                                   "num_attention_heads": 12, "num_key_value_heads": 2, "vocab_size": 151936,
                                   "tie_word_embeddings": True},
    "meta-llama/Llama-3.2-1B-Instruct": {"num_hidden_layers": 16, "hidden_size": 2048, "intermediate_size": 8192,
                                         "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
                                         "tie_word_embeddings": True},
}
DEVICE_PROFILES = {
    # effective bf16 matmul rate (about 40% of the dense peak), memory, and memory bandwidth (about 80%
    # of the published peak) per device
    "h100": {"gflops": 400_000.0, "memory_gb": 80, "bandwidth_gbs": 2_700.0},
    "h200": {"gflops": 400_000.0, "memory_gb": 141, "bandwidth_gbs": 3_800.0},
    "a100": {"gflops": 125_000.0, "memory_gb": 80, "bandwidth_gbs": 1_600.0},
}
HEADER_BYTES = 4096
"""Allowance per safetensors file for its JSON header."""


@dataclass
class ModelShape:
    n_layers: int
    d_model: int
    d_ff: int
    n_heads: int
    n_kv_heads: int
    vocab: int
    tied: bool
    source: str

    def block_params(self) -> int:
        head = self.d_model // self.n_heads
        attn = 2 * self.d_model * self.d_model + 2 * self.d_model * self.n_kv_heads * head
        return attn + 3 * self.d_model * self.d_ff + 2 * self.d_model

    def decode_bytes(self, dtype_bytes: int) -> int:
        """What one generated token reads from memory: every block and the unembedding (one embedding row)."""
        return (self.n_layers * self.block_params() + self.vocab * self.d_model) * dtype_bytes

    def params(self, blocks: int | None = None) -> int:
        """All parameters, or the embedding and the first `blocks` blocks (what a stopped forward holds)."""
        embed = self.vocab * self.d_model
        if blocks is not None:
            return embed + blocks * self.block_params()
        return embed * (1 if self.tied else 2) + self.n_layers * self.block_params() + self.d_model


@dataclass
class StepPlan:
    name: str
    tokens: int
    flops: float
    seconds: float
    memory_bytes: int
    disk_bytes: int
    note: str = ""


@dataclass
class StudyPlan:
    model: str
    shape: ModelShape
    device: str
    rate_gflops: float
    sae_rate_gflops: float
    rate_source: str
    gpus: int
    steps: list[StepPlan]
    memory_available: int
    disk_free: int
    notes: list[str] = field(default_factory=list)

    @property
    def warnings(self) -> list[str]:
        out = []
        for s in self.steps:
            if s.memory_bytes > self.memory_available:
                out.append(f"{s.name}: needs {gb(s.memory_bytes)} of memory, {gb(self.memory_available)} available")
        disk = sum(s.disk_bytes for s in self.steps)
        if disk > self.disk_free:
            out.append(f"disk: the study writes {gb(disk)}, {gb(self.disk_free)} free")
        return out


def gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


# ---------------------------------------------------------------------------- the model


def model_shape(model: str) -> ModelShape:
    """Sizes from config.json (local folder, HF cache) or the known table; never the weights."""
    data, source = _model_config(model)
    try:
        heads = int(data["num_attention_heads"])
        return ModelShape(n_layers=int(data["num_hidden_layers"]), d_model=int(data["hidden_size"]),
                          d_ff=int(data["intermediate_size"]), n_heads=heads,
                          n_kv_heads=int(data.get("num_key_value_heads", heads)), vocab=int(data["vocab_size"]),
                          tied=bool(data.get("tie_word_embeddings", False)), source=source)
    except KeyError as e:
        raise ConfigError(f"{source} lacks {e.args[0]}: the plan reads a Llama/Qwen-style config.json") from None


def _model_config(model: str) -> tuple[dict, str]:
    if model.lower() in (DEFAULT_MODEL, "default"):
        return SMOLLM2_135M, "known sizes of the embedded SmolLM2-135M-Instruct"
    if model.lower() == TINY_MODEL:
        from saekit.model import tiny_model_folder

        model = str(tiny_model_folder())
    path = Path(model).expanduser()
    if path.is_dir():
        return _read_json(path / "config.json"), str(path / "config.json")
    if model in KNOWN_CONFIGS:
        return KNOWN_CONFIGS[model], f"known config.json values of {model}"
    from saekit.model import cached_config_path

    cached = cached_config_path(model)
    if cached is not None:
        return _read_json(cached), str(cached)
    raise ConfigError(f"cannot plan for model {model!r}: the plan needs its config.json, in a local folder "
                      f"(model = \"path/to/folder\") or the Hugging Face cache "
                      f"(`huggingface-cli download {model} config.json`)")


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"cannot plan: {path} does not exist (the plan needs the model's config.json)")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot plan: {path} is not readable JSON ({e})") from e


def plan_tokenizer(model: str):
    """The model's tokenizer without weights; SmolLM2's as a stated stand-in when it is not on disk."""
    from saekit.model import local_tokenizer, tokenizer_folder

    if model.lower() in (DEFAULT_MODEL, "default", TINY_MODEL):
        return local_tokenizer(tokenizer_folder()), "SmolLM2's tokenizer"
    if model.lower() in EMBEDDED:  # gemma3-270m, qwen2.5-coder-1.5b-instruct: on disk once converted
        from saekit.model import converted_folder

        model = str(converted_folder(model.lower()))
    try:
        return local_tokenizer(model), f"{model}'s tokenizer"
    except (OSError, ValueError):
        return (local_tokenizer(tokenizer_folder()),
                f"SmolLM2's tokenizer as a stand-in ({model}'s is not on disk; counts are estimates)")


# ---------------------------------------------------------------------------- the device


def _sync(device: str) -> None:
    """Wait for queued GPU work, so a timer stops when the work does."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _calls_per_second(a, b, device: str, seconds: float, windows: int = 5) -> float:
    """a @ b per second over about `seconds` after a warm-up call: the best of `windows` equal windows,
    since a brief stall from other work on a shared machine only ever slows a window down."""
    a @ b
    _sync(device)
    best = 0.0
    for _ in range(windows):
        n, started = 0, time.perf_counter()
        while n == 0 or time.perf_counter() - started < seconds / windows:
            a @ b
            n += 1
        _sync(device)
        best = max(best, n / (time.perf_counter() - started))
    return best


def measure_rate(d_in: int, d_out: int, dtype: str, device: str, tokens: int = 512, seconds: float = 0.3) -> float:
    """GFLOP/s of a (tokens x d_in) @ (d_in x d_out) matmul, timed for about `seconds`."""
    import torch

    x = torch.randn(tokens, d_in, dtype=parse_dtype(dtype), device=device)
    w = torch.randn(d_in, d_out, dtype=parse_dtype(dtype), device=device)
    return 2 * tokens * d_in * d_out * _calls_per_second(x, w, device, seconds) / 1e9


def measure_bandwidth(d: int, dtype: str, device: str, nbytes: int = 128 * 2**20, seconds: float = 0.3) -> float:
    """GB/s of a matrix-vector product over an `nbytes` matrix (larger than the caches), as a generated
    token reads the weights."""
    import torch

    dt = parse_dtype(dtype)
    w = torch.randn(max(nbytes // (d * dt.itemsize), 1), d, dtype=dt, device=device)
    x = torch.randn(d, dtype=dt, device=device)
    return w.numel() * dt.itemsize * _calls_per_second(w, x, device, seconds) / 1e9


def measure_train_rate(tcfg, d: int, F: int, device: str, steps: int = 3) -> float:
    """Effective GFLOP/s of the configured SAE's own training step (TopK, AuxK with an eighth of the
    latents dead, Adam), its fastest of `steps` on random inputs after a warm-up step: a matmul alone
    ran 2-3x faster than training does (README "Three models side by side", plan against measured)."""
    import torch

    from saekit.train.loop import init_state, train_step

    cfg = replace(tcfg, device=device)
    state = init_state(cfg, d)
    state.steps_since_fired_F[::8] = cfg.dead_feature_window
    x_BD = torch.randn(cfg.batch_size, d, device=device)
    train_step(state, x_BD, cfg)
    _sync(device)
    fastest = float("inf")
    for _ in range(steps):  # the fastest step, as _calls_per_second takes its best window
        started = time.perf_counter()
        train_step(state, x_BD, cfg)
        _sync(device)
        fastest = min(fastest, time.perf_counter() - started)
    return train_flops_per_token(cfg, d, F) * cfg.batch_size / fastest / 1e9


def train_flops_per_token(tcfg, d: int, F: int) -> float:
    """6·d·F + 6·k·d for TopK with its sparse decode, 12·d·F for a dense SAE."""
    k = tcfg.sae.sparse_latents()
    return (6.0 * d * F + 6.0 * k * d) if k else 12.0 * d * F


def available_memory(device: str, profile: str) -> int:
    if profile:
        return int(DEVICE_PROFILES[profile]["memory_gb"] * 1e9)
    if device.startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            return int(torch.cuda.mem_get_info()[0])
    from saekit.model.gguf import _available_memory  # MemAvailable, under a cgroup limit: free pages alone
                                                      # undercount after a harvest fills the page cache
    return _available_memory() or os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")



def free_disk(folder: str) -> int:
    p = Path(folder).resolve()
    while not p.exists():
        p = p.parent
    return shutil.disk_usage(p).free


# ---------------------------------------------------------------------------- the steps


def harvest_bytes(doc_tokens: list[int], d: int, hooks: int, token_hooks: int, store_bytes: int,
                  docs_per_shard: int) -> int:
    """Shards (token ids, positions, doc index: 3 x int64; per-token activations; float32 mean and max
    per document and hook) plus pooled.safetensors (the same mean and max again)."""
    tokens, docs = sum(doc_tokens), len(doc_tokens)
    shards = -(-docs // docs_per_shard)
    pooled = docs * hooks * 2 * d * 4
    return tokens * (24 + token_hooks * d * store_bytes) + 2 * pooled + (shards + 1) * HEADER_BYTES


def sae_bytes(d: int, F: int) -> int:
    return (2 * d * F + F + d) * 4


def check_plan_hooks(hooks: list[str], n_layers: int, model: str) -> None:
    """What harvest checks on the loaded model, from the model's config alone: every hook names a
    block the model has (blocks.0 .. blocks.{n-1}), and a residual hook is pre, mid or post."""
    from saekit.model import hook_layer

    for h in hooks:
        layer = hook_layer(h)
        if h.startswith("ln_final."):   # after the last block
            continue
        if layer is None or not 0 <= layer < n_layers or (
                "hook_resid_" in h and not re.fullmatch(r"blocks\.\d+\.hook_resid_(pre|mid|post)", h)):
            raise ConfigError(f"unknown hook {h!r} for {model} ({n_layers} layers): residual-stream hooks run "
                              f"blocks.0.hook_resid_pre ... blocks.{n_layers - 1}.hook_resid_post")


def plan_study(config: str | Path, profile: str = "", gpus: int = 1, overrides: dict | None = None) -> StudyPlan:
    """The plan of a study config (with command-line `overrides`); `profile` names a DEVICE_PROFILES entry
    instead of measuring."""
    from saekit.activations import harvest_records, tokenize
    from saekit.model import hook_layer
    from saekit.rank import RankConfig
    from saekit.study import StudyRun, load_study_config

    if profile and profile not in DEVICE_PROFILES:
        raise ConfigError(f"unknown device profile {profile!r}; choose one of {sorted(DEVICE_PROFILES)}")
    if gpus < 1:
        raise ConfigError(f"gpus must be at least 1, got {gpus}")
    cfg = load_study_config(config, overrides)
    run = StudyRun(cfg)
    shape = model_shape(cfg.model)
    hcfg = run.harvest_config()
    check_plan_hooks(hcfg.hooks, shape.n_layers, cfg.model)
    records = harvest_records(vars(hcfg))[: hcfg.limit or None]
    tok, tok_note = plan_tokenizer(cfg.model)
    with warnings.catch_warnings():  # the harvest itself warns about truncation; the plan counts it
        warnings.simplefilter("ignore")
        doc_tokens = [len(p.token_ids) for p in tokenize(tok, records, hcfg.max_tokens, hcfg.overflow)]
    T = sum(doc_tokens)
    stop = max(hook_layer(h) or 0 for h in hcfg.hooks) + 1
    tcfg = None if cfg.sae else run.train_config()
    F = tcfg.sae.resolved_d_sae(shape.d_model) if tcfg else shape.d_model * 8
    if profile:
        rate = sae_rate = DEVICE_PROFILES[profile]["gflops"]
        bandwidth = DEVICE_PROFILES[profile]["bandwidth_gbs"]
        rate_src = f"device profile {profile}"
    else:
        import torch

        dev = cfg.device if not cfg.device.startswith("cuda") or torch.cuda.is_available() else "cpu"
        rate = measure_rate(shape.d_model, shape.d_ff, cfg.dtype, dev)
        bandwidth = measure_bandwidth(shape.d_model, cfg.dtype, dev)
        if tcfg:
            sae_rate = measure_train_rate(tcfg, shape.d_model, F, dev)
            sae_src = f"{sae_rate:,.0f} GFLOP/s effective in timed training steps of the {F:,}-latent SAE"
        else:
            sae_rate = measure_rate(shape.d_model, F, "float32", dev)
            sae_src = f"{sae_rate:,.0f} GFLOP/s {shape.d_model}x{F} (SAE)"
        rate_src = (f"measured on {dev}: {shape.d_model}x{shape.d_ff} {cfg.dtype} matmul (model); {sae_src}; "
                    f"{bandwidth:,.1f} GB/s {cfg.dtype} matrix-vector product (generation)")
    mbytes = parse_dtype(cfg.dtype).itemsize
    steps = [_harvest_step(shape, hcfg, doc_tokens, stop, mbytes, rate, gpus, tok_note)]
    broad_tokens: list[int] = []
    if cfg.broad_corpus:
        from saekit.activations import token_ids
        from saekit.broad import load_broad, within_budget

        bcfg = run.broad_config()
        chosen = within_budget(load_broad(bcfg.corpus).records, lambda c: [len(t) for t in token_ids(tok, c)],
                               bcfg.max_total_tokens)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            broad_tokens = [len(p.token_ids) for p in tokenize(tok, chosen, bcfg.max_tokens, bcfg.overflow)]
        step = _harvest_step(shape, bcfg, broad_tokens, (hook_layer(cfg.hook) or 0) + 1, mbytes, rate, gpus, tok_note)
        steps.append(replace(step, name="harvest broad text"))
    if tcfg:
        eval_flops = _train_eval_flops(tcfg, shape, F, sum(doc_tokens) / len(doc_tokens))
        steps.append(_train_step(tcfg, shape.d_model, F, sae_rate, gpus, eval_flops / rate / 1e9))
    n_emotions = len({r.emotion for r in records if r.emotion})
    lens_sets = len(hcfg.hooks) + 1   # own-word checks: the vectors at every hook, the SAE's top features
    lens_dirs = F + lens_sets * n_emotions * RankConfig.lens_random
    steps.append(_rank_step(shape, F, T, len(doc_tokens), n_emotions, mbytes, rate,
                            lens_flops=2.0 * shape.d_model * shape.vocab * lens_dirs))
    if broad_tokens:   # the held-out seventh, encoded twice (peaks, then the chosen windows)
        T_out = sum(broad_tokens) // 7
        flops = 2 * 2.0 * shape.d_model * F * T_out
        steps.append(StepPlan("outside examples", T_out, flops, flops / rate / 1e9,
                              sae_bytes(shape.d_model, F) + len(broad_tokens) // 7 * F * 8, 0,
                              "per feature, the top windows of the held-out broad text"))
    steps += [_experiment_step(spec, shape, mbytes, rate, bandwidth) for spec in cfg.experiments]
    return StudyPlan(model=cfg.model, shape=shape, device=cfg.device, rate_gflops=rate, sae_rate_gflops=sae_rate,
                     rate_source=rate_src,
                     gpus=gpus, steps=steps, memory_available=available_memory(cfg.device, profile),
                     disk_free=free_disk(cfg.out), notes=[f"tokens counted with {tok_note}"])


def _harvest_step(shape: ModelShape, hcfg, doc_tokens: list[int], stop: int, mbytes: int, rate: float,
                  gpus: int, tok_note: str) -> StepPlan:
    T, d = sum(doc_tokens), shape.d_model
    flops = 2.0 * stop * shape.block_params() * T
    batch_tokens = hcfg.batch_size * hcfg.max_tokens
    acts = batch_tokens * (4 * d + 3 * shape.d_ff) * mbytes + hcfg.batch_size * shape.n_heads * hcfg.max_tokens ** 2 * mbytes
    shard_ram = min(hcfg.docs_per_shard, len(doc_tokens)) * hcfg.max_tokens * d * 4 * len(hcfg.hooks)
    disk = harvest_bytes(doc_tokens, d, len(hcfg.hooks), len(hcfg.stored_token_hooks),
                         parse_dtype(hcfg.store_dtype).itemsize, hcfg.docs_per_shard)
    return StepPlan("harvest activations", T, flops, flops / rate / 1e9 / gpus,
                    shape.params(stop) * mbytes + acts + shard_ram, disk,
                    f"{len(doc_tokens)} documents, forward through {stop} of {shape.n_layers} blocks")


def _train_eval_flops(tcfg, shape: ModelShape, F: int, mean_doc_tokens: float) -> float:
    lm = 3 * 2.0 * shape.params() * tcfg.eval_docs * min(mean_doc_tokens, tcfg.max_tokens) if tcfg.lm_metrics else 0
    return 2.0 * shape.d_model * F * tcfg.eval_tokens + lm


def _train_step(tcfg, d: int, F: int, rate: float, gpus: int, eval_seconds: float) -> StepPlan:
    T = tcfg.training_tokens
    k = tcfg.sae.sparse_latents()
    flops = train_flops_per_token(tcfg, d, F) * T
    params = sae_bytes(d, F)
    memory = 4 * params + tcfg.batch_size * F * 4 * 3 + tcfg.shuffle_buffer_tokens * d * 4
    checkpoints = min(tcfg.keep_checkpoints, max(T // tcfg.batch_size // max(tcfg.checkpoint_every, 1), 1))
    disk = params + F * 4 + checkpoints * (3 * params + 2 * F * 8)  # weights, sparsity, checkpoints with Adam state
    formula = "6·d·F·T + 6·k·d·T (TopK, sparse decode)" if k else "12·d·F·T (dense)"
    return StepPlan("train SAE", T, flops, flops / rate / 1e9 / gpus + eval_seconds, memory, disk,
                    f"{F:,} latents; {formula}; time includes the evaluation ({eval_seconds:.1f} s)")


def _rank_step(shape: ModelShape, F: int, T: int, docs: int, n_emotions: int, mbytes: int, rate: float,
               lens_flops: float) -> StepPlan:
    flops = 2.0 * shape.d_model * F * T + lens_flops
    memory = shape.params() * mbytes + sae_bytes(shape.d_model, F) + docs * F * 4 * 2
    db = F * n_emotions * 96 + docs * 4096
    return StepPlan("rank features and vectors", T, flops, flops / rate / 1e9, memory, db,
                    f"encoding {T:,} tokens, then the logit lens and own-word checks ({lens_flops:.2e} FLOPs); "
                    f"disk: database, about 96 bytes per feature x emotion row ({n_emotions} emotions)")


def _experiment_step(spec_path: str, shape: ModelShape, mbytes: int, rate: float, bandwidth: float) -> StepPlan:
    """The spec's own task says how many settings, prompts and tokens a run takes (Task.cost)."""
    from saekit.experiments.load import load_spec
    from saekit.experiments.tasks import TASKS

    spec = load_spec(spec_path)
    cost = TASKS[spec.task].cost(spec)
    T = cost.tokens
    flops = 2.0 * shape.params() * T
    memory = shape.params() * 4 + 8 * cost.tokens_per_prompt * shape.vocab * 4
    decode_s = cost.decode_steps * shape.decode_bytes(mbytes) / bandwidth / 1e9
    generated = f"; {cost.decode_steps:,} generated tokens, one weight read each" if cost.decode_steps else ""
    return StepPlan(f"experiment {Path(spec_path).stem}", T, flops, flops / rate / 1e9 + decode_s, memory, 0,
                    f"{'' if cost.counted else 'rough: '}{cost.settings} settings x {cost.prompts} "
                    f"{'passes' if cost.counted else 'prompts'} x ~{cost.tokens_per_prompt} tokens "
                    f"({'counted from the scenario' if cost.counted else 'assumed'}), full model{generated}")


# ---------------------------------------------------------------------------- printing


def format_plan(plan: StudyPlan) -> str:
    s = plan.shape
    lines = [f"plan for {plan.model} ({s.n_layers} layers, d_model {s.d_model}, {s.params() / 1e6:,.0f}M parameters; "
             f"{s.source}); device {plan.device}" + (f", {plan.gpus} GPUs (harvest and training split)" if plan.gpus > 1 else ""),
             f"rate: {plan.rate_gflops:,.0f} GFLOP/s ({plan.rate_source})",
             f"{'step':34} {'tokens':>13} {'FLOPs':>10} {'time':>10} {'peak mem':>10} {'disk':>10}"]
    for st in plan.steps:
        lines.append(f"{st.name:34} {st.tokens:>13,} {st.flops:>10.2e} {_duration(st.seconds):>10} "
                     f"{gb(st.memory_bytes):>10} {gb(st.disk_bytes):>10}")
    total_s = sum(st.seconds for st in plan.steps)
    lines.append(f"{'total':34} {'':>13} {sum(st.flops for st in plan.steps):>10.2e} {_duration(total_s):>10} "
                 f"{gb(max(st.memory_bytes for st in plan.steps)):>10} {gb(sum(st.disk_bytes for st in plan.steps)):>10}")
    lines += [f"  {st.name}: {st.note}" for st in plan.steps if st.note] + [f"  {n}" for n in plan.notes]
    lines.append(f"available: {gb(plan.memory_available)} memory, {gb(plan.disk_free)} disk free")
    lines += [f"WILL NOT FIT: {w}" for w in plan.warnings]
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"
