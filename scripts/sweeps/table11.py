"""Table 11: kernel size of AFT-conv small with 384 heads, and the DeiT small reference (§7)."""

from launch import main

KERNELS = (3, 7, 11, 15, 25, 27)  # Table 11 "Kernel"
EXPERIMENTS = [*(f"imagenet_aft_conv_small_k{k}_h384" for k in KERNELS), "imagenet_deit_small"]

if __name__ == "__main__":
    main("Table 11", EXPERIMENTS)
