"""Evaluation of trained models: retrieval, zero-shot classification and linear probes."""
