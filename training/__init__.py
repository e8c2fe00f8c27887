"""manylabel training: data, features, head training, metrics, thresholds and export."""
