"""Where serve listens: addresses parsed before anything starts, a taken port
refused (never shared), unix sockets, and the client commands' addresses."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_cli import free_port, llamagate, start_serve

from llamagate.server.address import Address, parse_address
from llamagate.v1 import llamagate_pb2 as pb
from llamagate.v1 import llamagate_pb2_grpc as pb_grpc

# -- The pure parser ------------------------------------------------------------

ports = st.integers(0, 65535)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
label = st.from_regex(r"[a-z0-9_]([a-z0-9_-]{0,20}[a-z0-9_])?", fullmatch=True)
host_names = st.lists(label, min_size=1, max_size=4).map(".".join).filter(lambda h: not h.replace(".", "").isdigit())
# the text is stripped (an address from a file or the environment may end in a newline): a path never starts or
# ends with white space
unix_paths = st.text(st.characters(codec="ascii", exclude_characters="\0"), min_size=1, max_size=100).filter(
    lambda p: p == p.strip() and not p.startswith("//"))
addresses = st.one_of(
    st.builds(Address, host=st.one_of(ipv4, ipv6, host_names), port=ports),
    st.builds(Address, path=unix_paths),
)


@given(addresses)
def test_an_address_reads_back_from_how_grpc_spells_it(address):
    assert parse_address(address.target, listening=True) == address


@given(addresses)
def test_a_client_takes_every_address_a_service_listens_on_except_port_0(address):
    if address.port == 0 and not address.is_unix:
        with pytest.raises(ValueError, match="out of range"):
            parse_address(address.target, listening=False)
    else:
        assert parse_address(address.target, listening=False) == address


@given(st.integers(65536, 10**5 - 1))
def test_a_port_past_65535_is_refused_not_wrapped_around(port):
    with pytest.raises(ValueError, match=f"port {port} is out of range"):
        parse_address(f"127.0.0.1:{port}", listening=True)


@given(st.text(max_size=40))
def test_any_text_is_an_address_or_a_value_error_quoting_it(text):
    try:
        address = parse_address(text, listening=True)
    except ValueError as error:
        assert repr(text.strip()) in str(error)
    else:
        assert address.is_unix or 0 <= address.port <= 65535


@given(ipv6, ports)
def test_an_ipv6_address_needs_its_brackets(host, port):
    assert parse_address(f"[{host}]:{port}", listening=True) == Address(host=host, port=port)
    if "." not in host:  # ::ffff:1.2.3.4 without brackets reads as a host name, refused all the same
        with pytest.raises(ValueError, match="brackets"):
            parse_address(f"{host}:{port}", listening=True)


@pytest.mark.parametrize(("text", "why"), [
    ("127.0.0.1", "no port"),
    ("127.0.0.1:", "not a number"),
    (":50051", "no host"),
    ("bad host:1", "not a host name"),
    ("256.1.1.1:5", "not an IPv4 address"),
    ("[not-v6]:5", "not an IPv6 address"),
    ("localhost:http", "not a number"),
    ("localhost:-1", "not a number"),
    ("unix:", "path is empty"),
    ("unix://relative/x.sock", "absolute path"),
    ("unix:/" + "x" * 200, "the system allows 107"),
])
def test_a_malformed_address_says_what_is_wrong(text, why):
    with pytest.raises(ValueError, match=why):
        parse_address(text, listening=True)


def test_unix_takes_grpcs_uri_form_too():
    assert parse_address("unix:///run/x.sock", listening=False) == parse_address("unix:/run/x.sock", listening=False)
    assert parse_address(" unix:rel.sock\n", listening=True).target == "unix:rel.sock"


# -- serve, as a process --------------------------------------------------------


def serve_no_model(address: str) -> subprocess.Popen:
    """``llamagate serve --no-model``, once it listens."""
    serve = subprocess.Popen([sys.executable, "-m", "llamagate.server.cli", "serve", "--no-model", "--listen", address],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert serve.stdout is not None
    for line in serve.stdout:
        if line.startswith("llamagate listening on"):
            return serve
    raise AssertionError(f"serve ended before it listened (code {serve.wait()})")


def stop(serve: subprocess.Popen) -> None:
    serve.terminate()
    serve.wait(timeout=30)


@pytest.mark.parametrize("address", ["127.0.0.1:99999", "127.0.0.1", "::1:50051", "unix:"])
def test_serve_on_an_invalid_address_exits_2_with_one_line(address):
    result = llamagate("serve", "--no-model", "--listen", address, timeout=30)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("llamagate: cannot listen on")


def test_an_invalid_llamagate_address_fails_a_client_command_with_2():
    result = llamagate("status", "--address", "127.0.0.1:0", timeout=30)
    assert result.returncode == 2 and "out of range" in result.stderr
    assert result.stderr.count("\n") == 1


@pytest.mark.engine
def test_a_second_serve_on_a_taken_port_exits_2_and_the_first_keeps_every_connection():
    address = f"127.0.0.1:{free_port()}"
    first, pid = start_serve(address)
    try:
        started = time.monotonic()
        second = llamagate("serve", "--listen", address, "--ctx", "1024", timeout=60)
        took = time.monotonic() - started
        assert second.returncode == 2, second.stderr
        assert "in use" in second.stderr and second.stderr.count("\n") == 1
        print(f"the refused second serve exited after {took:.2f} s")
        answered_by = set()
        for _ in range(20):  # each on a fresh connection: with a shared port the kernel would spread them
            with grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
                reply = pb_grpc.LlamaGateServiceStub(channel).GetStatus(pb.GetStatusRequest(), timeout=10)
                answered_by.add(reply.model.pid)
        assert answered_by == {pid}
    finally:
        stop(first)


def test_a_live_unix_socket_is_never_taken_over(tmp_path):
    address = f"unix:{tmp_path / 'llamagate.sock'}"
    first = serve_no_model(address)
    try:
        second = llamagate("serve", "--no-model", "--listen", address, timeout=30)
        assert second.returncode == 2 and "a service is listening there" in second.stderr
        status = llamagate("status", "--address", address, timeout=30)
        assert status.returncode == 0 and "no model loaded" in status.stdout
    finally:
        stop(first)


def test_a_stale_unix_socket_of_a_dead_service_is_replaced(tmp_path):
    path = tmp_path / "llamagate.sock"
    with socket.socket(socket.AF_UNIX) as dead:  # bound, then closed: the file stays, nobody listens
        dead.bind(str(path))
    assert path.is_socket()
    serve = serve_no_model(f"unix:{path}")
    try:
        status = llamagate("status", "--address", f"unix:{path}", timeout=30)
        assert status.returncode == 0, status.stderr
    finally:
        stop(serve)


def test_a_file_that_is_not_a_socket_is_left_alone(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("mine")
    result = llamagate("serve", "--no-model", "--listen", f"unix:{path}", timeout=30)
    assert result.returncode == 2 and "not a socket" in result.stderr
    assert path.read_text() == "mine"


@pytest.mark.engine
def test_unix_socket_end_to_end(tmp_path):
    address = f"unix:{Path(tmp_path) / 'gate.sock'}"
    serve, pid = start_serve(address)
    try:
        chat = llamagate("chat", "--address", address, "--max-tokens", "8", "Say hello.", timeout=60)
        assert chat.returncode == 0 and chat.stdout.strip(), chat.stderr
        status = llamagate("status", "--address", address, timeout=30)
        assert f"pid      {pid}" in status.stdout
    finally:
        stop(serve)
    assert not (Path(tmp_path) / "gate.sock").exists()  # gRPC removes its socket when it stops
