"""Node capture on a real NVIDIA GPU (device machine only; CI has no GPU and deselects these
with -m 'not gpu'). Compares what the record says with nvidia-smi and with torch itself."""

import json
import os
import shutil
import subprocess

import pytest

import runrec_cluster as rr

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _needs_gpu():
    if shutil.which("nvidia-smi") is None:
        pytest.skip("no nvidia-smi: not a GPU machine (run with -m gpu on one)")


def torch_job():
    import torch

    x = torch.randn(1024, 1024, device="cuda")
    y = (x @ x).sum().item()
    if torch.cuda.device_count() >= 1:
        try:
            import torch.distributed  # noqa: F401  (loads NCCL in builds that link it lazily)
        except Exception:
            pass
    return {"torch": torch.__version__, "cuda": torch.version.cuda, "sum_finite": y == y}


def smi():
    out = (
        subprocess.run(
            [
                "nvidia-smi",
                "--query-gpu=name,uuid,driver_version,memory.total,compute_cap",
                "--format=csv,noheader,nounits",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        .stdout.strip()
        .splitlines()
    )
    return [[c.strip() for c in line.split(",")] for line in out]


def test_node_capture_matches_nvidia_smi_and_torch(tmp_path):
    import cloudpickle
    import torch

    cloudpickle.register_pickle_by_value(__import__(__name__))
    store = rr.Store(tmp_path / "store")
    h = rr.Executor(backend="local", store=store, gpus=1).submit(torch_job)
    res = h.result(timeout=300)
    rec = h.record()
    node = rec.node
    rows = smi()
    assert node.gpu_status == "ok"
    assert [g.name for g in node.gpus] == [r[0] for r in rows]
    assert [g.uuid for g in node.gpus] == [r[1] for r in rows]
    assert node.nvidia_driver == rows[0][2]
    assert node.gpus[0].compute_capability == rows[0][4]
    assert abs(node.gpus[0].memory_total_mb - int(rows[0][3])) <= 1
    assert node.cuda_driver and node.cuda_driver[0].isdigit()
    rt = node.runtime
    assert rt.frameworks["torch"] == torch.__version__ == res["torch"]
    assert rt.cuda_runtime == torch.version.cuda
    if torch.backends.cudnn.is_available():
        assert rt.cudnn
    out = os.environ.get("RUNREC_GPU_OUT")
    if out:
        from runrec_cluster.views.export import export_json

        doc = export_json(store, rec)
        with open(os.path.join(out, "gpu-record.json"), "w") as f:
            json.dump(
                {
                    "node": doc["record"]["nodes"],
                    "nvidia_smi": rows,
                    "torch": res,
                    "torch_cudnn": torch.backends.cudnn.version(),
                    "torch_nccl": str(torch.cuda.nccl.version()),
                },
                f,
                indent=1,
            )
