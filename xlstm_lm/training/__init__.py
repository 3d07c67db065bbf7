"""Lightning training: the LightningModule, optimizer and schedule, trainer construction, callbacks."""
