"""Audio: input decoding and resampling, log-mel features, the AuT encoder."""
