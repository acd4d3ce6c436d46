"""What a person reviews and decides: the HTML report, reviewer decisions in and out, cost
estimates and totals, and verification of a finished output.
"""
