"""Quantizers: building and training the coarse IVF-PQ index (the seam where trainers plug in)."""
