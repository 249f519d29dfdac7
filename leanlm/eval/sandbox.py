"""Run untrusted Python (model-written code) against unit tests in a locked-down subprocess.

One call = one fresh interpreter (``python -I -S``: no user site, no environment, no site-packages) in a
temporary working directory, inside a new network namespace when ``unshare -rn`` works on this machine.
Before the candidate runs, the harness sets resource limits (address space, CPU seconds, open files, file
size) and installs an audit hook (PEP 578) that refuses sockets, subprocesses, ``os.system`` / ``exec*`` /
``fork`` / ``kill``, ``ctypes``, opening a file for writing or creating / removing / renaming anything
outside the temporary directory, and reading ``/proc`` or ``/dev``.

Tests are data, not a file. A ``call`` test holds the function name, the arguments and the expected value
as Python literals, and **the expected value never enters the sandbox**: the child reports each return
value (exact builtin types only; anything else is refused), and this process compares it with ``same``
(the same type at every level, so an object whose ``__eq__`` always says yes, or a list subclass, does not
pass). Nothing the candidate can read - its own frames, the harness's locals, the garbage collector -
holds an answer. A ``stmt`` test is assert-style source (HumanEval's ``check``) run in the candidate's
namespace; it is used for evaluation only, never to make training data.

Every line the harness reports carries a random nonce; the run is complete only with the final ``END``
line and a result for every test: a program that exits early (``sys.exit``, ``os._exit``), hangs or
crashes gets credit for the tests answered before it stopped, never for the rest.
"""
from __future__ import annotations

import ast
import functools
import json
import math
import secrets
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Case:
    kind: str                 # "call": fn(*args) == expected, compared by ``same``; "stmt": assert source
    fn: str = ""
    args: str = "()"          # Python literal of the argument tuple
    expected: str = "None"    # Python literal of the expected return value
    src: str = ""             # stmt tests only

    def __post_init__(self) -> None:
        if self.kind not in ("call", "stmt"):
            raise ValueError(f"test kind {self.kind!r}: 'call' or 'stmt'")

    def to_dict(self) -> dict:
        return {"kind": self.kind, "fn": self.fn, "args": self.args, "expected": self.expected, "src": self.src}


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 5.0     # wall clock for the whole run; the same (rounded up) in CPU seconds
    memory_mb: int = 256       # address space
    files: int = 32            # open file descriptors
    file_mb: int = 1           # largest file the candidate may write (in the temporary directory)
    network_namespace: bool = True   # also run under ``unshare -rn`` when it works here


@dataclass(frozen=True)
class Verdict:
    status: str                # pass | fail | error | timeout | memory | exit | blocked
    passed: int
    total: int
    results: tuple[bool, ...] = field(default=())
    detail: str = ""

    @property
    def share(self) -> float:
        return self.passed / self.total if self.total else 0.0

    @property
    def full(self) -> bool:
        return self.total > 0 and self.passed == self.total and self.status == "pass"


_HARNESS = r'''
def main():
    import sys, os, json, resource
    cfg = json.loads(sys.stdin.read()); os.close(0)
    # everything the harness calls after the candidate has run is bound here first, so patching builtins
    # or modules cannot change what it reports
    nonce, tmp, out = cfg["nonce"], os.path.realpath(cfg["tmp"]), os.dup(1)
    write, realpath, isabs, join, exit_now = os.write, os.path.realpath, os.path.isabs, os.path.join, os._exit
    ttype, tlen, trange, trepr, tstr, tany, tall = type, len, range, repr, str, any, all
    exact = (int, float, str, bool, bytes, type(None), complex)

    def plain(v, depth=0):            # only exact builtin types travel back (their repr cannot be faked)
        t = ttype(v)
        if depth > 40:
            return False
        if t in exact:
            return True
        if t is list or t is tuple or t is set or t is frozenset:
            return tall(plain(x, depth + 1) for x in v)
        if t is dict:
            return tall(plain(k, depth + 1) and plain(x, depth + 1) for k, x in v.items())
        return False

    def report(line):
        write(out, (nonce + " " + line.replace("\n", " ") + "\n").encode())

    mem, cpu = cfg["memory"], cfg["cpu"]
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_NOFILE, (cfg["files"], cfg["files"]))
    resource.setrlimit(resource.RLIMIT_FSIZE, (cfg["fsize"], cfg["fsize"]))

    deny = ("socket.", "subprocess.", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
            "os.forkpty", "os.kill", "os.killpg", "pty.", "ctypes.", "sys.addaudithook", "os.putenv",
            "os.unsetenv", "resource.setrlimit", "resource.prlimit", "webbrowser.")
    denied_imports = {"ctypes", "_ctypes", "socket", "_socket", "ssl", "_ssl", "subprocess", "_posixsubprocess",
                      "multiprocessing", "_multiprocessing", "pty"}
    changes = {"os.remove", "os.rename", "os.mkdir", "os.rmdir", "os.chmod", "os.chown", "os.link", "os.symlink",
               "os.truncate", "os.utime", "os.chflags", "os.lchown", "os.mkfifo", "os.mknod", "shutil.rmtree",
               "shutil.copyfile", "shutil.copymode", "shutil.copystat", "shutil.move", "os.replace"}
    armed = [False]

    def text(path):
        return path.decode() if ttype(path) is bytes else tstr(path)

    def inside(path):
        if ttype(path) is int:
            return True
        p = text(path)
        p = realpath(p if isabs(p) else join(tmp, p))
        return p == tmp or p.startswith(tmp + "/")

    def hook(event, args):
        if not armed[0]:
            return
        if event.startswith(deny):
            raise PermissionError("sandbox: " + event + " is not allowed")
        if event == "import" and tstr(args[0]).split(".")[0] in denied_imports:
            raise PermissionError("sandbox: import " + tstr(args[0]) + " is not allowed")
        if event == "open":
            path, mode, flags = args
            wflags = flags if ttype(flags) is int else 0           # O_WRONLY | O_RDWR | O_CREAT | O_TRUNC
            writing = bool(wflags & 0o1103) or (mode is not None and tany(c in tstr(mode) for c in "wax+"))
            if writing and not inside(path):
                raise PermissionError("sandbox: no writes outside the temporary directory")
            if ttype(path) is not int:
                p = realpath(text(path))
                if (p.startswith("/proc") or p.startswith("/dev")) and p not in ("/dev/null", "/dev/urandom"):
                    raise PermissionError("sandbox: " + p + " is not readable here")
        if event in changes and not tall(inside(a) for a in args[:2] if ttype(a) in (str, bytes)):
            raise PermissionError("sandbox: no changes outside the temporary directory")

    import ast, typing, math, re, collections, itertools, functools, string, heapq   # common, imported unsandboxed
    calls = []
    for t in cfg["tests"]:
        if t["kind"] == "call":
            calls.append(("call", t["fn"], ast.literal_eval(t["args"])))
        else:
            calls.append(("stmt", compile(t["src"], "<test>", "exec"), None))
    code = cfg["code"]
    del cfg
    sys.addaudithook(hook)
    armed[0] = True
    ns = {"__name__": "__candidate__", "__builtins__": __builtins__}
    try:
        exec(compile(code, "<candidate>", "exec"), ns)
    except MemoryError:
        report("LOAD memory"); exit_now(0)
    except BaseException as e:
        report("LOAD " + ttype(e).__name__ + ": " + tstr(e)[:200]); exit_now(0)
    for i in trange(tlen(calls)):
        kind, a, args = calls[i]
        try:
            if kind == "call":
                fn = ns.get(a)
                if fn is None:
                    raise NameError("no function " + a)
                got = fn(*args)
                line = ("R " + trepr(got)) if plain(got) else ("X non-builtin result " + ttype(got).__name__)
            else:
                exec(a, ns)
                line = "OK"
        except AssertionError:
            line = "X assertion failed"
        except BaseException as e:
            line = "X " + ttype(e).__name__ + ": " + tstr(e)[:160]
        report("T " + tstr(i) + " " + line[:200000])
    report("END")
    exit_now(0)

main()
'''


@functools.lru_cache(maxsize=1)
def netns_prefix() -> tuple[str, ...]:
    """``("unshare", "-rn")`` when an unprivileged network namespace works here, else ``()``."""
    exe = shutil.which("unshare")
    if not exe:
        return ()
    try:
        ok = subprocess.run([exe, "-rn", "true"], capture_output=True, timeout=5).returncode == 0
    except (OSError, subprocess.SubprocessError):
        ok = False
    return (exe, "-rn") if ok else ()


def run_tests(code: str, tests: list[Case], limits: Limits = Limits()) -> Verdict:
    """Run ``code`` then each of ``tests`` in a fresh sandboxed interpreter; the verdict counts passes.
    Expected values never enter the sandbox: the child reports each return value, compared here."""
    nonce = secrets.token_hex(16)
    cpu = max(1, int(limits.timeout_s + 0.999))
    sent = [{"kind": t.kind, "fn": t.fn, "args": t.args, "src": t.src} for t in tests]
    with tempfile.TemporaryDirectory(prefix="leanlm-sandbox-") as tmp:
        payload = {"nonce": nonce, "tmp": tmp, "memory": limits.memory_mb << 20, "cpu": cpu, "files": limits.files,
                   "fsize": limits.file_mb << 20, "code": code, "tests": sent}
        cmd = [*(netns_prefix() if limits.network_namespace else ()), sys.executable, "-I", "-S", "-c", _HARNESS]
        try:
            proc = subprocess.run(cmd, input=json.dumps(payload), capture_output=True, text=True,
                                  timeout=limits.timeout_s, cwd=tmp, env={}, start_new_session=True)
            stdout, stderr, rc, timed_out = proc.stdout, proc.stderr, proc.returncode, False
        except subprocess.TimeoutExpired as e:
            stdout = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
            stderr, rc, timed_out = "", None, True
    return parse_report(stdout, stderr, rc, timed_out, nonce, tests)


def same(expected, got, depth: int = 0) -> bool:
    """Exact equality of builtin values: the same type at every level (True is not 1, a tuple is not a
    list), floats within 1e-9."""
    t = type(expected)
    if type(got) is not t or depth > 50:
        return False
    if t in (list, tuple):
        return len(expected) == len(got) and all(same(a, b, depth + 1) for a, b in zip(expected, got))
    if t is dict:
        return expected.keys() == got.keys() and all(same(v, got[k], depth + 1) for k, v in expected.items())
    if t is float:
        return expected == got or math.isclose(expected, got, rel_tol=1e-9, abs_tol=1e-9)
    return expected == got


def _judge(test: Case, body: str) -> tuple[bool, str]:
    if body == "OK":
        return test.kind == "stmt", ""
    if body.startswith("R ") and test.kind == "call":
        try:
            got = ast.literal_eval(body[2:])
        except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
            return False, "unreadable result"
        return same(ast.literal_eval(test.expected), got), ""
    return False, body[2:] if body.startswith("X ") else body


def parse_report(stdout: str, stderr: str, rc: int | None, timed_out: bool, nonce: str, tests: list[Case]) -> Verdict:
    """The verdict from the harness's nonce-tagged lines (anything else the program printed is ignored)."""
    total = len(tests)
    results, status, detail, ended = [False] * total, None, "", False
    for line in stdout.splitlines():
        if not line.startswith(nonce + " "):
            continue
        body = line[len(nonce) + 1:]
        if body.startswith("LOAD "):
            detail = body[5:]
            status = "memory" if "memory" in detail or "MemoryError" in detail else (
                "blocked" if "sandbox:" in detail else "error")
        elif body.startswith("T "):
            _, i, rest = (body.split(" ", 2) + [""])[:3]
            if i.isdigit() and int(i) < total:
                ok, why = _judge(tests[int(i)], rest)
                results[int(i)] = ok
                if not ok and not detail:
                    detail = why or f"test {i}: wrong result"
        elif body == "END":
            ended = True
    passed = sum(results)
    if status is None:
        if timed_out or rc in (-24, -9):
            status, detail = "timeout", detail or "time limit"
        elif not ended:
            status = "memory" if "MemoryError" in stderr else "exit"
            detail = detail or f"stopped before the tests finished (exit status {rc})"
        elif passed == total:
            status = "pass"
        else:
            status = "blocked" if "sandbox:" in detail else ("memory" if "MemoryError" in detail else (
                "error" if detail and not detail.startswith(("test ", "assertion")) else "fail"))
    return Verdict(status, passed, total, tuple(results), detail[:240])


def run_many(jobs: list[tuple[str, list[Case]]], limits: Limits = Limits(), workers: int = 2) -> list[Verdict]:
    """``run_tests`` over many (code, tests) jobs, ``workers`` subprocesses at a time; order kept."""
    if not jobs:
        return []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(lambda j: run_tests(j[0], j[1], limits), jobs))
