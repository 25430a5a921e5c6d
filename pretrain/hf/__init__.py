"""Hugging Face interchange: one state dict from any checkpoint (consolidate.py), a
`LlamaForCausalLM` folder written from it (export.py) or read into a new run (import_.py),
the folder format itself (folder.py), and EleutherAI's lm-eval on an exported model
(lm_eval.py)."""
