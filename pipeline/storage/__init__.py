"""One way to name data: input URIs (resolve, normalise, confine, bounded reads), the output
store, its lock with fencing, atomic writes, Parquet reading and the driver's temp folder.
"""
