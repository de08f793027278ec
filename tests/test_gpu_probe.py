"""GPU probes with fakes of NVML and nvidia-smi (no GPU here), and the real fallbacks."""

from __future__ import annotations

import subprocess
import types

import pynvml
import pytest
from hypothesis import given
from hypothesis import strategies as st

from llamagate.adapters.gpu_probe import (
    ProbeUnavailable,
    nvidia_smi_probe,
    nvml_probe,
    parse_nvidia_smi_csv,
    probe_gpus,
    torch_probe,
)
from llamagate.domain.gpus import (
    MIB,
    GpuInfo,
    parse_mask,
    physical_index,
    pin_environment,
    visible_gpus,
)

SMI_OUTPUT = """\
0, GPU-aaaa1111, 22000, 24564, NVIDIA GeForce RTX 4090
1, GPU-bbbb2222, 1000, 24564, NVIDIA GeForce RTX 4090
2, GPU-cccc3333, 80000, 81559, NVIDIA H100 80GB HBM3
3, GPU-dddd4444, [N/A], [N/A], NVIDIA A100-SXM4-40GB MIG 1g.5gb
"""


def fake_nvml(memory_mib: list[tuple[int, int]], fail_init: bool = False) -> types.ModuleType:
    """Stands in for pynvml: the same functions, handles and error classes."""
    calls: list[str] = []

    def init():
        calls.append("init")
        if fail_init:
            raise pynvml.NVMLError_DriverNotLoaded(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)

    module = types.SimpleNamespace(
        NVMLError=pynvml.NVMLError,
        calls=calls,
        nvmlInit=init,
        nvmlShutdown=lambda: calls.append("shutdown"),
        nvmlDeviceGetCount=lambda: len(memory_mib),
        nvmlDeviceGetHandleByIndex=lambda i: ("handle", i),
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(
            free=memory_mib[h[1]][0] * MIB, total=memory_mib[h[1]][1] * MIB, used=0),
        nvmlDeviceGetName=lambda h: f"Fake GPU {h[1]}",
        nvmlDeviceGetUUID=lambda h: f"GPU-{h[1]:04d}-fake",
    )
    return module


def test_nvidia_smi_rows_parse_and_unreadable_rows_are_skipped():
    gpus = parse_nvidia_smi_csv(SMI_OUTPUT)
    assert [g.index for g in gpus] == [0, 1, 2]
    assert gpus[2].free_bytes == 80000 * MIB and gpus[2].uuid == "GPU-cccc3333"
    assert gpus[0].name == "NVIDIA GeForce RTX 4090"


@pytest.mark.parametrize(
    ("mask", "visible"),
    [(None, [0, 1, 2]), ("2,3", [2]), ("", []), ("0,1,", [0, 1]), ("1,0", [1, 0]), ("GPU-cccc", [2]),
     ("0,7,1", [0]), (" 2 , 0 ", [2, 0])],
)
def test_visibility_masks(mask, visible):
    env = {} if mask is None else {"CUDA_VISIBLE_DEVICES": mask}
    gpus = nvidia_smi_probe(env, run=lambda argv: SMI_OUTPUT)
    assert [g.index for g in gpus] == visible


def test_nvml_reads_every_device_and_honours_the_mask():
    nvml = fake_nvml([(1000, 2000), (3000, 4000), (5000, 6000)])

    gpus = nvml_probe({"CUDA_VISIBLE_DEVICES": "2,0"}, nvml)

    assert gpus == [GpuInfo(2, 5000 * MIB, 6000 * MIB, "Fake GPU 2", "GPU-0002-fake"),
                    GpuInfo(0, 1000 * MIB, 2000 * MIB, "Fake GPU 0", "GPU-0000-fake")]
    assert nvml.calls == ["init", "shutdown"]


def test_nvml_failure_falls_back_to_nvidia_smi():
    nvml = fake_nvml([], fail_init=True)
    gpus = probe_gpus({}, probes=(lambda env: nvml_probe(env, nvml), lambda env: nvidia_smi_probe(env, lambda a: SMI_OUTPUT)))
    assert [g.index for g in gpus] == [0, 1, 2]


def test_torch_maps_ordinals_back_to_physical_ids_on_rocm():
    torch = types.SimpleNamespace(
        version=types.SimpleNamespace(hip="6.2"),
        cuda=types.SimpleNamespace(
            is_available=lambda: True,
            device_count=lambda: 2,
            mem_get_info=lambda i: ((10 + i) * MIB, 64 * MIB),
            get_device_name=lambda i: "AMD Instinct MI300X",
        ),
    )
    env = {"HIP_VISIBLE_DEVICES": "3,5", "CUDA_VISIBLE_DEVICES": "0"}
    assert [(g.index, g.free_bytes) for g in torch_probe(env, torch)] == [(3, 10 * MIB), (5, 11 * MIB)]


def test_on_this_machine_the_real_probes_fall_through_to_no_gpus():
    # Real pynvml without a driver raises its real error; nvidia-smi is absent.
    with pytest.raises(ProbeUnavailable, match="NVML"):
        nvml_probe({})
    with pytest.raises(ProbeUnavailable, match="nvidia-smi"):
        nvidia_smi_probe({})
    assert probe_gpus({}) == []


def test_a_failing_nvidia_smi_is_unavailable_not_a_crash():
    def broken(argv):
        raise subprocess.CalledProcessError(9, argv, "NVIDIA-SMI has failed")
    with pytest.raises(ProbeUnavailable):
        nvidia_smi_probe({}, run=broken)


@given(st.lists(st.sampled_from(["0", "1", "2", "", " ", "9", "x"]), max_size=6))
def test_masks_never_invent_gpus_or_repeat_them(entries):
    gpus = parse_nvidia_smi_csv(SMI_OUTPUT)
    visible = visible_gpus(gpus, ",".join(entries))
    assert len({g.index for g in visible}) == len(visible)
    assert {g.index for g in visible} <= {0, 1, 2}
    assert parse_mask(",".join(entries)) == [e.strip() for e in entries if e.strip()]


def test_pinning_uses_pci_order_and_drops_rocr_on_rocm():
    env = pin_environment({"ROCR_VISIBLE_DEVICES": "0,1", "PATH": "/bin"}, [2, 0], rocm=True)
    assert env["CUDA_VISIBLE_DEVICES"] == env["HIP_VISIBLE_DEVICES"] == "2,0"
    assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID" and "ROCR_VISIBLE_DEVICES" not in env and env["PATH"] == "/bin"
    assert physical_index("4,6", 1) == 6 and physical_index(None, 3) == 3 and physical_index("4", 2) is None
