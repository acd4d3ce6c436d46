"""What the user hands us: the job spec (TOML → typed config), the one table of limits and
vocabularies, the manifest and styles checks (every problem by file, row, id, column and value),
the Arrow schemas and column names.
"""
