"""The [sae] table: one config class per architecture, picked by `architecture`; flat configs still load."""

import dataclasses
import json
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from saekit import sae as S
from saekit import train as T
from saekit.config import ConfigError, parse_assignments

pytestmark = pytest.mark.usefixtures("one_thread")

TRAINER = ('model = "tiny"\nhook = "blocks.1.hook_resid_post"\nbatch_size = 64\ntraining_tokens = 768\nlr = 3e-3\n'
           'checkpoint_every = 0\nlm_metrics = false\ndead_feature_window = 4\neval_tokens = 100\n')


def source(d=16, n=1600):
    g = torch.Generator().manual_seed(0)
    x_ND = torch.randn(n, d, generator=g) * (1 + torch.rand(n, 1, generator=g))
    return T.TensorSource(x_ND[: n * 9 // 10], x_ND[n * 9 // 10:], chunk_tokens=400)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_a_flat_config_and_its_nested_form_train_to_identical_weights(tmp_path):
    flat = write(tmp_path / "flat.toml", TRAINER + 'architecture = "topk"\nd_sae = 32\nk = 2\naux_loss_coefficient = 0.5\n')
    nested = write(tmp_path / "nested.toml", TRAINER + '[sae]\narchitecture = "topk"\nd_sae = 32\nk = 2\n'
                   'aux_loss_coefficient = 0.5\n')
    with pytest.warns(FutureWarning, match=r"flat.toml: SAE keys at the top level are deprecated; put them in an "
                                           r"\[sae\] table \(architecture -> sae.architecture, d_sae -> sae.d_sae, "
                                           r"k -> sae.k, aux_loss_coefficient -> sae.aux_loss_coefficient\)"):
        old = T.load_train_config(flat, {"out": str(tmp_path / "a")})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the nested form loads without any warning
        new = T.load_train_config(nested, {"out": str(tmp_path / "b")})
    assert old.sae == new.sae == S.TopKConfig(d_sae=32, k=2, aux_loss_coefficient=0.5)
    a, b = (load_file(str(T.train_sae(c, activations=source()) / "sae_weights.safetensors")) for c in (old, new))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    record = json.loads((tmp_path / "b" / T.TRAIN_RECORD).read_text())
    assert record["config"]["sae"] == {"architecture": "topk", "d_sae": 32, "expansion_factor": 8, "k": 2.0,
                                       "aux_loss_coefficient": 0.5, "k_aux": 0, "aux_on_rank_score": False,
                                       "fast_topk": True}  # the full resolved table


def test_flat_keys_of_another_architecture_are_dropped_and_named(tmp_path):
    path = write(tmp_path / "t.toml", 'architecture = "jumprelu"\nk = 3\nl1_coefficient = 2.0\nl0_coefficient = 0.5\n')
    with pytest.warns(FutureWarning, match=r"dropped \['k', 'l1_coefficient'\]: the jumprelu SAE has no such fields"):
        cfg = T.load_train_config(path)
    assert cfg.sae == S.JumpReLUConfig(l0_coefficient=0.5)


@pytest.mark.parametrize("table,match", [
    ('architecture = "topk"\nl1_coefficient = 1.0', r"t.toml.sae: unknown field\(s\) \['l1_coefficient'\]"),
    ('architecture = "standard"\nk = 4', r"t.toml.sae: unknown field\(s\) \['k'\]"),
    ('architecture = "gated"', r"t.toml.sae.architecture: unknown architecture 'gated'; choose one of \['topk'"),
    ('architecture = "topk"\nk = 2.5', "topk needs a whole k"),
    ('architecture = "batchtopk"\nk = 0', "t.toml.sae: k must be positive"),
    ('architecture = "jumprelu"\njumprelu_bandwidth = 0', "jumprelu_bandwidth must be positive"),
])
def test_the_sae_table_is_checked_by_its_architecture(tmp_path, table, match):
    path = write(tmp_path / "t.toml", f"[sae]\n{table}\n")
    with pytest.raises(ConfigError, match=match):
        T.load_train_config(path)


def test_a_key_both_flat_and_in_the_table_is_refused(tmp_path):
    path = write(tmp_path / "t.toml", 'k = 4\n[sae]\nk = 8\n')
    with pytest.raises(ConfigError, match=r"\['k'\] given both at the top level and in \[sae\]"):
        T.load_train_config(path)


def test_overrides_reach_the_table_by_dotted_keys_and_flat_ones_still_work(tmp_path):
    path = write(tmp_path / "t.toml", '[sae]\narchitecture = "topk"\nk = 8\n')
    cfg = T.load_train_config(path, parse_assignments(["sae.k=16", "lr=1e-3", "out=somewhere"]))
    assert (cfg.sae.k, cfg.lr, cfg.out) == (16, 1e-3, "somewhere")
    with pytest.warns(FutureWarning, match=r"k -> sae.k"):
        assert T.load_train_config(path, {"k": 4}).sae.k == 4  # an override wins over the file
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_assignments(["sae.k"])


def test_every_registered_architecture_builds_its_own_sae():
    assert list(S.ARCHITECTURES) == ["topk", "batchtopk", "jumprelu", "standard"]
    for name, cls in S.ARCHITECTURES.items():
        cfg = cls()
        assert cfg.architecture == name and S.sae_config({"architecture": name}) == cfg
        sae = S.build_training_sae(cfg, 8, 16)
        assert sae.cfg.architecture() == name and S.d_sae_of(sae) == 16


@dataclasses.dataclass
class Doubled(S.StandardConfig):
    """A made-up architecture: the standard SAE with its own field, as a plug-in would add one."""
    architecture: str = dataclasses.field(default="doubled", init=False)
    width_note: int = 2


def test_a_new_architecture_is_one_class_and_one_register_line(tmp_path):
    S.register(Doubled)
    try:
        path = write(tmp_path / "t.toml", TRAINER + 'dead_feature_handling = "none"\n'
                     '[sae]\narchitecture = "doubled"\nd_sae = 32\nwidth_note = 3\n')
        cfg = T.load_train_config(path, {"out": str(tmp_path / "sae")})
        assert isinstance(cfg.sae, Doubled) and cfg.sae.width_note == 3
        out = T.train_sae(cfg, activations=source())
        assert json.loads((out / T.TRAIN_RECORD).read_text())["config"]["sae"]["width_note"] == 3
    finally:
        del S.ARCHITECTURES["doubled"]


def test_the_train_command_takes_set_overrides(tmp_path):
    from typer.testing import CliRunner

    from saekit.cli import app

    path = write(tmp_path / "t.toml", TRAINER + "[sae]\nd_sae = 32\nk = 2\n")
    result = CliRunner().invoke(app, ["train", str(path), "--set", "sae.k=99", "--out", str(tmp_path / "sae")])
    assert result.exit_code != 0  # the override reached [sae]:
    assert "t.toml.sae: k (99.0) must be less than d_sae (32)" in result.output
