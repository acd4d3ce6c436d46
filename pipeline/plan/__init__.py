"""Rows × candidates: identity (seeds, item ids, judge keys from one canonical encoding), the
plan file read a chunk at a time, and the work file of what is pending.
"""
