"""manylabel training: data, features, head training, metrics, thresholds and export."""

import os

# torch's OpenMP threads spin while they wait for work. When the cores are shared (other processes,
# or our own decode threads), the spinning threads starve the ones with work: 10 epochs of the head
# took 16-73 s wall and 16-19 s CPU with spinning, 16-37 s wall and 8-9 s CPU without, on 2 busy
# cores (same run, 3 repeats). It must be set before torch loads; a value the user set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
