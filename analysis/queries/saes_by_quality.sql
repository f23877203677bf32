-- SAEs ranked by quality: LM loss recovered with the SAE spliced in, then explained variance
-- (held-out tokens, from the training metrics), with sparsity and dead latents beside them.
SELECT rank() OVER (ORDER BY ce_loss_recovered DESC NULLS LAST, explained_variance DESC NULLS LAST) AS quality_rank,
       sae_id, model_id, hook, architecture, d_sae, ce_loss_recovered, explained_variance, mean_l0,
       dead_fraction, kl_divergence
FROM saes
ORDER BY quality_rank, sae_id
