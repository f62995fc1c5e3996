-- batchsite campaign ledger, schema version 1: campaigns, rounds, submissions, units,
-- transitions and decisions. One text for SQLite and PostgreSQL: {timestamp}, {json} and
-- {serial} are the only dialect words (batchsite.ledger.store.Dialect). Statuses are plain
-- text, never database ENUMs (WMS2's rule: a new status needs no migration).

-- one row per DAG run of a campaign DAG
CREATE TABLE campaigns (
    dag_id        TEXT NOT NULL,
    run_id        TEXT NOT NULL,
    site_conn_id  TEXT,
    params        {json},
    status        TEXT NOT NULL,          -- running | finished | failed | review
    reason        TEXT,
    created_at    {timestamp} NOT NULL,
    updated_at    {timestamp} NOT NULL,
    finished_at   {timestamp},
    PRIMARY KEY (dag_id, run_id)
);

-- one row per round (job key): a submit task's mapped instance; rescues of it are submissions
CREATE TABLE rounds (
    round_key       TEXT PRIMARY KEY,
    dag_id          TEXT NOT NULL,
    run_id          TEXT NOT NULL,
    task_id         TEXT NOT NULL,
    map_index       INTEGER NOT NULL,
    label           TEXT NOT NULL,
    site_conn_id    TEXT NOT NULL,
    scheduler       TEXT NOT NULL,
    workdir         TEXT NOT NULL,
    n_units         INTEGER NOT NULL,
    status          TEXT NOT NULL,        -- waiting | running | held | succeeded | failed
    counts          {json},               -- units per JobState at the last observed change
    attempts        INTEGER NOT NULL,     -- submissions (1 + rescues)
    decision        TEXT,                 -- the failure policy's last word (success, rescue, review, ...)
    fanin_state     TEXT,
    submitted_at    {timestamp} NOT NULL,
    updated_at      {timestamp} NOT NULL,
    finished_at     {timestamp},
    FOREIGN KEY (dag_id, run_id) REFERENCES campaigns (dag_id, run_id)
);
CREATE INDEX rounds_by_campaign ON rounds (dag_id, run_id);

-- every submission of a round: the first one and each rescue (attempt 1, 2, ...)
CREATE TABLE submissions (
    round_key     TEXT NOT NULL REFERENCES rounds (round_key),
    attempt       INTEGER NOT NULL,
    fanout_id     TEXT NOT NULL,          -- Slurm array job id / DAGMan cluster / local host:pid
    fanin_id      TEXT,
    schedd        TEXT,
    indices       TEXT NOT NULL,          -- the units submitted, Slurm array notation
    adopted       BOOLEAN NOT NULL,       -- re-attached to an existing submission
    reason        TEXT,
    submitted_at  {timestamp} NOT NULL,
    PRIMARY KEY (round_key, attempt)
);

-- each unit's final state, written once when its round ends (one batch insert per round)
CREATE TABLE units (
    round_key     TEXT NOT NULL REFERENCES rounds (round_key),
    unit_index    INTEGER NOT NULL,
    state         TEXT NOT NULL,
    native        TEXT,
    exit_code     INTEGER,
    reason        TEXT,
    timed_out     BOOLEAN NOT NULL,
    wall_seconds  DOUBLE PRECISION,       -- measured usage; NULL where the scheduler gave none
    cpu_seconds   DOUBLE PRECISION,
    max_rss_mb    DOUBLE PRECISION,
    usage_source  TEXT,                   -- sacct | condor_history | ... ; NULL: not measured
    finished_at   {timestamp} NOT NULL,
    PRIMARY KEY (round_key, unit_index)
);

-- status changes: of a campaign (round_key NULL) or of a round's counts, as polls observed them
CREATE TABLE transitions (
    id            {serial},
    dag_id        TEXT NOT NULL,
    run_id        TEXT NOT NULL,
    round_key     TEXT,
    from_status   TEXT,
    to_status     TEXT NOT NULL,
    counts        {json},
    at            {timestamp} NOT NULL,
    FOREIGN KEY (dag_id, run_id) REFERENCES campaigns (dag_id, run_id)
);
CREATE INDEX transitions_by_campaign ON transitions (dag_id, run_id);

-- replan decisions with their inputs, failure-policy decisions and human choices
CREATE TABLE decisions (
    id            {serial},
    dag_id        TEXT NOT NULL,
    run_id        TEXT NOT NULL,
    task_id       TEXT,
    round_key     TEXT,
    kind          TEXT NOT NULL,          -- replan | failure-policy | human
    action        TEXT NOT NULL,
    reason        TEXT NOT NULL,
    inputs        {json},
    actor         TEXT NOT NULL,          -- batchsite, or the person who chose
    decided_at    {timestamp} NOT NULL,
    FOREIGN KEY (dag_id, run_id) REFERENCES campaigns (dag_id, run_id)
);
CREATE INDEX decisions_by_campaign ON decisions (dag_id, run_id);
