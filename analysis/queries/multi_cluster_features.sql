-- Features selective (BH q < 0.05, AUROC >= 0.8) for emotions of more than one of the paper's clusters:
-- candidates for broader concepts (valence, arousal) rather than single emotions.
SELECT s.sae_id, s.feature, count(DISTINCT e.cluster) AS n_clusters,
       list(DISTINCT e.cluster ORDER BY e.cluster) AS clusters,
       list(s.emotion ORDER BY s.emotion) AS emotions, max(s.auroc) AS best_auroc
FROM feature_emotion_stats s
JOIN emotions e ON e.emotion = s.emotion
WHERE s.q_value < 0.05 AND s.auroc >= 0.8
GROUP BY s.sae_id, s.feature
HAVING count(DISTINCT e.cluster) > 1
ORDER BY n_clusters DESC, best_auroc DESC
