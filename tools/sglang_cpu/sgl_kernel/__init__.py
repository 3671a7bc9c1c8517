"""Import stand-in for `sgl_kernel`, for serving SGLang on a CPU (the opt-in test lane only).

The `sgl_kernel` wheel on PyPI holds GPU kernels and fails to load without libcuda, and SGLang's
CPU engine imports eight `*_cpu` names from it at start-up (checked against sglang 0.5.23). None
of them is called for a dense Qwen3 served without speculative decoding, so each stand-in raises
if it ever is. Any other name is missing on purpose: a catch-all would make SGLang believe a GPU
kernel (e.g. `rmsnorm`) exists. Placed first on PYTHONPATH by tools/launch_sglang.py
--cpu-kernel-shim; never used on a GPU.
"""

_CPU_NAMES = (
    "copy_all_layer_kv_cache_cpu", "assign_req_to_token_pool_cpu", "assign_extend_cache_locs_cpu",
    "assign_draft_cache_locs_contiguous_cpu", "build_tree_kernel_efficient_cpu", "fill_accept_out_cache_loc_cpu",
    "fill_bonus_tokens_cpu", "verify_tree_greedy_cpu",
)


def _stand_in(name):
    def call(*args, **kwargs):
        raise NotImplementedError(f"sgl_kernel.{name} is a CPU stand-in (tools/sglang_cpu); it has no kernel")

    call.__name__ = name
    return call


globals().update({name: _stand_in(name) for name in _CPU_NAMES})
