-- Experiment settings whose effect beats its matched random control: the 95% interval of
-- (effect - control) over prompts lies above 0. Normal-approximation intervals (experiment_effects);
-- `saekit experiment report` gives bootstrap intervals.
SELECT name, experiment_id, condition, strength, metric, n_prompts, effect, control,
       effect_minus_control, diff_lo, diff_hi
FROM experiment_effects
WHERE diff_lo > 0
ORDER BY name, condition, strength, metric
