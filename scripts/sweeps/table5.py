"""Table 5: AFT-local, L=24, d=256 on Enwik8 for each local window size s (§5.2).

s = 0 is AFT-simple (Eq. 4 with an empty window, §3.2): the Table 4 AFT-simple row.
"""

from launch import main

WINDOWS = (0, 1, 2, 4, 8, 32, 64, 128, 256, 512, 1024)  # Table 5 "Win size"
EXPERIMENTS = [f"enwik8_aft_local{s}_l24_d256" if s else "enwik8_aft_simple_l24_d256" for s in WINDOWS]

if __name__ == "__main__":
    main("Table 5", EXPERIMENTS)
