"""megatron_zppo: ZPPO (Zone of Proximal Policy Optimization) on Megatron-Core.

The method's pure parts (records, answers, prompts, reformulate, replay_buffer, advantages,
loss, batch) import only torch/numpy; Megatron is imported by `megatron_zppo.train` alone.
"""

__version__ = "0.1.0"
