"""Table 3: non-factorized vs factorized position bias of AFT-local-256, L=24, d=256 on CIFAR10 (§5.1)."""

from launch import main

EXPERIMENTS = ["cifar10_aft_local256_l24_d256_dense", "cifar10_aft_local256_l24_d256"]

if __name__ == "__main__":
    main("Table 3", EXPERIMENTS)
