"""Tiny offline models for the CPU demo and the tests; nothing here downloads anything or imports Megatron.

Modules: shapes (the one set of tiny model shapes: plain dicts of HF config fields), models (the
toy tokenizer and random Qwen3 / Qwen3.5-VL checkpoints), corpus (the supervised mix that makes the
demo's teacher and students). Nothing is imported here, so reading a shape pulls in no model library.
"""
