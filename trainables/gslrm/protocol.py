"""What makes two held-out evaluations comparable (no torch: the analysis reads it too)."""

# Protocol fields that must be equal for two evaluations to be compared, in the order a
# refusal names the first difference.
PROTOCOL_COMPARED_KEYS = (
    "metrics_version",
    "item_set_hash",
    "checkpoint_rule",
    "checkpoint_objective",
    "pred_mask_threshold",
    "gt_alpha_threshold",
    "image_size",
    "background_color",
    "view_order",
)
