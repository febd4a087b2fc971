"""`pipeline run`: one work unit end to end (process.py), and what drives units: the local and
Ray runners, stitching of leftovers, the output folder's claim, lock and resume.
"""
