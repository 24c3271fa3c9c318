"""Table 2: CIFAR10 image autoregressive modeling (§5.1); PixelCNN-family rows have no model."""

from launch import main

EXPERIMENTS = [
    "cifar10_sparse_transformer_strided_l128_d256",
    "cifar10_image_transformer_local2d_l12_d512",
    "cifar10_transformer_l12_d512",
    "cifar10_transformer_l24_d256",
    "cifar10_aft_local256_l12_d512",
    "cifar10_aft_local256_l24_d256",
    "cifar10_aft_simple_l24_d256",
]

if __name__ == "__main__":
    main("Table 2", EXPERIMENTS)
