"""Loader workers start inside a job of Hydra's joblib launcher (a loky worker process), whose
process-wide default start method is loky's own."""
import pytest
import torch

joblib = pytest.importorskip("joblib")


def _sum_through_loader(num_workers: int) -> float:
    from pmsm_exp.data.common import ArrayDataset, make_loader
    ds = ArrayDataset(torch.arange(12, dtype=torch.float32).view(12, 1), torch.zeros(12, dtype=torch.long))
    return float(sum(x.sum() for x, _ in make_loader(ds, batch_size=4, num_workers=num_workers, pin_memory=False)))


def test_loader_workers_start_inside_a_loky_worker():
    got = joblib.Parallel(n_jobs=2, backend="loky")(joblib.delayed(_sum_through_loader)(n) for n in (0, 2))
    assert got == [66.0, 66.0]   # 0 + 1 + ... + 11, with and without worker processes
