"""One job from start to finish (lock, validate, plan, resume, stream, commit, compact,
summarise), the Ray runner (the only module that imports ray), shards and results, progress.
"""
