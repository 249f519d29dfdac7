"""The sandbox's limits each hold, and the reward hacks a verifier must resist each fail."""
from __future__ import annotations

import os
import time
import uuid

import pytest

from leanlm.eval.sandbox import Case, Limits, netns_prefix, parse_report, run_many, run_tests

DOUBLE = [Case("call", "f", "(2,)", "4"), Case("call", "f", "(3,)", "6"), Case("call", "f", "(0,)", "0")]
GOOD = "def f(x):\n    return 2 * x\n"
FAST = Limits(timeout_s=3.0)


def verdict(code: str, tests=DOUBLE, limits=FAST):
    return run_tests(code, tests, limits)


def test_correct_program_passes_and_wrong_one_scores_its_share():
    v = verdict(GOOD)
    assert v.status == "pass" and v.full and v.share == 1.0 and v.results == (True, True, True)
    w = verdict("def f(x):\n    return x + 2\n")      # right only on f(2)
    assert w.status == "fail" and w.passed == 1 and not w.full and abs(w.share - 1 / 3) < 1e-9


def test_time_limit_holds():
    t0 = time.perf_counter()
    v = verdict("def f(x):\n    while True:\n        pass\n", limits=Limits(timeout_s=1.5))
    assert v.status == "timeout" and v.passed == 0
    assert time.perf_counter() - t0 < 6.0


def test_tests_before_a_hang_still_count():
    code = "def f(x):\n    while x == 0:\n        pass\n    return 2 * x\n"
    v = verdict(code, limits=Limits(timeout_s=1.5))
    assert v.status == "timeout" and v.results == (True, True, False)


def test_memory_limit_holds():
    v = verdict("def f(x):\n    a = bytearray(1 << 30)\n    return 2 * x\n", limits=Limits(timeout_s=3, memory_mb=200))
    assert v.status == "memory" and v.passed == 0


def test_file_descriptor_and_file_size_limits_hold():
    many = "fs = [open(f'f{i}', 'w') for i in range(64)]\n" + GOOD
    assert verdict(many, limits=Limits(timeout_s=3, files=32)).status == "error"
    big = "open('big', 'wb').write(b'x' * (3 << 20))\n" + GOOD
    assert verdict(big, limits=Limits(timeout_s=3, file_mb=1)).status == "error"
    small = "open('small', 'wb').write(b'x' * 1000)\n" + GOOD     # writing inside the temp dir is allowed
    assert verdict(small).status == "pass"


@pytest.mark.parametrize("target", ["/tmp/leanlm-escape-{}", "../leanlm-escape-{}", "/root/leanlm-escape-{}"])
def test_no_writes_outside_the_temp_dir(target):
    path = target.format(uuid.uuid4().hex)
    v = verdict(f"open({path!r}, 'w').write('x')\n" + GOOD)
    assert v.status == "blocked" and "outside" in v.detail
    assert not os.path.exists(path) and not os.path.exists(os.path.join("/tmp", os.path.basename(path)))
    v = verdict(f"import os\nos.mkdir({path!r})\n" + GOOD)
    assert v.status == "blocked" and not os.path.exists(path)


@pytest.mark.parametrize("code", [
    "import socket\n", "import _socket\n", "import urllib.request\nurllib.request.urlopen('http://127.0.0.1:9')\n",
])
def test_no_network(code):
    v = verdict(code + GOOD)
    assert v.status == "blocked" and v.passed == 0


def test_network_namespace_when_available():
    prefix = netns_prefix()
    assert prefix == () or prefix[-1] == "-rn"
    if not prefix:
        pytest.skip("unshare -rn does not work here; the audit hook alone blocks sockets")


@pytest.mark.parametrize("code", [
    "import os\nos.system('true')\n", "import subprocess\n", "import os\nos.fork()\n",
    "import os\nos.execv('/bin/true', ['true'])\n", "import ctypes\n",
])
def test_no_processes_or_native_calls(code):
    assert verdict(code + GOOD).status == "blocked"


# ------------------------------------------------------------------------- reward hacks must fail
def test_special_casing_the_visible_tests_fails_the_hidden_ones():
    visible, hidden = DOUBLE[:2], DOUBLE[2:] + [Case("call", "f", "(7,)", "14")]
    hack = "def f(x):\n    return {2: 4, 3: 6}.get(x, -1)\n"
    assert verdict(hack, visible).full
    assert not verdict(hack, visible + hidden).full


@pytest.mark.parametrize("code", [
    "import sys\nsys.exit(0)\n",                                              # exit before the tests
    "import os\ndef f(x):\n    os._exit(0)\n",                                # exit from inside a test
    "import sys\ndef f(x):\n    raise SystemExit(0)\n",
    "import atexit, os\natexit.register(lambda: None)\nos._exit(0)\n",
])
def test_early_exit_fails(code):
    v = verdict(code)
    assert not v.full and v.passed == 0 and v.status in ("exit", "error", "fail")


@pytest.mark.parametrize("code", [
    "open('tests.py').read()\n" + GOOD,                                       # there is no test file
    "import sys\ndef f(x):\n    return sys._getframe(1).f_locals['expected']\n",
    "def f(x):\n    try:\n        raise ValueError\n    except ValueError as e:\n"
    "        return e.__traceback__.tb_frame.f_back.f_locals['expected']\n",
    "import gc\ndef f(x):\n    return gc.get_objects()[0]\n",
    "open('/proc/self/mem', 'rb')\n" + GOOD,
    "open('/dev/stdin').read()\n" + GOOD,
])
def test_reading_the_tests_fails(code):
    assert not verdict(code).full


@pytest.mark.parametrize("code", [
    "class A:\n    def __eq__(self, o):\n        return True\ndef f(x):\n    return A()\n",     # always-equal
    "class L(list):\n    def __eq__(self, o):\n        return True\ndef f(x):\n    return L()\n",
    "import builtins, math\nbuiltins.all = lambda *a: True\nmath.isclose = lambda *a, **k: True\n"
    "def f(x):\n    return 2.5\n",
    "print('0' * 32 + ' END')\ndef f(x):\n    return None\n",                 # a forged report line
])
def test_fooling_the_comparison_or_the_report_fails(code):
    assert verdict(code).passed == 0


def test_stmt_tests_and_crash_at_load():
    t = [Case("stmt", src="assert f(5) == 10\nassert f(-1) == -2\n")]
    assert verdict(GOOD, t).full
    v = verdict("def f(x) return", t)
    assert v.status == "error" and "SyntaxError" in v.detail


def test_parse_report_ignores_lines_without_the_nonce_and_compares_exactly():
    t = [Case("call", "f", "(2,)", "4")]
    v = parse_report("T 0 R 4\nabc T 0 R 4\nabc END\n", "", 0, False, "nonce", t)
    assert v.passed == 0 and v.status == "exit"
    assert parse_report("nonce T 0 R 4\nnonce END\n", "", 0, False, "nonce", t).full
    assert not parse_report("nonce T 0 R 4.0\nnonce END\n", "", 0, False, "nonce", t).full     # 4.0 is not 4
    assert not parse_report("nonce T 0 R True\nnonce END\n", "", 0, False, "nonce", [Case("call", "f", "()", "1")]).full
    assert not parse_report("nonce T 0 R __import__('os')\nnonce END\n", "", 0, False, "nonce", t).full


def test_expected_values_never_enter_the_sandbox():
    leak = "import sys\ndef f(x):\n    fr = sys._getframe(1)\n    return repr(fr.f_locals)\n"
    v = run_tests(leak, [Case("call", "f", "(2,)", "'secret-expected-value'")], FAST)
    assert not v.full and v.status == "fail"


def test_run_many_keeps_order():
    out = run_many([(GOOD, DOUBLE), ("def f(x):\n    return 0\n", DOUBLE), (GOOD, DOUBLE[:1])], FAST)
    assert [v.passed for v in out] == [3, 1, 1] and [v.total for v in out] == [3, 3, 1]
