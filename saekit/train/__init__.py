"""Train an SAE from a TOML config on harvested activations, or on activations streamed from the model.

    config.py       TrainConfig (trainer fields; the SAE's in its `[sae]` table), loading, token rule
    sources.py      activation sources: tensors, a harvest folder, or streamed from the model
    loop.py         init_state, train_step, resample_dead, finish, train_sae
    checkpoints.py  the resumable training state on disk
    errors.py       TrainError and its kinds

The trainer sees only an `ActivationSource` (batches of activation vectors and a held-out set),
never the model. Output folder (cfg.out):
    cfg.json, sae_weights.safetensors, sparsity.safetensors     the SAE, in SAELens' format
    metrics.json                                                 quality on held-out tokens
    saekit_train.json                                            full config, seed, versions, timing
    checkpoints/step-00000200/{state.safetensors,state.json}     resumable training state
"""

from saekit.activations.sources import (  # noqa: F401
                                      HELD_OUT_SPLITS,
                                      ActivationSource,
                                      HarvestSource,
                                      StreamSource,
                                      TensorSource,
                                      first_rows,
                                      held_out_documents,
                                      shuffled_batches,
)
from saekit.train.checkpoints import (  # noqa: F401
                                      CHECKPOINTS,
                                      CKPT_STATE,
                                      CKPT_TENSORS,
                                      TrainState,
                                      config_identity,
                                      list_checkpoints,
                                      load_checkpoint,
                                      resume_from_latest,
                                      save_checkpoint,
)
from saekit.train.config import LEGACY_SAE_KEYS, TrainConfig, load_train_config, nest_flat_keys, sae_metadata, token_rule, train_config  # noqa: F401
from saekit.train.errors import CorruptCheckpoint, TrainError, TrainingDiverged  # noqa: F401
from saekit.train.loop import (  # noqa: F401
                                      METRICS_FILE,
                                      TRAIN_RECORD,
                                      StepReport,
                                      dead_mask,
                                      estimate_scale,
                                      explained_variance,
                                      finish,
                                      firing_counts,
                                      geometric_median,
                                      init_b_dec_at_median,
                                      init_state,
                                      lr_at,
                                      read_metrics,
                                      resample_dead,
                                      train_sae,
                                      train_step,
)
from saekit.train.sources import open_source  # noqa: F401
