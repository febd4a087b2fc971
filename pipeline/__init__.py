"""Offline tokenize-and-pack pipeline for masked-language-model training.

Data flow, one module each:
sources -> tokenization -> packing (+ split) -> shards -> manifest -> process (one unit)
-> runner / ray_runner -> inspection / verification -> train.
"""

__version__ = "0.1.0"
FORMAT_VERSION = 1
