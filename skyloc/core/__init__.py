"""What training, export and the onboard runtime share: errors, atomic writes, sidecars, options, geodesy, the model input contract, retrieval metrics (torch-free)."""
