import os

import torch

# Tests never reach for the network, and run on as few threads as CI has.
os.environ.setdefault("SIDLIB_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))

