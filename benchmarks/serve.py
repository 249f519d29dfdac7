"""``leanlm serve`` under load, on loopback: throughput and latency at 1, 4 and 8 streaming clients, a
swap test (>= 200 requests at 8 clients while 3 generations of an evolve run are swapped in), the cost of a
swap on in-flight requests, and server RSS across 20 swaps.

    .venv/bin/python benchmarks/serve.py [--quick] [--threads 1] [--json OUT] [--backends torch llama_cpp]

The server is a real ``leanlm serve RUN --follow`` subprocess; the run directory is written here through
``leanlm.evolve.lineage`` (generation 0 is SmolLM2-135M-Instruct, later generations point at copies of it
with one RMSNorm scaled by 1 + 1e-3 k, so every version has weights of its own). Throughput phases alternate
1 and 8 clients (``--rounds``) so the 8/1 ratio is a same-run median. Everything is bounded: a request count
per phase, a deadline per phase, a timeout per request. With llama-cpp-python importable, the same client
phases also run against ``leanlm serve --backend llama_cpp`` and llama-cpp-python's own server on the
bundled GGUF.
"""
from __future__ import annotations

import argparse
import logging
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import run_phase, summarize  # noqa: E402

HERE = Path(__file__).resolve().parent
PY = sys.executable
log = logging.getLogger("serve-bench")
SPEC = "smollm2-135m"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server subprocess on loopback; ``stop`` ends it (only the process this object started)."""

    def __init__(self, argv: list[str], url: str, log_path: Path, ready_path: str = "/health"):
        self.url, self.log_path = url, log_path
        self.out = open(log_path, "w")
        self.proc = subprocess.Popen(argv, stdout=self.out, stderr=subprocess.STDOUT, cwd=HERE.parent)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited ({self.proc.returncode}); see {log_path}")
            try:
                if httpx.get(url + ready_path, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"server not ready in 300 s; see {log_path}")

    def rss(self) -> int:
        return psutil.Process(self.proc.pid).memory_info().rss

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.out.close()


def leanlm_server(spec: str, args, work: Path, tag: str, extra: list[str] = ()) -> Server:
    port = free_port()
    argv = [PY, "-m", "leanlm.cli", "serve", spec, "--port", str(port), "--threads", str(args.threads),
            "--max-batch", "16", "--max-queue", "256", "--prefix-cache", str(args.prefix_cache), *extra]
    argv += ["--dtype", args.dtype, "--skinny" if args.skinny else "--no-skinny"]
    return Server(argv, f"http://127.0.0.1:{port}", work / f"server-{tag}.log")


# ------------------------------------------------------------------ the run directory
def make_variants(work: Path, n: int) -> list[Path]:
    """``n`` copies of SmolLM2 with one norm scaled by 1 + 1e-3 k: distinct weights, same behaviour."""
    import torch

    from leanlm import load

    out = []
    model, tok = load(SPEC, dtype="bf16")               # saved as bf16 (the cache's dtype); served as --dtype
    base = model.model.norm.weight.detach().clone()
    for k in range(1, n + 1):
        d = work / "variants" / f"v{k}"
        if not (d / "config.json").is_file():
            with torch.no_grad():
                model.model.norm.weight.copy_(base * (1 + 1e-3 * k))
            model.save_pretrained(d, safe_serialization=True)
            tok.save_pretrained(d)
        out.append(d)
    return out


def add_generation(run: Path, g: int, source: str, accepted: bool = True) -> float:
    from leanlm.evolve import lineage

    rec = {"generation": g, "parent": g - 1 if g else None, "accepted": accepted, "model_source": source,
           "metrics": {"headline": round(0.01 * g, 3)}}
    lineage.save_generation(run, rec, [], [])
    return time.perf_counter()


def make_run(work: Path) -> Path:
    from leanlm.evolve import lineage
    from leanlm.evolve.config import EvolveConfig

    run = work / "run"
    if run.exists():
        import shutil

        shutil.rmtree(run)
    lineage.init_run(run, EvolveConfig(spec=SPEC))
    add_generation(run, 0, SPEC)
    return run


def ledger_times(url: str) -> dict[str, float]:
    """Version -> when it went live (perf_counter clock, from the ledger's wall-clock times)."""
    entries = httpx.get(url + "/admin/ledger", timeout=10).json()["data"]
    skew = time.time() - time.perf_counter()
    return {e["version"]: datetime.fromisoformat(e["time"]).timestamp() - skew
            for e in entries if e["event"] == "live"}


def wait_current(url: str, version: str, timeout: float = 120) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if httpx.get(url + "/admin/ledger", timeout=10).json()["state"]["current"] == version:
            return True
        time.sleep(0.2)
    return False


# ------------------------------------------------------------------ phases
def scheduler_counts(url: str) -> dict[str, float] | None:
    """The leanlm scheduler's decode/prefill token and second counters from /metrics (None elsewhere)."""
    try:
        text = httpx.get(url + "/metrics", timeout=10).text
    except httpx.HTTPError:
        return None
    out = {line.split()[0].removeprefix("leanlm_scheduler_"): float(line.split()[1])
           for line in text.splitlines() if line.startswith("leanlm_scheduler_")}
    return out or None


def throughput(url: str, model: str, args) -> dict:
    """1, 4, 8 clients; 1 and 8 alternate over ``rounds`` so their ratio is a same-run median. Client side:
    end-to-end tokens/s (prefill included); server side (leanlm only): decode tokens per second of decode
    steps, summed over the batch."""
    rows: dict[int, list[dict]] = {1: [], 4: [], 8: []}
    run_phase(url, model, 2, 2, 4)                                  # warm-up
    for r in range(args.rounds):
        for clients in ((1, 8, 4) if r == 0 else (8, 1)):
            before = scheduler_counts(url)
            res, wall = run_phase(url, model, clients, args.requests_per_client * clients, args.max_tokens,
                                  deadline_s=args.phase_deadline)
            row = summarize(res, wall)
            after = scheduler_counts(url)
            if before and after:
                d = {k: after[k] - before[k] for k in after}
                row["decode_tok_s"] = d["decode_tokens"] / max(d["decode_seconds"], 1e-9)
                row["prefill_tok_s"] = d["prefill_tokens"] / max(d["prefill_seconds"], 1e-9)
                row["decode_share_of_wall"] = d["decode_seconds"] / wall
            rows[clients].append(row)
            log.info("%d clients: %.1f tok/s end to end, %s decode tok/s", clients, row["tokens_per_s"],
                     f"{row['decode_tok_s']:.1f}" if "decode_tok_s" in row else "-")
    out = {"by_clients": {str(c): _median_row(v) for c, v in rows.items()}, "rounds": rows}
    for key in ("tokens_per_s", "decode_tok_s"):
        if all(key in r for r in rows[1] + rows[8]):
            ratios = [b[key] / a[key] for a, b in zip(rows[1], rows[8])]
            out[f"ratio_8_over_1_{key}"] = statistics.median(ratios)
            out[f"ratios_{key}"] = ratios
    return out


def _median_row(rows: list[dict]) -> dict:
    keys = [k for k in rows[0] if isinstance(rows[0][k], (int, float)) and rows[0][k] is not None]
    out = {k: statistics.median(r[k] for r in rows if r[k] is not None) for k in keys}
    out["errors"] = sorted({e for r in rows for e in r["errors"]})
    return out


def swap_test(url: str, run: Path, variants: list[Path], args) -> dict:
    """8 clients, ``swap_requests`` requests; generations 1-3 appear at 25/50/75% (a rolled-back one too)."""
    marks = {int(args.swap_requests * q): k for k, q in enumerate((0.25, 0.5, 0.75), start=1)}
    written: dict[str, float] = {}
    state = {"g": 0}

    def on_done(n: int) -> None:
        if n in marks:
            state["g"] += 1
            g = 2 * state["g"]                                       # odd generations are rolled back
            add_generation(run, g - 1, str(variants[0]), accepted=False)
            written[f"run@gen-{g}"] = add_generation(run, g, str(variants[(g // 2 - 1) % len(variants)]))
            marks.pop(n)

    results, wall = run_phase(url, "run", 8, args.swap_requests, args.swap_tokens, deadline_s=600,
                              on_done=on_done, first_index=1000)
    s = summarize(results, wall)
    live = ledger_times(url)
    windows = [(written[v], live[v]) for v in written if v in live]
    versions = [sorted(r.models) for r in results if r.error is None]
    in_swap = [r for r in results if r.error is None and any(r.start < b and r.end > a for a, b in windows)]
    clear = [r for r in results if r.error is None and r not in in_swap]
    worst = lambda rs: [max(r.gaps(), default=0.0) for r in rs]  # noqa: E731
    return {**s, "served_versions": sorted({v for vs in versions for v in vs}),
            "requests_without_version": sum(1 for vs in versions if not vs),
            "requests_seeing_two_versions": sum(1 for vs in versions if len(vs) > 1),
            "rolled_back_served": sum(1 for vs in versions for v in vs if int(v.rsplit("-", 1)[1]) % 2),
            "swaps_live": len(windows), "load_to_live_s": [round(b - a, 2) for a, b in windows],
            "in_swap_requests": len(in_swap),
            "in_swap_max_gap_s": max(worst(in_swap), default=None),
            "clear_max_gap_p50_s": statistics.median(worst(clear)) if clear else None,
            "clear_max_gap_max_s": max(worst(clear), default=None),
            "in_swap_latency_p50_s": statistics.median([r.end - r.start for r in in_swap]) if in_swap else None,
            "clear_latency_p50_s": statistics.median([r.end - r.start for r in clear]) if clear else None}


def rss_test(server: Server, run: Path, variants: list[Path], first_gen: int, swaps: int) -> dict:
    rss, t_load = [server.rss()], []
    for k in range(swaps):
        g = first_gen + k
        t0 = add_generation(run, g, str(variants[k % len(variants)]))
        if not wait_current(server.url, f"run@gen-{g}"):
            raise RuntimeError(f"generation {g} never went live")
        t_load.append(time.perf_counter() - t0)
        run_phase(server.url, "run", 1, 1, 4)
        time.sleep(0.3)
        rss.append(server.rss())
    return {"swaps": swaps, "rss_bytes": rss, "rss_first_mib": rss[1] / 2**20, "rss_max_mib": max(rss) / 2**20,
            "rss_last_mib": rss[-1] / 2**20, "growth_after_first_swap_mib": (rss[-1] - rss[1]) / 2**20,
            "write_to_live_s_median": statistics.median(t_load)}


def llama_anchor(args, work: Path) -> dict:
    from leanlm.serve.backends.llama_cpp import _point_at_built_library

    try:
        _point_at_built_library()        # sets LLAMA_CPP_LIB_PATH for both servers (subprocesses inherit it)
        import llama_cpp  # noqa: F401
    except (ImportError, FileNotFoundError) as e:
        return {"status": f"skipped: llama-cpp-python is not usable here ({e}; `make llama-cpp-python`)"}
    from leanlm.models.specs import packaged_gguf_path

    gguf = str(packaged_gguf_path(SPEC))
    out = {}
    srv = leanlm_server(SPEC, args, work, "llama_cpp", ["--backend", "llama_cpp"])
    try:
        out["leanlm_llama_cpp"] = throughput(srv.url, SPEC, args)
    finally:
        srv.stop()
    port = free_port()
    own = Server([PY, "-m", "llama_cpp.server", "--model", gguf, "--host", "127.0.0.1", "--port", str(port),
                  "--n_threads", str(args.threads), "--n_ctx", "2048"], f"http://127.0.0.1:{port}",
                 work / "server-llama-cpp-own.log", ready_path="/v1/models")
    try:
        out["llama_cpp_python_server"] = throughput(own.url, SPEC, args)
    finally:
        own.stop()
    return out


def render(doc: dict) -> None:
    from leanlm.report.tables import render_table

    f = lambda v, p=1: "-" if v is None else f"{v:.{p}f}"  # noqa: E731
    rows = []
    for name, t in doc["throughput"].items():
        if not isinstance(t, dict) or "by_clients" not in t:
            continue
        for c, r in t["by_clients"].items():
            rows.append([name, c, f(r["requests_per_s"], 2), f(r["tokens_per_s"]), f(r.get("decode_tok_s")),
                         f(r["ttft_p50_s"], 3),
                         f(r["ttft_p95_s"], 3), f(r["itl_p50_s"] * 1e3 if r.get("itl_p50_s") else None),
                         f(r["itl_p95_s"] * 1e3 if r.get("itl_p95_s") else None), str(int(r["failed"]))])
    render_table("serve throughput (medians over rounds)", ["server", "clients", "req/s", "tok/s", "decode tok/s", "TTFT p50 s",
                 "TTFT p95 s", "ITL p50 ms", "ITL p95 ms", "failed"], rows)
    ratios = [[name, f(t.get("ratio_8_over_1_tokens_per_s"), 2), f(t.get("ratio_8_over_1_decode_tok_s"), 2)]
              for name, t in doc["throughput"].items() if isinstance(t, dict) and "by_clients" in t]
    render_table("8 clients over 1 client (median of same-run ratios)", ["server", "end-to-end tok/s",
                 "decode tok/s"], ratios)
    s = doc.get("swap")
    if s:
        render_table("swap test (8 clients)", ["measure", "value"], [[k, str(v)] for k, v in s.items()
                     if k not in ("errors",) and not isinstance(v, dict)])
    m = doc.get("rss")
    if m:
        render_table("RSS across swaps", ["measure", "value"], [[k, f(v) if isinstance(v, float) else str(v)]
                     for k, v in m.items() if k != "rss_bytes"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer requests (a smoke run, not the measurement)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    p.add_argument("--dtype", default="fp32", help="torch backend dtype")
    p.add_argument("--prefix-cache", type=int, default=4, help="the server's --prefix-cache (0 = off)")
    p.add_argument("--skinny", action=argparse.BooleanOptionalAction, default=True,
                   help="the server's batched-decode kernel (--no-skinny: PyTorch's BLAS for every product)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--requests-per-client", type=int, default=4)
    p.add_argument("--swap-requests", type=int, default=200)
    p.add_argument("--swap-tokens", type=int, default=16)
    p.add_argument("--rss-swaps", type=int, default=20)
    p.add_argument("--phase-deadline", type=float, default=300)
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "leanlm-serve-bench"))
    p.add_argument("--phases", nargs="+", default=["throughput", "swap", "rss", "llama"],
                   choices=["throughput", "swap", "rss", "llama"], help="which parts to run (default: all)")
    p.add_argument("--json", default=str(HERE / "results" / "serve" / "serve.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.requests_per_client, args.swap_requests, args.rss_swaps = 1, 2, 40, 4
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    variants = make_variants(work, 3)
    run = make_run(work)
    doc = {"protocol": {k: v for k, v in vars(args).items() if k != "json"}, "throughput": {}}
    srv = leanlm_server(str(run), args, work, "torch", ["--follow", "--poll-s", "0.5", "--max-loaded", "2"])
    try:
        if "throughput" in args.phases:
            doc["throughput"]["leanlm_torch"] = throughput(srv.url, "run", args)
        if "swap" in args.phases:
            doc["swap"] = swap_test(srv.url, run, variants, args)
        if "rss" in args.phases:
            doc["rss"] = rss_test(srv, run, variants, first_gen=len(list(run.glob("gen-[0-9][0-9][0-9]"))),
                                  swaps=args.rss_swaps)
        doc["ledger_events"] = len(httpx.get(srv.url + "/admin/ledger").json()["data"])
    finally:
        srv.stop()
    if "llama" in args.phases:
        doc["throughput"].update(llama_anchor(args, work))
    doc["wall_s"] = time.perf_counter() - t0
    from leanlm.eval.results import document
    from leanlm.fileio import atomic_write_json

    out = document("serve-bench", {"spec": SPEC, "backends": list(doc["throughput"])}, doc.pop("protocol"), doc)
    render(out["results"])
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.json, out)
    log.info("wrote %s", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
