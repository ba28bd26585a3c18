"""Encoding passages into chunks: the encoder, the eager-attention view, the reconstruction pass."""
