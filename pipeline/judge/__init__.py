"""Accept/reject rules as pure functions of stored measurements, the job's filters and reviewer
decisions: thresholds, ranking and places. Re-judging needs no model.
"""
