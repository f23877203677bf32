-- Emotions for which an SAE has no selective feature (none with BH q < 0.05 and AUROC >= 0.8),
-- with the best it has: the emotion is not (or not cleanly) represented by single features.
SELECT sae_id, corpus_id, emotion, max(auroc) AS best_auroc, min(q_value) AS best_q_value
FROM feature_emotion_stats
GROUP BY sae_id, corpus_id, emotion
HAVING count(*) FILTER (WHERE q_value < 0.05 AND auroc >= 0.8) = 0
ORDER BY sae_id, best_auroc DESC
