"""Numbers reported by the papers, with their sources, for display beside ours.

Test accuracy in percent. Source: ../shared/papers/CLAIMS.md (restored from the papers, whose
text extraction lost most table numbers). The SID paper's Table 1 (SimpleCNN: BP, FA, SID, ...)
lost its numbers; its Table 5 row at 0% label noise is the same SimpleCNN protocol on CIFAR-10.
"""

SID_PAPER = [
    {"source": "SID paper, Table 5 (label noise 0%)", "dataset": "cifar10", "model": "simplecnn",
     "method": "bp", "acc": 84.32, "std": 0.45, "protocol": "Adam, cosine, batch 128, 100 epochs, 3 seeds"},
    {"source": "SID paper, Table 5 (label noise 0%)", "dataset": "cifar10", "model": "simplecnn",
     "method": "sid", "acc": 84.42, "std": 0.35, "protocol": "Adam, cosine, batch 128, 100 epochs, 3 seeds"},
    {"source": "authors' code log", "dataset": "cifar10", "model": "simplecnn", "method": "bp", "acc": 80.83,
     "std": None, "protocol": "batch 256, L=5 or 8, best test accuracy over epochs"},
    {"source": "authors' code log", "dataset": "cifar10", "model": "simplecnn", "method": "sid", "acc": 81.65,
     "std": None, "protocol": "batch 256, L=5 or 8, best test accuracy over epochs"},
    {"source": "authors' code log", "dataset": "mnist", "model": "simplecnn", "method": "bp", "acc": 99.06,
     "std": None, "protocol": "batch 256, L=5 or 8, best test accuracy over epochs"},
    {"source": "authors' code log", "dataset": "mnist", "model": "simplecnn", "method": "sid", "acc": 99.31,
     "std": None, "protocol": "batch 256, L=5 or 8, best test accuracy over epochs"},
]
