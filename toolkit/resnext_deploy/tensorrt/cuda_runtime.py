"""The few CUDA calls the TensorRT runner needs (device memory, a stream, copies, the GPU's name), via ctypes.

JetPack always has the CUDA runtime (libcudart) and driver (libcuda) libraries but not cuda-python or
pycuda, so this talks to the libraries directly and needs nothing beyond the standard library.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
from typing import Dict, List, Optional

from ..errors import InternalError, MissingDependencyError

_HOST_TO_DEVICE, _DEVICE_TO_HOST = 1, 2  # cudaMemcpyKind
_CC_MAJOR, _CC_MINOR = 75, 76  # CUdevice_attribute: compute capability

_cudart = None


def _candidates(stem: str) -> List[str]:
    dirs = [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if d]
    dirs += ["/usr/local/cuda/lib64", "/usr/local/cuda/targets/aarch64-linux/lib",
             "/usr/local/cuda/targets/x86_64-linux/lib", "/usr/lib/aarch64-linux-gnu/tegra", "/usr/lib/aarch64-linux-gnu", "/usr/lib/x86_64-linux-gnu"]
    found = []
    for d in dirs:
        found += sorted(glob.glob(os.path.join(d, f"lib{stem}.so*")))
    named = ctypes.util.find_library(stem)
    return found + ([named] if named else []) + [f"lib{stem}.so"]


def _load(stem: str) -> ctypes.CDLL:
    errors = []
    for lib in _candidates(stem):
        try:
            return ctypes.CDLL(lib)
        except OSError as exc:
            errors.append(f"{lib}: {exc}")
    raise MissingDependencyError(
        f"The CUDA library lib{stem}.so could not be loaded ({errors[-1] if errors else 'not found'}). It comes with "
        "JetPack on a Jetson and with the CUDA toolkit or NVIDIA driver on an x86 GPU machine; add its folder "
        "(e.g. /usr/local/cuda/lib64) to LD_LIBRARY_PATH."
    )


def cudart() -> ctypes.CDLL:
    global _cudart
    if _cudart is None:
        lib = _load("cudart")
        lib.cudaGetErrorString.restype = ctypes.c_char_p
        _cudart = lib
    return _cudart


def _check(status: int, what: str) -> None:
    if status != 0:
        msg = cudart().cudaGetErrorString(status)
        raise InternalError(f"CUDA call {what} failed with error {status} ({msg.decode() if msg else '?'}).")


def malloc(nbytes: int) -> int:
    ptr = ctypes.c_void_p()
    _check(cudart().cudaMalloc(ctypes.byref(ptr), ctypes.c_size_t(nbytes)), f"cudaMalloc({nbytes})")
    return int(ptr.value or 0)


def free(ptr: int) -> None:
    if ptr:
        _check(cudart().cudaFree(ctypes.c_void_p(ptr)), "cudaFree")


def stream_create() -> int:
    s = ctypes.c_void_p()
    _check(cudart().cudaStreamCreate(ctypes.byref(s)), "cudaStreamCreate")
    return int(s.value or 0)


def stream_synchronize(stream: int) -> None:
    _check(cudart().cudaStreamSynchronize(ctypes.c_void_p(stream)), "cudaStreamSynchronize")


def stream_destroy(stream: int) -> None:
    if stream:
        _check(cudart().cudaStreamDestroy(ctypes.c_void_p(stream)), "cudaStreamDestroy")


def copy_to_device(dst: int, src_host: int, nbytes: int, stream: int) -> None:
    _check(cudart().cudaMemcpyAsync(ctypes.c_void_p(dst), ctypes.c_void_p(src_host), ctypes.c_size_t(nbytes),
                                    _HOST_TO_DEVICE, ctypes.c_void_p(stream)), "cudaMemcpyAsync(host->device)")


def copy_to_host(dst_host: int, src: int, nbytes: int, stream: int) -> None:
    _check(cudart().cudaMemcpyAsync(ctypes.c_void_p(dst_host), ctypes.c_void_p(src), ctypes.c_size_t(nbytes),
                                    _DEVICE_TO_HOST, ctypes.c_void_p(stream)), "cudaMemcpyAsync(device->host)")


def gpu_info(index: int = 0) -> Optional[Dict[str, str]]:
    """{"name", "compute_capability"} of GPU ``index`` from the driver, or None when there is no usable GPU."""
    try:
        drv = _load("cuda")
    except MissingDependencyError:
        return None
    if drv.cuInit(0) != 0:
        return None
    count = ctypes.c_int()
    if drv.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value <= index:
        return None
    dev = ctypes.c_int()
    name = ctypes.create_string_buffer(256)
    major, minor = ctypes.c_int(), ctypes.c_int()
    if (drv.cuDeviceGet(ctypes.byref(dev), index) != 0 or drv.cuDeviceGetName(name, 256, dev) != 0
            or drv.cuDeviceGetAttribute(ctypes.byref(major), _CC_MAJOR, dev) != 0
            or drv.cuDeviceGetAttribute(ctypes.byref(minor), _CC_MINOR, dev) != 0):
        return None
    return {"name": name.value.decode(errors="replace"), "compute_capability": f"{major.value}.{minor.value}"}
