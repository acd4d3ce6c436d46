"""Rows × candidates: each row resolved (rows), identity (seeds, item ids, judge keys from one
canonical encoding), children (refinements), the plan file read a chunk at a time (build), and
the work file of what is pending (work).
"""
