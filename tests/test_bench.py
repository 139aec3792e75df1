"""Saved-tensor accounting, and the memory claim it supports."""
import torch

from helpers import config
from sidlib import bench


def test_meter_counts_saved_tensors_once_and_sees_them_freed():
    x = torch.randn(1000, requires_grad=True)  # 4000 bytes
    w = torch.randn(1000)
    with bench.SavedTensorMeter() as meter:
        y = (x * w).sum()      # mul saves x and w: 8000 bytes
        z = (x * x).sum()      # saves x twice: the same storage, counted once
        assert meter.current == 8000
        y.backward()
        assert meter.current == 4000  # y's graph is freed by its backward; z still holds x
        del z
    assert meter.current == 0 and meter.peak == 8000


def test_meter_leaves_out_parameters():
    layer = torch.nn.Linear(100, 100)
    x = torch.randn(10, 100, requires_grad=True)
    with bench.SavedTensorMeter(exclude=list(layer.parameters())) as meter:
        layer(x).sum().backward()
    assert meter.peak == 10 * 100 * 4  # the input only


def test_bp_memory_grows_with_depth_and_sid_memory_does_not():
    cfg = config(label_smoothing=0.1)
    device = torch.device("cpu")
    module = bench.module_saved_bytes(cfg, 32, device)
    peak = {(m, d): bench.peak_saved_bytes(config(method=m, depth=d), 32, device)
            for m in ("sid", "bp") for d in (2, 8)}
    assert 5.5 * module < peak[("bp", 8)] - peak[("bp", 2)] < 6.5 * module
    assert abs(peak[("sid", 8)] - peak[("sid", 2)]) <= 0.5 * module


def test_run_returns_records_for_every_method_and_depth():
    records = bench.run([1, 3], batch_size=8, steps=1, warmup=0, base=config())
    assert {(r["method"], r["depth"]) for r in records} == {(m, d) for m in ("sid", "bp") for d in (1, 3)}
    assert all(r["step_seconds"] > 0 and r["peak_saved_bytes"] > 0 for r in records)


def test_the_books_bench_table_is_the_committed_results():
    # book/models.md shows results/bench/fashion-mnist/*.json; every row must be one of those records.
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    page = (root / "book" / "models.md").read_text()
    rows = {tuple(c.strip() for c in line.strip("|").split("|")) for line in page.splitlines()
            if line.startswith("| `") and line.count("|") == 7}
    expected = set()
    for path in (root / "results" / "bench" / "fashion-mnist").glob("*.json"):
        run = json.loads(path.read_text())
        head = "cascade, L = 10" if path.stem.endswith("-cascade") else "linear"
        assert run["command"].startswith("python -m sidlib bench") and run["batch_size"] == 32
        for r in run["records"]:
            expected.add((f"`{r['model']}`", head, r["method"].upper(), f"{r['parameters']:,}",
                          f"{1000 * r['step_seconds']:.0f}", f"{r['peak_saved_bytes'] / 2**20:.1f}"))
    assert rows == expected and len(rows) == 16


def test_memory_breakdown_counts_each_owner_once():
    device = torch.device("cpu")
    bp, sll = (bench.memory_breakdown(config(method=m, model="deep-mlp", depth=3), 16, device) for m in ("bp", "sll"))
    parameters = (144 * 800 + 800) + 2 * (800 * 800 + 800) + (800 * 10 + 10)
    for m in (bp, sll):
        assert m["parameters"] == m["gradients"] == 4 * parameters
        assert m["optimizer"] >= 2 * 4 * parameters  # Adam's two moments (and its step counters)
        assert m["total"] == sum(v for k, v in m.items() if k != "total")
    assert bp["buffers"] == 0 and sll["buffers"] == 4 * 10 * (144 + 3 * 800)  # SLL's fixed projections
    assert sll["saved"] < bp["saved"]
