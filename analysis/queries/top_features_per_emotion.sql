-- The five most selective SAE features for each emotion, with what they promote and their top story.
SELECT sae_id, emotion, selectivity_rank, feature, auroc, cohens_d, q_value,
       promoted_tokens[1:5] AS promotes, example_snippet
FROM top_features
WHERE selectivity_rank <= 5
ORDER BY sae_id, emotion, selectivity_rank
