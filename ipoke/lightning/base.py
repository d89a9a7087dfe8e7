"""Behaviour shared by every ipoke training module."""

from __future__ import annotations

from typing import Any

import lightning as L

from ipoke.models.base import NETWORKS_KEY, network_specs


class NetworkCheckpointMixin(L.LightningModule):
    """Writes the build spec of every :class:`~ipoke.models.base.SavableModule` attribute into checkpoints.

    With it, ``VideoAutoencoder.from_checkpoint("last.ckpt")`` (or any network class) rebuilds the network from
    the checkpoint alone, without the YAML it was trained from.
    """

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[NETWORKS_KEY] = network_specs(self)
