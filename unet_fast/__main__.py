"""`python -m unet_fast ...` and `torchrun --nproc_per_node N -m unet_fast train ...`."""
import sys

from .app.cli import main

if __name__ == "__main__":
    sys.exit(main())
