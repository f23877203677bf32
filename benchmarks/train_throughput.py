"""Training throughput of saekit's trainer against sae-lens' own SAETrainer, side by side.

Both train the same architecture, size, batch and initial weights on the same activation batches
in one process; we report tokens/s, the ratio, and the explained variance each reaches on held-out
activations with its L0 (for TopK the L0 is k for both, so the comparison is at equal L0).

    python benchmarks/train_throughput.py --activations /tmp/acts-l20 --hook blocks.20.hook_resid_post
    python benchmarks/train_throughput.py                 # synthetic activations, d_in 576
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from saekit import train as T
from saekit.activations import Activations


def synthetic(n: int, d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    atoms = torch.nn.functional.normalize(torch.randn(4 * d, d, generator=g), dim=-1)
    idx = torch.randint(0, 4 * d, (n, 24), generator=g)
    return (torch.rand(n, 24, generator=g)[..., None] * atoms[idx]).sum(1) + 0.05 * torch.randn(n, d, generator=g)


def held_out_quality(sae, x_ND: torch.Tensor) -> tuple[float, float]:
    with torch.no_grad():
        sae.eval()
        feats = sae.encode(x_ND)
        recon = sae.decode(feats)
        ev = float(T.explained_variance(x_ND, recon))
        l0 = float((feats != 0).sum(-1).float().mean())
    return ev, l0


def run_sae_lens(sae, batches, args) -> float:
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    cfg = SAETrainerConfig(total_training_samples=len(batches) * args.batch_size, train_batch_size_samples=args.batch_size,
                           lr=args.lr, lr_end=args.lr / 10, dead_feature_window=args.dead_window,
                           feature_sampling_window=10**9)
    trainer = SAETrainer(cfg, sae, iter(batches))
    start = time.perf_counter()
    trainer.fit()
    return time.perf_counter() - start


def run_saekit(sae, batches, args) -> float:
    sae_table = {"architecture": args.arch, "d_sae": args.d_sae}
    if args.arch in ("topk", "batchtopk"):
        sae_table |= {"k": args.k, "aux_loss_coefficient": args.aux}
    if args.arch == "topk":
        sae_table["fast_topk"] = not args.no_fast
    cfg = T.train_config(dict(sae=sae_table, batch_size=args.batch_size, training_tokens=len(batches) * args.batch_size,
                              lr=args.lr, checkpoint_every=0, dead_feature_window=args.dead_window,
                              dead_feature_handling="auxk" if args.arch != "standard" else "none"))
    state = T.TrainState(sae=sae, optimizer=torch.optim.Adam(sae.parameters(), lr=args.lr),
                         steps_since_fired_F=torch.zeros(args.d_sae), window_fired_F=torch.zeros(args.d_sae))
    start = time.perf_counter()
    for b in batches:
        T.train_step(state, b, cfg)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--activations", default="", help="harvest folder; empty: synthetic activations")
    p.add_argument("--hook", default="blocks.20.hook_resid_post")
    p.add_argument("--arch", default="topk", choices=["topk", "batchtopk", "standard", "jumprelu"])
    p.add_argument("--d-sae", type=int, default=4608)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--aux", type=float, default=1 / 32)
    p.add_argument("--dead-window", type=int, default=20)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--no-fast", action="store_true", help="saekit without the sparse TopK path")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.activations:
        src = T.HarvestSource(Activations.open(args.activations), args.hook)
        held = src.held_out(20_000)
    else:
        x = synthetic(args.steps * args.batch_size + 20_000, 576)
        src = T.TensorSource(x[20_000:], x[:20_000])
        held = x[:20_000]
    gen = src.batches(args.batch_size, seed=0)
    batches = [next(gen) for _ in range(args.steps)]
    # scale to mean norm sqrt(d) for both, as expected_average_only_in would
    scale = src.d_in ** 0.5 / float(torch.cat(batches[:4]).norm(dim=-1).mean())
    batches = [b * scale for b in batches]
    held = held * scale

    from saekit import sae as S
    torch.manual_seed(0)
    base = S.build_training_sae(args.arch, src.d_in, args.d_sae, k=args.k, aux_loss_coefficient=args.aux,
                                use_aux_loss=args.arch != "standard", l1_coefficient=1.0)
    results = {}
    for name, runner in (("sae-lens", run_sae_lens), ("saekit", run_saekit)):
        sae = copy.deepcopy(base)
        seconds = runner(sae, batches, args)
        ev, l0 = held_out_quality(sae, held)
        results[name] = (len(batches) * args.batch_size / seconds, ev, l0)
        print(f"{name:9s} {results[name][0]:9,.0f} tok/s   explained variance {ev:.4f} at L0 {l0:.1f}   ({seconds:.1f} s)")
    ratio = results["saekit"][0] / results["sae-lens"][0]
    print(f"arch {args.arch}  d_in {src.d_in}  d_sae {args.d_sae}  k {args.k}  batch {args.batch_size}  "
          f"steps {args.steps}  threads {torch.get_num_threads()}")
    print(f"speed ratio saekit / sae-lens: {ratio:.2f}x   EV difference: {results['saekit'][1] - results['sae-lens'][1]:+.4f}")


if __name__ == "__main__":
    main()
