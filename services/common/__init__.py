"""What every Parley service shares: the bus contract, settings, logging, metrics, storage."""
