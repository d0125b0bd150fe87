"""The application built on the library: the command line (`cli`), the training loop (`train`),
overlap-tile prediction (`predict`), data (`data`), losses and metrics (`losses`), checkpoints
(`checkpoint`) and torchrun/DDP helpers (`distributed`).

The library (`unet_fast.UNet`, `unet_fast.ops`, the backends) never imports this package.
"""
