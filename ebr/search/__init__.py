"""Search: coarse IVF-PQ candidates, exact re-rank from the dense store, brute-force reference."""
