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

# The SID authors' code log for their simplified NoProp (SID's Table 1 baseline), on the SimpleCNN.
SID_PAPER_BASELINES = [
    {"source": "authors' code log", "dataset": "cifar10", "model": "simplecnn", "method": "noprop", "acc": 80.77,
     "std": None, "protocol": "the authors' simplified NoProp, batch 256, best test accuracy over epochs"},
    {"source": "authors' code log", "dataset": "cifar100", "model": "simplecnn", "method": "noprop", "acc": 41.01,
     "std": None, "protocol": "the authors' simplified NoProp, batch 256, L=8, best test accuracy over epochs"},
]

# SLL paper (Yin & Corradi 2025), Tables 1-3: mean ± std over its runs (the number of seeds is not
# given). Protocols from its appendix A.4. Memory in GB as the paper reports it (Table 3).
_SLL_MLP = "MLP (2x800 MNIST, 3x1000 CIFAR), Adamax lr 1e-3, flip + normalise, 100 epochs"
_SLL_CNN = "Table A5 CNN, Adam lr 3e-3, batch 128, normalise only, 100 epochs"
SLL_PAPER = [
    {"source": "SLL paper, Table 1", "dataset": "mnist", "model": "mlp-2x800", "method": "bp", "acc": 99.25, "std": 0.09,
     "protocol": _SLL_MLP},
    {"source": "SLL paper, Table 1", "dataset": "mnist", "model": "mlp-2x800", "method": "sll", "acc": 99.32, "std": 0.05,
     "protocol": _SLL_MLP},
    {"source": "SLL paper, Table 1", "dataset": "cifar10", "model": "mlp-3x1000", "method": "bp", "acc": 60.95,
     "std": 0.33, "protocol": _SLL_MLP},
    {"source": "SLL paper, Table 1", "dataset": "cifar10", "model": "mlp-3x1000", "method": "sll", "acc": 61.43,
     "std": 0.31, "protocol": _SLL_MLP},
    {"source": "SLL paper, Table 1", "dataset": "cifar100", "model": "mlp-3x1000", "method": "bp", "acc": 32.92,
     "std": 0.23, "protocol": _SLL_MLP},
    {"source": "SLL paper, Table 1", "dataset": "cifar100", "model": "mlp-3x1000", "method": "sll", "acc": 32.95,
     "std": 0.26, "protocol": _SLL_MLP},
    {"source": "SLL paper, Table 2", "dataset": "fashion-mnist", "model": "sll-cnn-fmnist", "method": "bp",
     "acc": 93.52, "std": 0.22, "protocol": _SLL_CNN},
    {"source": "SLL paper, Table 2", "dataset": "fashion-mnist", "model": "sll-cnn-fmnist", "method": "sll",
     "acc": 93.67, "std": 0.17, "protocol": _SLL_CNN},
    {"source": "SLL paper, Table 3", "dataset": "cifar10", "model": "sll-vit", "method": "bp", "acc": 93.62,
     "std": None, "memory_gb": 3.05, "protocol": "ViT 7 blocks, width 384, AdamW lr 3e-3, batch 128, 500 epochs"},
    {"source": "SLL paper, Table 3", "dataset": "cifar10", "model": "sll-vit", "method": "sll", "acc": 92.17,
     "std": None, "memory_gb": 1.18, "protocol": "SLL7+ (7 units), otherwise as BP"},
]

# The baselines of SLL's Tables 1 and 2 (the paper's citations of other work; no spread given).
# TP (target propagation), SP, SoftHebb and DF-R are not implemented here; TFF is a Forward-Forward
# variant, set beside our FF.
_SLL_BASELINES = {
    ("mnist", "mlp-2x800"): {"tp": 97.96, "fa": 98.36, "dfa": 98.26, "pepita": 98.01, "sp": 98.29},
    ("cifar10", "mlp-3x1000"): {"tp": 49.64, "fa": 53.10, "dfa": 57.10, "pepita": 52.57, "sp": 57.38},
    ("cifar100", "mlp-3x1000"): {"fa": 25.70, "dfa": 26.90, "pepita": 24.91, "sp": 29.70},
    ("fashion-mnist", "sll-cnn-fmnist"): {"fa": 91.12, "dfa": 91.54, "dkp": 91.66, "lls": 90.54, "tff": 91.44},
    ("cifar10", "sll-cnn-cifar10"): {"dfa": 62.70, "dkp": 64.69, "lls": 88.64, "tff": 83.51},
    ("cifar100", "sll-cnn-cifar100"): {"dfa": 48.03, "dkp": 52.62, "lls": 58.84},
}
SLL_PAPER_BASELINES = [
    {"source": f"SLL paper, Table {1 if model.startswith('mlp') else 2}", "dataset": dataset, "model": model,
     "method": method, "acc": acc, "std": None, "protocol": "as reported by the SLL paper"}
    for (dataset, model), row in _SLL_BASELINES.items() for method, acc in row.items()
]
