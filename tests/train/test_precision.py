"""megatron_zppo.train.precision: every refusal names the setting and the gap, and the Megatron mapping
builds real TransformerConfig / DistributedDataParallelConfig objects (no GPU needed for either)."""

import pytest

from megatron_zppo.train.precision import (
    FP8_RECIPES,
    PrecisionConfig,
    PrecisionError,
    check_precision,
    ddp_config_fields,
    detect,
    transformer_config_fields,
)

H100, ADA, A100, B200, RTX5090 = (9, 0), (8, 9), (8, 0), (10, 0), (12, 0)
NEW_TE = "2.8.0+9f3c1b2"


def refuse(cfg, te, gpu, **kw) -> str:
    with pytest.raises(PrecisionError) as err:
        check_precision(cfg, te, gpu, **kw)
    return str(err.value)


# -- the config itself --------------------------------------------------------------------------
def test_dtype_aliases_normalise_to_one_spelling():
    assert PrecisionConfig("bfloat16").dtype == "bf16"
    assert PrecisionConfig("float32").dtype == "fp32"
    assert PrecisionConfig("bf16").torch_dtype_name == "bfloat16"


@pytest.mark.parametrize("kwargs, words", [
    ({"dtype": "fp16"}, ["precision.dtype", "'fp16'"]),
    ({"fp8": "nvfp4"}, ["precision.fp8", "'nvfp4'"]),
    ({"fp8_param_gather": True}, ["fp8_param_gather", "none"]),
])
def test_unknown_values_are_refused_by_name(kwargs, words):
    with pytest.raises(PrecisionError) as err:
        PrecisionConfig(**kwargs)
    assert all(w in str(err.value) for w in words)


# -- check_precision: what is accepted -------------------------------------------------------------
def test_no_fp8_needs_nothing_but_a_gpu_for_bf16():
    check_precision(PrecisionConfig("fp32"), None, None)  # a CPU box without TE
    check_precision(PrecisionConfig("bf16"), None, H100, layer_spec="local")


def test_bf16_without_a_gpu_is_refused_before_megatron_fails_inside():
    msg = refuse(PrecisionConfig("bf16"), None, None, layer_spec="local")
    assert "precision.dtype='bf16'" in msg and "none is visible" in msg and "fp32" in msg


@pytest.mark.parametrize("recipe, gpu", [
    ("delayed", H100), ("delayed", ADA), ("tensorwise", H100), ("tensorwise", ADA),
    ("blockwise", H100), ("blockwise", B200), ("mxfp8", B200),
])
def test_supported_recipe_gpu_pairs_pass(recipe, gpu):
    check_precision(PrecisionConfig("bf16", recipe, fp8_param_gather=True), NEW_TE, gpu, cuda_version="13.4")


def test_dev_builds_at_the_minimum_te_version_pass():
    # NGC containers ship TE dev builds; 2.3.0.dev0 is exactly Megatron's gate for blockwise.
    check_precision(PrecisionConfig("bf16", "blockwise"), "2.3.0.dev0+5fdd7bb", H100)


# -- check_precision: every refusal ------------------------------------------------------------------
@pytest.mark.parametrize("recipe", FP8_RECIPES[1:])
def test_fp8_without_transformer_engine_is_refused(recipe):
    msg = refuse(PrecisionConfig("bf16", recipe), None, H100)
    assert f"precision.fp8='{recipe}'" in msg and "Transformer Engine" in msg and "not installed" in msg


@pytest.mark.parametrize("recipe", FP8_RECIPES[1:])
def test_fp8_without_a_gpu_is_refused(recipe):
    msg = refuse(PrecisionConfig("bf16", recipe), NEW_TE, None)
    assert f"precision.fp8='{recipe}'" in msg and "GPU" in msg and "none is visible" in msg


@pytest.mark.parametrize("recipe", ["delayed", "tensorwise"])
def test_fp8_on_ampere_is_refused_naming_the_capability(recipe):
    msg = refuse(PrecisionConfig("bf16", recipe), NEW_TE, A100)
    assert ">= 8.9" in msg and "sm_80" in msg and recipe in msg


def test_blockwise_on_ada_is_refused_it_needs_hopper():
    msg = refuse(PrecisionConfig("bf16", "blockwise"), NEW_TE, ADA)
    assert ">= 9.0" in msg and "Hopper" in msg and "sm_89" in msg


def test_mxfp8_on_hopper_is_refused_it_needs_blackwell():
    msg = refuse(PrecisionConfig("bf16", "mxfp8"), NEW_TE, H100)
    assert ">= 10.0" in msg and "Blackwell" in msg and "sm_90" in msg


def test_mxfp8_on_sm120_is_refused_as_te_does():
    msg = refuse(PrecisionConfig("bf16", "mxfp8"), NEW_TE, RTX5090)
    assert "sm_120" in msg and "tensorwise" in msg


@pytest.mark.parametrize("recipe, te, need", [
    ("tensorwise", "2.1.0", "2.2.0.dev0"),
    ("blockwise", "2.2.1", "2.3.0.dev0"),
    ("mxfp8", "2.0.0", "2.1.0"),
    ("delayed", "0.12.0", "1.0"),
])
def test_recipe_newer_than_installed_te_is_refused(recipe, te, need):
    msg = refuse(PrecisionConfig("bf16", recipe), te, B200 if recipe == "mxfp8" else H100)
    assert f">= {need}" in msg and f"installed: {te}" in msg and recipe in msg


def test_blockwise_with_old_cuda_is_refused_only_when_cuda_is_known():
    msg = refuse(PrecisionConfig("bf16", "blockwise"), NEW_TE, H100, cuda_version="12.8")
    assert "CUDA >= 12.9" in msg and "12.8" in msg
    check_precision(PrecisionConfig("bf16", "blockwise"), NEW_TE, H100)  # unknown CUDA: TE checks later


def test_fp8_with_the_local_layer_spec_is_refused():
    msg = refuse(PrecisionConfig("bf16", "delayed"), NEW_TE, H100, layer_spec="local")
    assert "train.layer_spec" in msg and "'local'" in msg


def test_fp8_param_gather_without_the_distributed_optimizer_is_refused():
    msg = refuse(PrecisionConfig("bf16", "delayed", True), NEW_TE, H100, distributed_optimizer=False)
    assert "use_distributed_optimizer" in msg


def test_unparseable_te_version_is_a_clear_error():
    assert "'garbage!'" in refuse(PrecisionConfig("bf16", "delayed"), "garbage!", H100)


# -- the Megatron mapping ------------------------------------------------------------------------------
def _transformer_config(fields):
    from megatron.core.transformer.transformer_config import TransformerConfig

    return TransformerConfig(num_layers=2, hidden_size=64, num_attention_heads=4, **fields)


def test_bf16_without_fp8_maps_to_plain_bf16():
    import torch

    cfg = _transformer_config(transformer_config_fields(PrecisionConfig("bf16")))
    assert (cfg.bf16, cfg.fp16, cfg.params_dtype, cfg.fp8, cfg.fp8_param) == (True, False, torch.bfloat16, None, False)
    assert ddp_config_fields(PrecisionConfig("bf16")) == {"fp8_param_gather": False}


def test_fp32_maps_to_float32_params_and_no_bf16():
    import torch

    cfg = _transformer_config(transformer_config_fields(PrecisionConfig("fp32")))
    assert (cfg.bf16, cfg.params_dtype) == (False, torch.float32)


@pytest.mark.parametrize("recipe, fmt", [("delayed", "hybrid"), ("tensorwise", "hybrid"),
                                         ("blockwise", "hybrid"), ("mxfp8", "e4m3")])
def test_each_recipe_maps_to_megatron_fields_that_validate(recipe, fmt):
    fields = transformer_config_fields(PrecisionConfig("bf16", recipe, fp8_param_gather=True))
    cfg = _transformer_config(fields)  # Megatron's own __post_init__ validates the combination
    assert (cfg.fp8, str(getattr(cfg.fp8_recipe, "value", cfg.fp8_recipe)), cfg.fp8_param) == (fmt, recipe, True)


def test_delayed_scaling_uses_te_history_defaults_not_megatrons():
    cfg = _transformer_config(transformer_config_fields(PrecisionConfig("bf16", "delayed")))
    assert (cfg.fp8_amax_history_len, cfg.fp8_amax_compute_algo, cfg.fp8_param) == (1024, "max", False)


def test_param_gather_maps_onto_the_ddp_config():
    from megatron.core.distributed import DistributedDataParallelConfig

    ddp = DistributedDataParallelConfig(use_distributed_optimizer=True,
                                        **ddp_config_fields(PrecisionConfig("bf16", "mxfp8", True)))
    assert ddp.fp8_param_gather and ddp.reuse_grad_buf_for_mxfp8_param_ag
    ddp = DistributedDataParallelConfig(use_distributed_optimizer=True,
                                        **ddp_config_fields(PrecisionConfig("bf16", "tensorwise", True)))
    assert ddp.fp8_param_gather and not ddp.reuse_grad_buf_for_mxfp8_param_ag


def test_detect_on_this_cpu_box_finds_no_gpu_and_passes_a_non_fp8_check():
    te, gpu, _ = detect()
    check_precision(PrecisionConfig("fp32"), te, gpu)
    if gpu is None:
        with pytest.raises(PrecisionError):
            check_precision(PrecisionConfig("bf16", "delayed"), te, gpu)
