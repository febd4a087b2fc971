"""The command line (`pipeline run | inspect | verify | train | demo`) and the read-only
commands: inspect and verify read the format, never the writer.
"""
