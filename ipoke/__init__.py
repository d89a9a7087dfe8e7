"""ipoke: poke a still image and get plausible, diverse videos of how the object moves.

Subpackages:
    ipoke.data       prepared-dataset format, synthetic poking generator, datasets, pokes, augmentation
    ipoke.models     plain ``nn.Module`` networks (video autoencoder, encoders, discriminators, cINN)
    ipoke.losses     reconstruction, adversarial and flow losses
    ipoke.metrics    FVD, LPIPS, SSIM/PSNR, diversity, control accuracy
    ipoke.lightning  LightningModules, the data module and callbacks
    ipoke.cli        the ``ipoke`` command
"""

__version__ = "0.1.0"
