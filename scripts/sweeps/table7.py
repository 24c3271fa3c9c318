"""Table 7: ImageNet-1K classification, 224 crops (§5.3)."""

from launch import main

EXPERIMENTS = [
    "imagenet_resnet50",
    "imagenet_deit_tiny",
    "imagenet_deit_small",
    "imagenet_lambda_tiny",
    "imagenet_lambda_small",
    "imagenet_aft_full_tiny",
    "imagenet_aft_full_small",
    "imagenet_aft_conv_tiny_k11_h32",
    "imagenet_aft_conv_tiny_k11_h192",
    "imagenet_aft_conv_small_k11_h16",
    "imagenet_aft_conv_small_k11_h384",
    "imagenet_aft_conv_small_k15_h384",
]

if __name__ == "__main__":
    main("Table 7", EXPERIMENTS)
