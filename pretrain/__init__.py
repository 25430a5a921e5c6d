"""Siyada: a from-scratch LLM pretraining stack (config, model, data, engines, training)."""

__version__ = "0.1.0"
