-- The saekit feature database (DuckDB). Documented table by table in analysis/SCHEMA.md;
-- tests/test_db.py checks that document against a real database built from this file.
-- Every result row carries the run that produced it (runs.run_id).
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
    host            VARCHAR
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
    token_rule          JSON,
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
    token_rule      JSON,
    PRIMARY KEY (sae_id, feature)
);

CREATE TABLE IF NOT EXISTS feature_emotion_stats (
    sae_id          VARCHAR NOT NULL,
    corpus_id       VARCHAR NOT NULL,
    feature         INTEGER NOT NULL,
    emotion         VARCHAR NOT NULL,
    mean_in         DOUBLE,
    mean_out        DOUBLE,
    cohens_d        DOUBLE,
    auroc           DOUBLE,
    rate_in         DOUBLE,
    rate_out        DOUBLE,
    p_value         DOUBLE,
    q_value         DOUBLE,
    selectivity_rank INTEGER,
    run_id          VARCHAR,
    top_story_precision DOUBLE,
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
    PRIMARY KEY (run_id, corpus_id, hook, method)
);

CREATE TABLE IF NOT EXISTS experiments (
    experiment_id   VARCHAR PRIMARY KEY,
    name            VARCHAR,
    model_id        VARCHAR,
    sae_id          VARCHAR,
    spec            JSON,
    created_at      TIMESTAMP,
    run_id          VARCHAR,
    token_rule      JSON
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

-- upgrades of databases made by older versions (no-ops on new ones)
ALTER TABLE runs ADD COLUMN IF NOT EXISTS pid INTEGER;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS host VARCHAR;
ALTER TABLE probe_results ADD COLUMN IF NOT EXISTS model_id VARCHAR;
ALTER TABLE saes ADD COLUMN IF NOT EXISTS token_rule JSON;
ALTER TABLE saes ADD COLUMN IF NOT EXISTS counted_tokens BIGINT;
ALTER TABLE saes ADD COLUMN IF NOT EXISTS dropped_tokens BIGINT;
ALTER TABLE saes ADD COLUMN IF NOT EXISTS skipped_texts JSON;
ALTER TABLE features ADD COLUMN IF NOT EXISTS promoted_logits DOUBLE[];
ALTER TABLE features ADD COLUMN IF NOT EXISTS suppressed_logits DOUBLE[];
ALTER TABLE features ADD COLUMN IF NOT EXISTS hist_counts BIGINT[];
ALTER TABLE features ADD COLUMN IF NOT EXISTS token_rule JSON;
ALTER TABLE feature_emotion_stats ADD COLUMN IF NOT EXISTS top_story_precision DOUBLE;
ALTER TABLE emotion_vectors ADD COLUMN IF NOT EXISTS promoted_tokens VARCHAR[];
ALTER TABLE emotion_vectors ADD COLUMN IF NOT EXISTS promoted_logits DOUBLE[];
ALTER TABLE emotion_vectors ADD COLUMN IF NOT EXISTS suppressed_tokens VARCHAR[];
ALTER TABLE emotion_vectors ADD COLUMN IF NOT EXISTS suppressed_logits DOUBLE[];
ALTER TABLE experiments ADD COLUMN IF NOT EXISTS token_rule JSON;
