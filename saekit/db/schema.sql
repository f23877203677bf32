-- The saekit feature database (DuckDB). Documented table by table in analysis/SCHEMA.md;
-- tests/test_db.py checks that document against a real database built from this file.
-- Every result row carries the run that produced it (runs.run_id); the positions a run counted (its token
-- rule) are stored once, on its runs row.
-- Columns added after a table's first release go at its end, and in the upgrade block at the bottom,
-- so a database made by an older saekit gets them when a writer opens it.

CREATE TABLE IF NOT EXISTS runs (
    run_id          VARCHAR PRIMARY KEY,
    kind            VARCHAR NOT NULL,
    config          JSON,
    versions        JSON,
    started_at      TIMESTAMP NOT NULL,
    finished_at     TIMESTAMP,
    status          VARCHAR NOT NULL,
    pid             INTEGER,
    host            VARCHAR,
    token_rule      JSON
);

CREATE TABLE IF NOT EXISTS models (
    model_id        VARCHAR PRIMARY KEY,
    source          VARCHAR,
    n_layers        INTEGER,
    d_model         INTEGER,
    d_vocab         INTEGER,
    run_id          VARCHAR
);

CREATE TABLE IF NOT EXISTS saes (
    sae_id              VARCHAR PRIMARY KEY,
    model_id            VARCHAR NOT NULL,
    hook                VARCHAR NOT NULL,
    layer               INTEGER,
    architecture        VARCHAR,
    d_in                INTEGER,
    d_sae               INTEGER,
    path                VARCHAR,
    config              JSON,
    explained_variance  DOUBLE,
    mean_l0             DOUBLE,
    dead_fraction       DOUBLE,
    dense_fraction      DOUBLE,
    ce_loss_recovered   DOUBLE,
    kl_divergence       DOUBLE,
    metrics             JSON,
    run_id              VARCHAR,
    counted_tokens      BIGINT,
    dropped_tokens      BIGINT,
    skipped_texts       JSON
);

CREATE TABLE IF NOT EXISTS corpora (
    corpus_id       VARCHAR PRIMARY KEY,
    source          VARCHAR,
    n_records       INTEGER,
    run_id          VARCHAR
);

CREATE TABLE IF NOT EXISTS emotions (
    emotion         VARCHAR PRIMARY KEY,
    cluster         VARCHAR,
    valence         DOUBLE,
    arousal         DOUBLE
);

CREATE TABLE IF NOT EXISTS stories (
    corpus_id       VARCHAR NOT NULL,
    story_id        VARCHAR NOT NULL,
    emotion         VARCHAR,
    topic           VARCHAR,
    narration       VARCHAR,
    split           VARCHAR,
    n_words         INTEGER,
    text            VARCHAR,
    run_id          VARCHAR,
    PRIMARY KEY (corpus_id, story_id)
);

CREATE TABLE IF NOT EXISTS features (
    sae_id          VARCHAR NOT NULL,
    feature         INTEGER NOT NULL,
    firing_rate     DOUBLE,
    mean_activation DOUBLE,
    max_activation  DOUBLE,
    promoted_tokens VARCHAR[],
    suppressed_tokens VARCHAR[],
    run_id          VARCHAR,
    promoted_logits DOUBLE[],
    suppressed_logits DOUBLE[],
    hist_counts     BIGINT[],
    PRIMARY KEY (sae_id, feature)
);

CREATE TABLE IF NOT EXISTS feature_emotion_stats (
    sae_id          VARCHAR NOT NULL,
    corpus_id       VARCHAR NOT NULL,
    feature         INTEGER NOT NULL,
    emotion         VARCHAR NOT NULL,
/*statistic columns: one per declaration in saekit/feature_stats.py*/
    run_id          VARCHAR,
    PRIMARY KEY (sae_id, corpus_id, feature, emotion)
);

CREATE TABLE IF NOT EXISTS feature_examples (
    sae_id          VARCHAR NOT NULL,
    corpus_id       VARCHAR NOT NULL,
    feature         INTEGER NOT NULL,
    kind            VARCHAR NOT NULL,
    example_rank    INTEGER NOT NULL,
    story_id        VARCHAR,
    emotion         VARCHAR,
    token_start     INTEGER,
    token_end       INTEGER,
    activation      DOUBLE,
    snippet         VARCHAR,
    token_ids       INTEGER[],
    tokens          VARCHAR[],
    token_activations DOUBLE[],
    run_id          VARCHAR,
    PRIMARY KEY (sae_id, corpus_id, feature, kind, example_rank)
);

CREATE TABLE IF NOT EXISTS emotion_vectors (
    model_id        VARCHAR NOT NULL,
    corpus_id       VARCHAR NOT NULL,
    hook            VARCHAR NOT NULL,
    emotion         VARCHAR NOT NULL,
    norm            DOUBLE,
    neutral_pcs     INTEGER,
    vector          FLOAT[],
    run_id          VARCHAR,
    promoted_tokens VARCHAR[],
    promoted_logits DOUBLE[],
    suppressed_tokens VARCHAR[],
    suppressed_logits DOUBLE[],
    PRIMARY KEY (model_id, corpus_id, hook, emotion)
);

CREATE TABLE IF NOT EXISTS story_means (
    model_id        VARCHAR NOT NULL,
    corpus_id       VARCHAR NOT NULL,
    hook            VARCHAR NOT NULL,
    mean            FLOAT[],
    n               INTEGER,
    run_id          VARCHAR,
    PRIMARY KEY (model_id, corpus_id, hook)
);

CREATE TABLE IF NOT EXISTS emotion_clusters (
    model_id        VARCHAR NOT NULL,
    corpus_id       VARCHAR NOT NULL,
    hook            VARCHAR NOT NULL,
    emotion         VARCHAR NOT NULL,
    cluster         INTEGER,
    k               INTEGER,
    seed            INTEGER,
    run_id          VARCHAR,
    PRIMARY KEY (model_id, corpus_id, hook, emotion)
);

CREATE TABLE IF NOT EXISTS emotion_similarity (
    model_id        VARCHAR NOT NULL,
    corpus_id       VARCHAR NOT NULL,
    hook            VARCHAR NOT NULL,
    emotion_a       VARCHAR NOT NULL,
    emotion_b       VARCHAR NOT NULL,
    cosine          DOUBLE,
    run_id          VARCHAR,
    PRIMARY KEY (model_id, corpus_id, hook, emotion_a, emotion_b)
);

CREATE TABLE IF NOT EXISTS emotion_linkage (
    model_id        VARCHAR NOT NULL,
    corpus_id       VARCHAR NOT NULL,
    hook            VARCHAR NOT NULL,
    step            INTEGER NOT NULL,
    left_node       INTEGER,
    right_node      INTEGER,
    distance        DOUBLE,
    size            INTEGER,
    run_id          VARCHAR,
    PRIMARY KEY (model_id, corpus_id, hook, step)
);

CREATE TABLE IF NOT EXISTS lens_checks (
    model_id        VARCHAR NOT NULL,
    corpus_id       VARCHAR NOT NULL,
    hook            VARCHAR NOT NULL,
    direction       VARCHAR NOT NULL,
    sae_id          VARCHAR,
    emotion         VARCHAR NOT NULL,
    feature         INTEGER,
    own_word_rank   INTEGER,
    own_word_in_top BOOLEAN,
    best_token      VARCHAR,
    random_rate     DOUBLE,
    top_n           INTEGER,
    n_random        INTEGER,
    set_hits        INTEGER,
    set_random_mean DOUBLE,
    set_p_value     DOUBLE,
    run_id          VARCHAR
);

CREATE TABLE IF NOT EXISTS vector_feature_alignment (
    sae_id          VARCHAR NOT NULL,
    corpus_id       VARCHAR NOT NULL,
    emotion         VARCHAR NOT NULL,
    feature         INTEGER NOT NULL,
    cosine          DOUBLE,
    alignment_rank  INTEGER,
    run_id          VARCHAR,
    PRIMARY KEY (sae_id, corpus_id, emotion, alignment_rank)
);

CREATE TABLE IF NOT EXISTS probe_results (
    run_id          VARCHAR NOT NULL,
    corpus_id       VARCHAR NOT NULL,
    hook            VARCHAR NOT NULL,
    sae_id          VARCHAR,
    method          VARCHAR NOT NULL,
    accuracy        DOUBLE,
    chance          DOUBLE,
    majority        DOUBLE,
    n_test          INTEGER,
    precision       JSON,
    recall          JSON,
    confusion       JSON,
    model_id        VARCHAR,
    train_corpus_id VARCHAR,
    centring        VARCHAR,
    ci_lo           DOUBLE,
    ci_hi           DOUBLE,
    unknown_emotions JSON,
    PRIMARY KEY (run_id, corpus_id, hook, method)
);

CREATE TABLE IF NOT EXISTS rating_geometry (
    model_id        VARCHAR NOT NULL,
    corpus_id       VARCHAR NOT NULL,
    hook            VARCHAR NOT NULL,
    target          VARCHAR NOT NULL,
    predictor       VARCHAR NOT NULL,
    r               DOUBLE,
    p_value         DOUBLE,
    ci_lo           DOUBLE,
    ci_hi           DOUBLE,
    r2              DOUBLE,
    explained_variance DOUBLE,
    n               INTEGER,
    run_id          VARCHAR,
    PRIMARY KEY (model_id, corpus_id, hook, target, predictor)
);

CREATE TABLE IF NOT EXISTS style_geometry (
    model_id        VARCHAR NOT NULL,
    corpus_id       VARCHAR NOT NULL,
    hook            VARCHAR NOT NULL,
    predictor       VARCHAR NOT NULL,
    target          VARCHAR NOT NULL,
    r               DOUBLE,
    p_value         DOUBLE,
    ci_lo           DOUBLE,
    ci_hi           DOUBLE,
    n               INTEGER,
    explained_variance DOUBLE,
    word_lists      JSON,
    run_id          VARCHAR,
    PRIMARY KEY (model_id, corpus_id, hook, predictor, target)
);

CREATE TABLE IF NOT EXISTS experiments (
    experiment_id   VARCHAR PRIMARY KEY,
    name            VARCHAR,
    model_id        VARCHAR,
    sae_id          VARCHAR,
    spec            JSON,
    created_at      TIMESTAMP,
    run_id          VARCHAR
);

CREATE TABLE IF NOT EXISTS intervention_results (
    experiment_id   VARCHAR NOT NULL,
    condition       VARCHAR NOT NULL,
    target          VARCHAR,
    strength        DOUBLE,
    is_control      BOOLEAN,
    prompt_id       VARCHAR,
    metric          VARCHAR NOT NULL,
    value           DOUBLE,
    run_id          VARCHAR
);

CREATE TABLE IF NOT EXISTS comparisons (
    comparison_id   VARCHAR PRIMARY KEY,
    side_a          VARCHAR NOT NULL,
    side_b          VARCHAR NOT NULL,
    corpus_id       VARCHAR NOT NULL,
    n_emotions      INTEGER,
    k               INTEGER,
    metrics         JSON,
    seed            INTEGER,
    n_permutations  INTEGER,
    created_at      TIMESTAMP,
    run_id          VARCHAR
);

-- upgrades of databases made by older versions (no-ops on new ones)
ALTER TABLE runs ADD COLUMN IF NOT EXISTS pid INTEGER;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS host VARCHAR;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS token_rule JSON;
ALTER TABLE probe_results ADD COLUMN IF NOT EXISTS model_id VARCHAR;
ALTER TABLE saes ADD COLUMN IF NOT EXISTS counted_tokens BIGINT;
ALTER TABLE saes ADD COLUMN IF NOT EXISTS dropped_tokens BIGINT;
ALTER TABLE saes ADD COLUMN IF NOT EXISTS skipped_texts JSON;
ALTER TABLE features ADD COLUMN IF NOT EXISTS promoted_logits DOUBLE[];
ALTER TABLE features ADD COLUMN IF NOT EXISTS suppressed_logits DOUBLE[];
ALTER TABLE features ADD COLUMN IF NOT EXISTS hist_counts BIGINT[];
/*statistic upgrades*/
ALTER TABLE emotion_vectors ADD COLUMN IF NOT EXISTS promoted_tokens VARCHAR[];
ALTER TABLE emotion_vectors ADD COLUMN IF NOT EXISTS promoted_logits DOUBLE[];
ALTER TABLE emotion_vectors ADD COLUMN IF NOT EXISTS suppressed_tokens VARCHAR[];
ALTER TABLE emotion_vectors ADD COLUMN IF NOT EXISTS suppressed_logits DOUBLE[];
ALTER TABLE probe_results ADD COLUMN IF NOT EXISTS train_corpus_id VARCHAR;
ALTER TABLE probe_results ADD COLUMN IF NOT EXISTS centring VARCHAR;
ALTER TABLE probe_results ADD COLUMN IF NOT EXISTS ci_lo DOUBLE;
ALTER TABLE probe_results ADD COLUMN IF NOT EXISTS ci_hi DOUBLE;
ALTER TABLE probe_results ADD COLUMN IF NOT EXISTS unknown_emotions JSON;

-- views (documented in analysis/SCHEMA.md like the tables); after the upgrades, whose columns they read
CREATE OR REPLACE VIEW top_features AS
SELECT s.sae_id, s.corpus_id, s.emotion, s.feature, s.selectivity_rank, /*statistics shown*/
       f.firing_rate, f.max_activation, f.promoted_tokens, f.promoted_logits, f.suppressed_tokens,
       f.suppressed_logits, x.story_id AS example_story, x.emotion AS example_emotion,
       x.snippet AS example_snippet, x.activation AS example_activation, s.run_id
FROM feature_emotion_stats s
LEFT JOIN features f ON f.sae_id = s.sae_id AND f.feature = s.feature
LEFT JOIN feature_examples x ON x.sae_id = s.sae_id AND x.corpus_id = s.corpus_id AND x.feature = s.feature
                            AND x.kind = 'story' AND x.example_rank = 1;

CREATE OR REPLACE VIEW experiment_effects AS
WITH baseline AS (
    SELECT experiment_id, prompt_id, metric, avg(value) AS value
    FROM intervention_results WHERE condition = 'none' GROUP BY ALL
), per_prompt AS (   -- change from the clean model per prompt (side effects: the KL itself), controls averaged
    SELECT r.experiment_id, r.condition, r.strength, r.metric, r.prompt_id, r.is_control,
           avg(r.value - CASE WHEN json_extract_string(e.spec, '$.spec.task') = 'side_effects' THEN 0
                              ELSE b.value END) AS change
    FROM intervention_results r
    JOIN experiments e ON e.experiment_id = r.experiment_id
    JOIN baseline b ON b.experiment_id = r.experiment_id AND b.prompt_id = r.prompt_id AND b.metric = r.metric
    WHERE r.condition <> 'none'
    GROUP BY ALL
), paired AS (
    SELECT t.experiment_id, t.condition, t.strength, t.metric, t.change AS effect, c.change AS control,
           t.change - c.change AS diff
    FROM per_prompt t
    LEFT JOIN per_prompt c ON c.is_control AND c.experiment_id = t.experiment_id AND c.condition = t.condition
                          AND c.strength IS NOT DISTINCT FROM t.strength AND c.metric = t.metric
                          AND c.prompt_id = t.prompt_id
    WHERE NOT t.is_control
)
SELECT p.experiment_id, e.name, p.condition, p.strength, p.metric, count(*) AS n_prompts,
       avg(effect) AS effect,
       avg(effect) - 1.96 * stddev_samp(effect) / sqrt(count(effect)) AS effect_lo,
       avg(effect) + 1.96 * stddev_samp(effect) / sqrt(count(effect)) AS effect_hi,
       avg(control) AS control,
       avg(diff) AS effect_minus_control,
       avg(diff) - 1.96 * stddev_samp(diff) / sqrt(count(diff)) AS diff_lo,
       avg(diff) + 1.96 * stddev_samp(diff) / sqrt(count(diff)) AS diff_hi,
       e.created_at
FROM paired p JOIN experiments e ON e.experiment_id = p.experiment_id
GROUP BY p.experiment_id, e.name, p.condition, p.strength, p.metric, e.created_at;

CREATE OR REPLACE VIEW latest_runs AS
SELECT run_id, kind, status, started_at, finished_at,
       epoch(finished_at) - epoch(started_at) AS seconds, config, versions
FROM runs
QUALIFY row_number() OVER (PARTITION BY kind ORDER BY started_at DESC) = 1;
