"""Table 9: non-factorized vs factorized position bias of AFT-full small on ImageNet-1K (§7)."""

from launch import main

EXPERIMENTS = ["imagenet_aft_full_small_dense", "imagenet_aft_full_small"]

if __name__ == "__main__":
    main("Table 9", EXPERIMENTS)
