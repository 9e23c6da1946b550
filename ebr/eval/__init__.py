"""Evaluation: relevance and exact-search recall metrics, the nprobe x candidates sweep, reports."""
