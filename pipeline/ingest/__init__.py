"""Inputs -> documents -> token ids: planning work units, listing and checking sources,
streaming their rows, and the tokenizer.
"""
