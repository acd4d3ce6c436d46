"""Every accept/reject rule, as pure functions of stored measurements, the job's filters and
reviewer decisions (no models, no I/O: re-judging needs no model). The stages call these; they
decide nothing themselves.

- rules.py: the thresholds (prompt, image, CLIP), the moderation verdict, re-judging;
- select.py: ranking, places, the reserve of runners-up;
- files.py: which pixels travel to the writer, which files are written or stay;
- review.py: what a reviewer's decision may do (approve never passes moderation);
- rounds.py: when rejects ask for a new round of candidates;
- outcome.py: how a verdict is written on a record (status, reason, reason_code).
"""
