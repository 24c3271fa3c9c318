"""Table 12: AFT-conv small, 384 heads, kernels 11 and 15, with and without the query term (§7)."""

from launch import main

KERNELS = (11, 15)  # Table 12 "Kernel"
EXPERIMENTS = [f"imagenet_aft_conv_small_k{k}_h384{suffix}" for suffix in ("", "_noq") for k in KERNELS]

if __name__ == "__main__":
    main("Table 12", EXPERIMENTS)
