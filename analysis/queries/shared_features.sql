-- Features selective for both emotions of a pair (here grief-stricken and sad: edit the pair below).
-- Selective: BH q < 0.05 and AUROC >= 0.8 for the emotion, one-vs-rest on the train split.
WITH pair(first_emotion, second_emotion) AS (VALUES ('grief-stricken', 'sad')),
selective AS (
    SELECT sae_id, corpus_id, feature, emotion, auroc, cohens_d
    FROM feature_emotion_stats
    WHERE q_value < 0.05 AND auroc >= 0.8
)
SELECT a.sae_id, a.feature, a.emotion AS first_emotion, b.emotion AS second_emotion,
       a.auroc AS first_auroc, b.auroc AS second_auroc, f.promoted_tokens[1:5] AS promotes
FROM selective a
JOIN selective b ON b.sae_id = a.sae_id AND b.corpus_id = a.corpus_id AND b.feature = a.feature
JOIN pair p ON a.emotion = p.first_emotion AND b.emotion = p.second_emotion
LEFT JOIN features f ON f.sae_id = a.sae_id AND f.feature = a.feature
ORDER BY least(a.auroc, b.auroc) DESC
