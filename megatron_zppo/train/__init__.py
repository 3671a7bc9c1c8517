"""The Megatron side of megatron_zppo: the only package that imports megatron.core / megatron.bridge.

Modules: cpu_compat (GPU-less shims), parallel (process groups), model (HF <-> Megatron through
Megatron-Bridge), logprobs (chunked, vocab-parallel response log-probs), trainer (PPO/SFT steps).
Nothing is imported here, so importing one module does not pull in Megatron for the others.
"""
