"""`python -m pipeline.train ...` and `torchrun --nproc_per_node=N -m pipeline.train ...`."""

import sys

from pipeline.train.loop import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
