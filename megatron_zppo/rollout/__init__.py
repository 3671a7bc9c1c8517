"""Rollout engines: one interface, an in-process engine (HF transformers) and SGLang over HTTP."""
