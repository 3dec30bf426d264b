"""`skyloc report`: plots and tracks from a run's fix records."""
