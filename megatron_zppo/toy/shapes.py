"""The tiny model shapes, one set for the whole repository: HF config fields as plain dicts.

The CPU demo's builders (models.py), the tests' checkpoints and the benchmarks' smoke runs all cut
their models from these, so "the tiny Qwen3" means the same model everywhere. A caller adds what is
its own (vocabulary, positions, tied embeddings, a layer pattern) with ``dict(QWEN3, vocab_size=...)``
and says why where it changes a size. No imports: reading a shape costs nothing.

The CPU demo's checked-in figures (docs/RESULTS.md) come from models of ``QWEN3_SIZES``; changing a
number here rebuilds different toy models.
"""

# Qwen3 text: 2 layers of width 64, 4 query and 2 KV heads of 16 (grouped-query attention, and
# tensor parallelism of 2 still leaves each rank a whole KV head).
QWEN3 = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=16)

# Qwen3.5 text: the same, with Gated DeltaNet's linear attention (2 key and 4 value heads of 16, so
# q/k are repeated) before a full-attention layer. Do not mutate the layer_types list in place.
QWEN35_TEXT = dict(QWEN3, linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16,
                   linear_value_head_dim=16, linear_conv_kernel_dim=4,
                   layer_types=["linear_attention", "full_attention"])

# Qwen3.5's vision tower: one ViT block of width 32; 16-px patches, merged 2x2 into vision tokens.
# A caller sets out_hidden_size to its text model's hidden_size.
QWEN35_VISION = dict(depth=1, hidden_size=32, num_heads=2, intermediate_size=64, patch_size=16,
                     spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=64)

# The CPU demo's Qwen3 sizes (tools/make_toy_models.py builds "medium" as the teacher, "small" and
# "tiny" as the students), head_dim = hidden_size / num_attention_heads throughout.
QWEN3_SIZES = {
    "tiny": dict(QWEN3, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                 num_key_value_heads=1),
    "small": QWEN3,
    "medium": dict(QWEN3, hidden_size=96, intermediate_size=256, num_hidden_layers=3, head_dim=24),
    "large": dict(QWEN3, hidden_size=128, intermediate_size=384, num_hidden_layers=4, head_dim=32),
}
