"""Plain ``nn.Module`` networks of ipoke (no Lightning imports here).

Videos are ``(B, T, C, H, W)`` tensors in [-1, 1]; images ``(B, C, H, W)``; latent maps ``(B, C, 8, 8)``.
"""
