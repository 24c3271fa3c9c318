"""Table 8: AFT-conv base on 384 crops, fine-tuned from DeiT base ("ft") or from scratch ("rand").

The "ft" job reads the DeiT base 384 weights from a local file: set DEIT_BASE_384_WEIGHTS
(configs/experiment/imagenet_aft_conv_base_k25_h32_ft384.yaml says how to make it).
"""

from launch import main

EXPERIMENTS = [
    "imagenet_deit_base_384",
    "imagenet_aft_conv_base_k25_h32_ft384",
    "imagenet_aft_conv_base_k25_h32_rand384",
]

if __name__ == "__main__":
    main("Table 8", EXPERIMENTS)
