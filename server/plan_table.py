"""A LoadPlan as the table `llamagate plan` prints."""

from __future__ import annotations

from llamagate.domain.gpus import MIB
from llamagate.domain.hub_load import HubModel
from llamagate.domain.load_plan import LoadPlan


def _mib(n: int) -> str:
    return f"{n / MIB:,.1f} MiB"


def render_plan(load_plan: LoadPlan, hub: HubModel | None = None) -> str:
    plan, facts, kv = load_plan.plan, load_plan.facts, load_plan.kv
    if plan.gpus:
        where = f"GPU {','.join(map(str, plan.gpus))} (every layer)"
    else:
        where = "CPU" if not plan.shares and plan.fits else "llama-server --fit on"
    rows = [
        ("model", f"{facts.path} ({facts.architecture})"),
        ("context", f"{plan.context_length} (native {facts.native_context_length}, ceiling {plan.ceiling_context})"),
        ("placement", where + (" [simulated GPUs]" if load_plan.simulated else "")),
        ("fits", "yes" if plan.fits else "no"),
        ("weights", f"{plan.weights_bytes:,} bytes ({_mib(plan.weights_bytes)})"),
        ("KV cache", f"{plan.kv_bytes:,} bytes ({_mib(plan.kv_bytes)})"),
    ]
    if kv is not None:
        rows.append(("  parts", f"K {_mib(kv.k_bytes)}, V {_mib(kv.v_bytes)}, SWA K {_mib(kv.swa_k_bytes)},"
                                 f" SWA V {_mib(kv.swa_v_bytes)}, recurrent {_mib(kv.recurrent_bytes)}"))
        rows.append(("  method", kv.explanation))
    if hub is not None:
        rows += _hub_rows(hub)
    lines = [f"{name:<10} {value}" for name, value in rows]
    if plan.shares:
        lines.append("")
        lines.append(f"{'GPU':>4} {'free':>12} {'budget':>12} {'weights':>12} {'KV':>12} {'reserve':>12}")
        for s in plan.shares:
            cells = (s.free_bytes, s.budget_bytes, s.weights_bytes, s.kv_bytes, s.reserve_bytes)
            lines.append(f"{s.index:>4} " + " ".join(f"{_mib(c):>12}" for c in cells))
    if plan.workers:
        lines.append("")
        lines.append(f"{'RPC worker':<24} {'free':>12} {'budget':>12} {'weights':>12} {'KV':>12}")
        for w in plan.workers:
            worker_cells = (w.free_bytes, w.budget_bytes, w.weights_bytes, w.kv_bytes)
            ram = "  (its RAM: a CPU worker reports no free memory)" if w.memory_is_ram else ""
            lines.append(f"{w.address + '/' + str(w.device):<24} " + " ".join(f"{_mib(c):>12}" for c in worker_cells) + ram)
    lines.append("")
    lines.append("why:")
    lines += [f"  - {reason}" for reason in plan.reasons]
    return "\n".join(lines)


def _hub_rows(hub: HubModel) -> list[tuple[str, str]]:
    files = ", ".join(f.path for f in hub.selection.files)
    disk = "fits" if hub.fits_disk else "does NOT fit: a load would take a smaller variant or fail"
    return [
        ("hub", f"{hub.reference} at {hub.commit[:12]}: {files}"),
        ("download", f"{_mib(hub.bytes_to_download)} of {_mib(hub.bytes_total)} still to fetch"),
        ("disk", f"{_mib(hub.disk_free)} free in {hub.cache_dir}: {disk}"),
    ]
