"""Random-weight ``transformers`` configurations of each family, built from the config classes
(no download): ``tiny`` ones for tests (seconds on a CPU) and ``realistic`` ones for
``bench/hf_family.py`` (the published architectures' sizes: R50 / Swin-T backbones, 256
channels, 6 decoder layers). Backbones never fetch pretrained weights.
"""
from __future__ import annotations

_SWIN_TINY = dict(model_type="swin", image_size=128, patch_size=4, embed_dim=8, depths=[1, 1, 1, 1],
                  num_heads=[1, 1, 2, 2], window_size=4, out_indices=[2, 3, 4])
_BERT_TINY = dict(model_type="bert", hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                  intermediate_size=16, max_position_embeddings=64)


def tiny_config(model_type: str, *, vocab_size: int = 64, num_labels: int = 3):
    """A few-thousand-parameter config of ``model_type`` (test images ~64-128 px)."""
    import transformers as T

    if model_type == "deformable_detr":
        return T.DeformableDetrConfig(
            backbone_config=dict(model_type="resnet", embedding_size=8, hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1],
                                 layer_type="basic", out_features=["stage2", "stage3", "stage4"]),
            use_timm_backbone=False, d_model=32, encoder_layers=2, decoder_layers=2, encoder_ffn_dim=32,
            decoder_ffn_dim=32, encoder_attention_heads=2, decoder_attention_heads=2, num_queries=10,
            num_labels=num_labels, with_box_refine=True, two_stage=False, dropout=0.0)
    if model_type == "rt_detr":
        return T.RTDetrConfig(
            backbone_config=dict(model_type="rt_detr_resnet", embedding_size=8, hidden_sizes=[16, 32, 64, 128],
                                 depths=[1, 1, 1, 1], layer_type="bottleneck", out_features=["stage2", "stage3", "stage4"]),
            encoder_in_channels=[32, 64, 128], encoder_hidden_dim=32, encoder_ffn_dim=32, d_model=32,
            decoder_in_channels=[32, 32, 32], decoder_ffn_dim=32, decoder_layers=2, decoder_attention_heads=2,
            encoder_attention_heads=2, num_queries=10, num_labels=num_labels, num_denoising=0)
    if model_type in ("rt_detr_v2", "d_fine", "deimv2"):  # RT-DETR's tiny layout (D-FINE / DEIMv2: R50-style backbone)
        cls = {"rt_detr_v2": T.RTDetrV2Config, "d_fine": T.DFineConfig, "deimv2": T.Deimv2Config}[model_type]
        extra = {} if model_type == "rt_detr_v2" else {"lqe_hidden_dim": 8}
        return cls(
            backbone_config=dict(model_type="rt_detr_resnet", embedding_size=8, hidden_sizes=[16, 32, 64, 128],
                                 depths=[1, 1, 1, 1], layer_type="bottleneck", out_features=["stage2", "stage3", "stage4"]),
            encoder_in_channels=[32, 64, 128], encoder_hidden_dim=32, encoder_ffn_dim=32, d_model=32,
            decoder_in_channels=[32, 32, 32], decoder_ffn_dim=32, decoder_layers=2, decoder_attention_heads=2,
            encoder_attention_heads=2, num_queries=10, num_labels=num_labels, num_denoising=0, **extra)
    if model_type.startswith("pp_doclayout_v"):  # RT-DETR's tiny layout; V3 also feeds the stride-4 map to its mask head
        v = model_type[-2:]
        cls = {"v2": T.PPDocLayoutV2Config, "v3": T.PPDocLayoutV3Config, "v4": T.PPDocLayoutV4Config}[v]
        stages = ["stage1", "stage2", "stage3", "stage4"] if v == "v3" else ["stage2", "stage3", "stage4"]
        extra = {"v2": dict(class_thresholds=[0.5] * num_labels, class_order=list(range(num_labels))),
                 "v3": dict(x4_feat_dim=16, mask_feature_channels=[16, 16], num_prototypes=8), "v4": {}}[v]
        return cls(
            backbone_config=dict(model_type="rt_detr_resnet", embedding_size=8, hidden_sizes=[16, 32, 64, 128],
                                 depths=[1, 1, 1, 1], layer_type="bottleneck", out_features=stages),
            encoder_in_channels=[32, 64, 128], encoder_hidden_dim=32, encoder_ffn_dim=32, d_model=32,
            decoder_in_channels=[32, 32, 32], decoder_ffn_dim=32, decoder_layers=2, decoder_attention_heads=2,
            encoder_attention_heads=2, num_queries=10, num_labels=num_labels, num_denoising=0, **extra)
    if model_type in ("grounding-dino", "mm-grounding-dino"):  # the same tiny shape, two config classes
        cls = T.GroundingDinoConfig if model_type == "grounding-dino" else T.MMGroundingDinoConfig
        return cls(
            backbone_config=_SWIN_TINY, text_config=dict(_BERT_TINY, vocab_size=vocab_size), d_model=32,
            encoder_layers=1, decoder_layers=2, encoder_ffn_dim=32, decoder_ffn_dim=32, encoder_attention_heads=2,
            decoder_attention_heads=2, num_queries=10, max_text_len=16)
    if model_type == "lw_detr":
        return T.LwDetrConfig(
            backbone_config=dict(model_type="lw_detr_vit", hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                 image_size=64, patch_size=16, window_block_indices=[0], out_indices=[1, 2]),
            d_model=32, decoder_layers=2, decoder_ffn_dim=32, decoder_self_attention_heads=2,
            decoder_cross_attention_heads=2, num_queries=10, group_detr=1, num_labels=num_labels,
            projector_scale_factors=[1.0])
    if model_type == "rf_detr":
        return T.RfDetrConfig(
            backbone_config=dict(model_type="rf_detr_dinov2", hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                 image_size=64, patch_size=16, out_indices=[1, 2], num_windows=2),
            d_model=32, decoder_layers=2, decoder_ffn_dim=32, decoder_self_attention_heads=2,
            decoder_cross_attention_heads=2, num_queries=10, group_detr=1, num_labels=num_labels,
            projector_scale_factors=[1.0])
    if model_type == "omdet-turbo":  # a transformers Swin (NCHW maps: no layer norm after it), CLIP text
        return T.OmDetTurboConfig(
            backbone_config=_SWIN_TINY, use_timm_backbone=False, apply_layernorm_after_vision_backbone=False,
            text_config=dict(model_type="clip_text_model", vocab_size=vocab_size, hidden_size=16, num_hidden_layers=1,
                             num_attention_heads=2, intermediate_size=16, max_position_embeddings=77, projection_dim=16),
            text_projection_in_dim=16, text_projection_out_dim=16, task_encoder_hidden_dim=16, class_embed_dim=16,
            encoder_hidden_dim=32, vision_features_channels=[32, 32, 32], encoder_in_channels=[16, 32, 64],
            encoder_dim_feedforward=32, encoder_attention_heads=2, decoder_hidden_dim=32, decoder_num_heads=2,
            decoder_num_layers=2, decoder_dim_feedforward=32, num_queries=10, image_size=128)
    raise ValueError(f"no tiny config for {model_type!r}")


def realistic_config(model_type: str):
    """The published architecture's size with random weights (benchmarks)."""
    import transformers as T

    if model_type == "deformable_detr":  # R50, 4 levels, 6 + 6 layers, 300 queries
        return T.DeformableDetrConfig(backbone_config=dict(model_type="resnet", out_features=["stage2", "stage3", "stage4"]),
                                      use_timm_backbone=False)
    if model_type == "rt_detr":  # RT-DETR R50: rt_detr_resnet 50, hybrid encoder, 6 decoder layers
        return T.RTDetrConfig(num_denoising=0)
    if model_type == "grounding-dino":  # Swin-T, BERT-base text encoder, 900 queries
        return T.GroundingDinoConfig(backbone_config=dict(model_type="swin", embed_dim=96, depths=[2, 2, 6, 2],
                                                          num_heads=[3, 6, 12, 24], window_size=7, out_indices=[2, 3, 4]))
    raise ValueError(f"no realistic config for {model_type!r}")


def image_processor(model_type: str, size: int | tuple[int, int] = 96):
    """The family's image processor at a small size: shortest edge ``size`` (aspect kept, padded)
    or, for RT-DETR-like families, a fixed ``size`` x ``size`` resize."""
    import transformers as T

    if model_type in ("deformable_detr", "grounding-dino", "mm-grounding-dino"):
        cls = T.DeformableDetrImageProcessor if model_type == "deformable_detr" else T.GroundingDinoImageProcessor
        return cls(size={"shortest_edge": size, "longest_edge": int(size * 5 / 3)})
    if model_type == "lw_detr":  # its ViT's windows need a fixed square input
        return T.DeformableDetrImageProcessor(size={"height": size, "width": size})
    if model_type == "rf_detr":
        return T.RfDetrImageProcessor(size={"height": size, "width": size})
    if model_type == "omdet-turbo":  # as OmDet-Turbo's own processor: a fixed square, no padding
        return T.DetrImageProcessor(size={"height": size, "width": size}, do_pad=False)
    if model_type in ("rt_detr", "rt_detr_v2", "d_fine", "deimv2"):
        return T.RTDetrImageProcessor(size={"height": size, "width": size})
    if model_type.startswith("pp_doclayout_v"):
        v = model_type[-2:]
        cls = {"v2": T.PPDocLayoutV2ImageProcessor, "v3": T.PPDocLayoutV3ImageProcessor, "v4": T.PPDocLayoutV4ImageProcessor}[v]
        return cls(size={"height": size, "width": size})
    raise ValueError(f"no image processor for {model_type!r}")


def tiny_tokenizer(folder, words=("cat", "dog", "remote", "control", "a", "person")):
    """A BERT word-piece tokenizer over a small vocabulary written into ``folder``."""
    import os

    import transformers as T

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ","] + list(words)
    path = os.path.join(str(folder), "vocab.txt")
    with open(path, "w") as f:
        f.write("\n".join(vocab) + "\n")
    return T.BertTokenizer(vocab=path)
