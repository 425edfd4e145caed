"""Node capture, where the job runs: host, CPU, memory, GPUs (NVML), CUDA libraries loaded
(in this process; a process tree's: ``capture.maps``).

No NVIDIA driver, no GPU: recorded as such in ``gpu_status``, never an error.
"""

from __future__ import annotations

import os
import platform
import socket
import sys
from datetime import UTC, datetime
from typing import Any

from runrec_cluster.capture import maps
from runrec_cluster.record import GPUInfo, LibSampling, NodeInfo, RuntimeLibs

try:
    import pynvml  # nvidia-ml-py, a dependency

    NVML_IMPORT_ERROR = ""
except ImportError as exc:  # a broken install is recorded in gpu_status, never an error
    pynvml = None
    NVML_IMPORT_ERROR = str(exc)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_total_mb() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError):
        pass
    return 0


def gpu_info(nvml: Any = None) -> dict[str, Any]:
    """GPUs through NVML. ``nvml`` is the ``pynvml`` module (injectable for unit tests)."""
    if nvml is None:
        if pynvml is None:
            return {"gpu_status": f"nvidia-ml-py not importable ({NVML_IMPORT_ERROR})"}
        nvml = pynvml
    try:
        nvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        return {"gpu_status": f"no NVIDIA driver ({_nvml_err(exc)})"}
    try:
        out: dict[str, Any] = {}
        out["nvidia_driver"] = _s(nvml.nvmlSystemGetDriverVersion())
        try:
            v = int(nvml.nvmlSystemGetCudaDriverVersion_v2())
        except Exception:
            v = int(nvml.nvmlSystemGetCudaDriverVersion())
        out["cuda_driver"] = f"{v // 1000}.{(v % 1000) // 10}"
        gpus = []
        for i in range(nvml.nvmlDeviceGetCount()):
            h = nvml.nvmlDeviceGetHandleByIndex(i)
            cc = mig = bus = None
            mem = None
            try:
                major, minor = nvml.nvmlDeviceGetCudaComputeCapability(h)
                cc = f"{major}.{minor}"
            except Exception:
                pass
            try:
                cur, _pending = nvml.nvmlDeviceGetMigMode(h)
                mig = "enabled" if cur else "disabled"
            except Exception:
                mig = "not supported"
            try:
                mem = int(nvml.nvmlDeviceGetMemoryInfo(h).total) // (1024 * 1024)
            except Exception:
                pass
            try:
                bus = _s(nvml.nvmlDeviceGetPciInfo(h).busId)
            except Exception:
                pass
            gpus.append(
                GPUInfo(
                    index=i,
                    name=_s(nvml.nvmlDeviceGetName(h)),
                    uuid=_s(nvml.nvmlDeviceGetUUID(h)),
                    memory_total_mb=mem,
                    compute_capability=cc,
                    mig_mode=mig,
                    pci_bus_id=bus,
                )
            )
        out["gpus"] = gpus
        out["gpu_status"] = "ok" if gpus else "NVIDIA driver present, no GPU"
        return out
    except Exception as exc:
        return {"gpu_status": f"NVML error ({_nvml_err(exc)})"}
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:
            pass


def _s(x: Any) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def _nvml_err(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"


def runtime_libs(maps_path: str = "/proc/self/maps") -> RuntimeLibs:
    """CUDA runtime, cuDNN and NCCL versions as actually loaded in this process: asked of the
    frameworks already imported (torch, jax, cupy), else read from the mapped libraries
    (``capture.maps``; other processes' maps are sampled by ``maps.MapsSampler``)."""
    vals, src, frameworks = framework_libs()
    try:
        with open(maps_path, encoding="utf-8", errors="replace") as f:
            loaded = maps.libraries_in(f)
    except OSError:
        loaded = set()
    return maps.merge_runtime(
        RuntimeLibs(
            cuda_runtime=vals.get("cuda_runtime"),
            cudnn=vals.get("cudnn"),
            nccl=vals.get("nccl"),
            frameworks=frameworks,
            sources=src,
        ),
        loaded,
        LibSampling(method=maps_path, times=[datetime.now(UTC)]),
    )


def framework_libs() -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """(versions, their sources, framework versions) asked of the frameworks this process has
    imported already (torch, jax, cupy); never imports one."""
    vals: dict[str, str] = {}
    src: dict[str, str] = {}
    frameworks: dict[str, str] = {}
    torch = sys.modules.get("torch")
    if torch is not None:
        frameworks["torch"] = str(getattr(torch, "__version__", ""))
        try:
            if torch.version.cuda:
                vals["cuda_runtime"], src["cuda_runtime"] = (
                    str(torch.version.cuda),
                    "torch.version.cuda",
                )
            if torch.backends.cudnn.is_available():
                v = int(torch.backends.cudnn.version())
                vals["cudnn"] = (
                    f"{v // 10000}.{(v % 10000) // 100}.{v % 100}"
                    if v >= 10000
                    else f"{v // 1000}.{(v % 1000) // 100}.{v % 100}"
                )
                src["cudnn"] = "torch.backends.cudnn.version()"
            if torch.cuda.is_available() and hasattr(torch.cuda, "nccl"):
                n = torch.cuda.nccl.version()
                vals["nccl"] = ".".join(map(str, n)) if isinstance(n, tuple) else str(n)
                src["nccl"] = "torch.cuda.nccl.version()"
        except Exception as exc:
            src["torch_error"] = f"{type(exc).__name__}: {exc}"
    jax = sys.modules.get("jax")
    if jax is not None:
        frameworks["jax"] = str(getattr(jax, "__version__", ""))
    cupy = sys.modules.get("cupy")
    if cupy is not None:
        frameworks["cupy"] = str(getattr(cupy, "__version__", ""))
        try:
            v = int(cupy.cuda.runtime.runtimeGetVersion())
            vals.setdefault("cuda_runtime", f"{v // 1000}.{(v % 1000) // 10}")
            src.setdefault("cuda_runtime", "cupy.cuda.runtime.runtimeGetVersion()")
        except Exception:
            pass
    return vals, src, frameworks


def capture_node(*, rank: int = 0, features: list[str] | None = None, nvml: Any = None) -> NodeInfo:
    uname = platform.uname()
    try:
        allowed = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        allowed = os.cpu_count() or 0
    g = gpu_info(nvml)
    return NodeInfo(
        hostname=socket.gethostname(),
        rank=rank,
        os=_os_release(),
        kernel=f"{uname.system} {uname.release}",
        cpu_model=cpu_model(),
        cpu_count=os.cpu_count() or 0,
        cpus_allowed=allowed,
        memory_total_mb=memory_total_mb(),
        gpu_status=g.get("gpu_status", ""),
        gpus=g.get("gpus", []),
        nvidia_driver=g.get("nvidia_driver"),
        cuda_driver=g.get("cuda_driver"),
        cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
        python_executable=sys.executable,
        python_version=platform.python_version(),
        features=features or [],
        captured_at=datetime.now(UTC),
    )


def _os_release() -> str:
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.system()
