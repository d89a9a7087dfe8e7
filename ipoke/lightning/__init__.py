"""Lightning side of ipoke: one LightningModule per trained stage, the data module and callbacks."""
