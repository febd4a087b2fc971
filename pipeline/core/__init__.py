"""Pure numpy: packing, the validation split, the token ledger, histograms.

Imports nothing of the package, so every stage and reader can build on it.
"""
