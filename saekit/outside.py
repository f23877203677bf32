"""Top passages from outside text: each feature's strongest windows in held-out broad text.

The paper checks its directions on "top-activating passages on outside text". Here the outside
text is the held-out part of a broad harvest (saekit.broad: documents the SAE never trained on,
and never in the ranking): per feature, the n documents with the highest counted token, each as a
window around that token with the feature's value on every token of the window. They go into
`feature_examples` with kind 'outside' and the broad corpus's id, beside the story examples, so the
feature page, the report and the Neuronpedia export show them the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from saekit.activations import Activations, held_out_documents
from saekit.errors import SaekitError
from saekit.evidence import _window, decode_tokens
from saekit.tokens import TokenRule

KIND = "outside"


class OutsideError(SaekitError, ValueError):
    """Outside examples cannot be computed for this SAE (the message says why)."""


@dataclass
class OutsideConfig:
    activations: str = ""
    """The broad harvest folder (its held-out documents are the outside text)."""
    sae: str = ""
    sae_id: str = ""
    db: str = "artifacts/saekit.duckdb"
    n_examples: int = 5
    """Windows per feature."""


@torch.no_grad()
def outside_examples(acts: Activations, hook: str, encode: Callable[[torch.Tensor], torch.Tensor], d_sae: int,
                     rule: TokenRule, tokenizer, n: int = 5, before: int = 8, after: int = 4,
                     chunk: int = 4096) -> list[dict[str, Any]]:
    """Rows of the n held-out documents with each feature's highest counted token, a window around it each."""
    docs = acts.documents
    held = sorted(held_out_documents(docs))
    if not held:
        return []
    row_of = {d: i for i, d in enumerate(held)}
    max_HF = torch.zeros(len(held), d_sae)
    arg_HF = torch.zeros(len(held), d_sae, dtype=torch.int32)

    def doc_latents(shard):
        """(doc, feats_TF with uncounted positions at 0, keep_T, token ids) of each held-out document in a shard."""
        doc_index = shard["doc_index"]
        for d in doc_index.unique().tolist():
            if d not in row_of:
                continue
            sel = (doc_index == d).nonzero().flatten()
            x_TD, pos_T = shard["acts"][sel].float(), shard["position"][sel]
            keep_T = rule.keep(pos_T, x_TD)
            feats_TF = torch.cat([encode(x_TD[i:i + chunk]).float() for i in range(0, len(x_TD), chunk)])
            feats_TF[~keep_T] = 0.0
            yield d, feats_TF, keep_T, shard["token_id"][sel]

    for shard in acts.iter_shard_tensors(hook):
        for d, feats_TF, _, _ in doc_latents(shard):
            max_HF[row_of[d]], arg_HF[row_of[d]] = feats_TF.max(0)
    vals_nF, idx_nF = max_HF.topk(min(n, len(held)), dim=0)
    requests: dict[int, list[tuple[int, int, float]]] = {}   # document -> (feature, rank, peak)
    for f in (vals_nF[0] > 0).nonzero().flatten().tolist():
        for r in range(vals_nF.shape[0]):
            if vals_nF[r, f] <= 0:
                break
            requests.setdefault(held[int(idx_nF[r, f])], []).append((f, r + 1, float(vals_nF[r, f])))
    rows = []
    for shard in acts.iter_shard_tensors(hook):
        for d, feats_TF, keep_T, ids_T in doc_latents(shard):
            for f, r, peak in requests.get(d, []):
                start, end = _window(keep_T, int(arg_HF[row_of[d], f]), before, after)
                ids = ids_T[start:end].tolist()
                rows.append({"feature": f, "kind": KIND, "example_rank": r, "story_id": docs[d]["id"],
                             "emotion": None, "token_start": start, "token_end": end, "activation": peak,
                             "token_ids": ids, "tokens": decode_tokens(tokenizer, ids),
                             "token_activations": feats_TF[start:end, f].tolist(), "snippet": tokenizer.decode(ids)})
    rows.sort(key=lambda r: (r["feature"], r["example_rank"]))
    return rows


def run_outside(cfg: OutsideConfig, sae, tokenizer, db) -> dict[str, Any]:
    """Write an SAE's outside examples into `feature_examples` (kind 'outside', the broad corpus's id),
    counting the positions the SAE was trained on; returns a summary."""
    from saekit.config import to_dict
    from saekit.db import corpus_id_of, sae_id_of
    from saekit.rank import resolve_token_rule
    from saekit.rank.config import RankConfig
    from saekit.sae import d_sae_of, hook_of

    acts = Activations.open(cfg.activations)
    hook = hook_of(sae)
    if hook is None:
        raise OutsideError(f"the SAE {cfg.sae} does not say which hook it reads (its metadata has no hook_name)")
    rule = resolve_token_rule(RankConfig(activations=cfg.activations, sae=cfg.sae), acts, hook)
    rows = outside_examples(acts, hook, sae.encode, d_sae_of(sae), rule, tokenizer, cfg.n_examples)
    corpus_id = corpus_id_of(acts.manifest["config"].get("corpus"))
    sae_id = sae_id_of(cfg.sae, cfg.sae_id or None)
    with db.run("outside_examples", to_dict(cfg), token_rule=rule.to_json()) as run:
        db.replace("feature_examples", {"sae_id": sae_id, "corpus_id": corpus_id, "kind": KIND},
                   [dict(r, sae_id=sae_id, corpus_id=corpus_id, run_id=run) for r in rows])
    held = held_out_documents(acts.documents)
    return {"outside corpus": corpus_id, "held-out documents": len(held),
            "held-out tokens": sum(acts.documents[i]["n_tokens"] for i in held),
            "features with outside examples": len({r["feature"] for r in rows}), "rows": len(rows)}
