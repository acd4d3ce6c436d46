"""What the user hands us: the job spec (TOML → typed config), the one table of limits and
vocabularies, the manifest and styles checks (every problem by file, row, id, column and value),
the Arrow schemas and column names.

The job spec: `load` (job file → `config.JobConfig`) reads through `job_file`, resolves with
`pipeline.storage.paths` and checks values with `job_checks`. The tables: `manifest.load_inputs` reads through
`parquet`, types through `columns`, checks `styles`, input files (`inputs`) and rows with the
`checks` machinery and the row → style → job `fallbacks`. Shared by all: `limits`, `suggest`,
`schema`; `tokens` measures prompts against the text encoder's window.
"""
