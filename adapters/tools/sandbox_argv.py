"""The command lines that put a program in the sandbox (pure: the host's
layout comes in as data, found by ``sandbox.py``).

The chain, outermost first:
- ``setpriv``: dies with the service (PR_SET_PDEATHSIG); without bubblewrap
  and as root it also becomes the conversation's own unprivileged uid.
- ``prlimit``: CPU seconds, address space, file size, process count, no core
  files, inherited by everything below. A preexec function would do the same
  in Python between fork and exec, which can deadlock a process with threads
  (gRPC's); util-linux's tools do it in C after exec.
- ``bwrap`` (when it works): no network, read-only system, private /tmp and
  /proc, its own pid namespace (everything in it dies with it), the scratch
  directory the only writable place. Run as root, it makes no user namespace
  and drops to the conversation's uid inside, with ``setpriv``: RLIMIT_NPROC
  counts processes per real uid and never stops root, so only a real
  unprivileged uid contains a fork bomb.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

_MEBI = 1 << 20
_TMP = PurePosixPath("/tmp")


@dataclass(frozen=True)
class SandboxLimits:
    cpu_s: int = 60  # CPU seconds per process (SIGXCPU, then SIGKILL a second later)
    memory_bytes: int = 1024 * _MEBI  # address space per process (RLIMIT_AS)
    file_bytes: int = 64 * _MEBI  # largest file it may write (RLIMIT_FSIZE)
    processes: int = 64  # processes and threads at once (RLIMIT_NPROC)
    output_bytes: int = 16 * 1024  # stdout and stderr kept for the model
    tmp_bytes: int = 64 * _MEBI  # its private /tmp under bubblewrap (where bwrap can size it)

    def __post_init__(self) -> None:
        for name in ("cpu_s", "memory_bytes", "file_bytes", "processes", "output_bytes", "tmp_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"sandbox limit {name} must be at least 1, not {getattr(self, name)}")


@dataclass(frozen=True)
class HostLayout:
    """What of the host the sandbox sees, read-only."""

    links: tuple[tuple[str, str], ...]  # top-level symlinks (/bin -> usr/bin on merged-/usr systems)
    dirs: tuple[str, ...]  # system directories bound as they are (/usr, and /bin where not a link)
    etc: tuple[str, ...]  # the /etc entries programs need (ld.so.cache, passwd, ssl, ...)
    extra: tuple[str, ...] = ()  # the service's Python (venv and base install) where outside those


def setpriv_argv(setpriv: str, uid: int | None, *, pdeathsig: bool = True) -> list[str]:
    """Die with the parent; with ``uid``, become it for good (no groups, no capabilities, no setuid)."""
    argv = [setpriv]
    if uid is not None:
        argv += [f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all"]
    argv.append("--no-new-privs")
    if pdeathsig:
        argv.append("--pdeathsig=KILL")
    return [*argv, "--"]


def prlimit_argv(prlimit: str, limits: SandboxLimits, processes: int) -> list[str]:
    """``processes`` is the RLIMIT_NPROC value: the count of the uid's tasks it may reach."""
    return [
        prlimit,
        f"--cpu={limits.cpu_s}:{limits.cpu_s + 1}",
        f"--as={limits.memory_bytes}",
        f"--fsize={limits.file_bytes}",
        f"--nproc={processes}",
        "--core=0",
        "--",
    ]


def bwrap_argv(bwrap: str, layout: HostLayout, scratch: str, *, as_root_uid: int | None,
               setpriv: str, tmp_bytes: int | None, disable_userns: bool = False) -> list[str]:
    """Bubblewrap's options; ``as_root_uid``: the service is root, drop to that uid inside.

    ``tmp_bytes`` None: this bwrap cannot size a tmpfs (older than 0.7);
    ``disable_userns``: it can forbid namespaces inside the sandbox (0.8 on).
    """
    argv = [bwrap, "--die-with-parent", "--new-session"]
    if as_root_uid is None:  # unprivileged: a user namespace (it maps the service's uid to itself)
        argv += ["--unshare-all", "--unshare-user"]
        if disable_userns:
            argv.append("--disable-userns")  # no nested namespaces: less kernel within reach
    else:
        argv += ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]
    argv += ["--hostname", "sandbox"]
    for path in layout.dirs:
        argv += ["--ro-bind", path, path]
    for path, target in layout.links:
        argv += ["--symlink", target, path]
    if layout.etc:  # bwrap would make /etc root-only (0700): the dropped uid must read passwd, ssl, zoneinfo
        argv += ["--perms", "0755", "--dir", "/etc"]
    for path in layout.etc:
        argv += ["--ro-bind", path, path]
    argv += ["--proc", "/proc", "--dev", "/dev"]
    if tmp_bytes is not None:
        argv += ["--size", str(tmp_bytes)]
    argv += ["--perms", "01777", "--tmpfs", "/tmp"]  # writable by the dropped uid too
    # bwrap creates the parents of a bind owned by root and 0700: open them
    # (after /tmp is mounted, where the scratch root may be) so that the
    # unprivileged uid reaches what is bound below.
    bound = [*layout.dirs, *(p for p, _ in layout.links), *layout.etc, "/proc", "/dev"]
    for parent in _parents_to_create([*layout.extra, scratch], bound):
        argv += ["--perms", "0755", "--dir", parent]
    for path in layout.extra:
        argv += ["--ro-bind", path, path]
    argv += ["--bind", scratch, scratch, "--chdir", scratch]
    if as_root_uid is not None:
        argv += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--",
                 *setpriv_argv(setpriv, as_root_uid, pdeathsig=False)[:-1]]
    return [*argv, "--"]


def _parents_to_create(paths: Sequence[str], bound: Sequence[str]) -> list[str]:
    """The directories above ``paths`` that are not inside anything ``bound``, shallowest first."""
    covered = [PurePosixPath(b) for b in bound]
    parents: list[str] = []
    for path in paths:
        for parent in reversed(PurePosixPath(path).parents[:-1]):  # [:-1] drops "/"
            if parent == _TMP or any(parent == c or c in parent.parents for c in covered):
                continue  # exists: bound from the host (with its own permissions), or the tmpfs
            if str(parent) not in parents:
                parents.append(str(parent))
    return parents
