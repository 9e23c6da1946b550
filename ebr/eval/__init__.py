"""Evaluation: relevance and exact-search recall metrics, the nprobe x k_coarse sweep, reports."""
