"""The report: its numbers are the JSON's numbers, the HTML is self-contained, plots and curves render."""
import base64
import json
import re

import pytest

from leanlm.report.bench import BenchConfig, run_bench
from leanlm.report.claims import CLAIMS
from leanlm.report.plots import evolution_series, pareto_front
from leanlm.report.render import COLUMNS, to_html, build_blocks, write_report

TINY = dict(max_tokens=300, context=96, stride=96, n=2, max_new_tokens=6, gen_batch=8, speed_repeats=1,
            speed_prompt_len=16, speed_decode_tokens=4, progress=False, tasks=("add:1",))

# Each column's format: the number printed, the unit factor from JSON, and half a unit of the last digit.
PARSE = {"mib": (r"(-?[\d.]+) MiB", 1 / 2**20, 0.005), "pct": (r"(-?[\d.]+)%", 100, 0.05),
         "times": (r"(-?[\d.]+)x", 1, 0.005), "num": (r"(-?[\d.]+)", 1, 0.0005)}


@pytest.fixture(scope="module")
def bench_doc():
    """A real tiny bench (the original row), plus an 'int8' row with distinct numbers in every column and an
    unavailable row, so each column's formatting is checked on values other than 1.0 and 0."""
    doc = run_bench("tiny-llama", BenchConfig(rows=("bf16",), **TINY))
    real = doc["results"]["rows"][0]
    fake = {**real, "name": "int8", "claim": {"technique": "INT8", "memory_reduction": 0.5, "accuracy": 0.972,
                                              "speedup": 1.8},
            "weights_disk_bytes": 123456, "weights_memory_bytes": 150000, "memory_reduction": 0.45678,
            "disk_reduction": 0.51234, "perplexity": real["perplexity"] * 1.0123, "perplexity_preserved": 0.98785,
            "task_accuracy": 0.25, "accuracy_preserved": 0.8333, "greedy_token_agreement": 0.91234,
            "top1_agreement": 0.97777, "prefill_speedup": 1.23456, "decode_speedup": 0.87654,
            "decode_b8_speedup": 1.01}
    doc["results"]["rows"].append(fake)
    doc["results"]["rows"].append({"name": "awq-w4", "status": "unavailable", "reason": "NotImplementedError: x",
                                   "claim": {"technique": "SmoothQuant+AWQ", "memory_reduction": 0.5,
                                             "accuracy": 0.999, "speedup": 1.7}})
    return json.loads(json.dumps(doc))   # exactly what a reader of the JSON file sees


def _md_table(md: str, first_header: str) -> list[dict]:
    lines = md.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(f"| {first_header} |"))
    headers = [h.strip() for h in lines[start].strip("|").split("|")]
    out = []
    for ln in lines[start + 2:]:
        if not ln.startswith("|"):
            break
        out.append(dict(zip(headers, (c.strip() for c in ln.strip("|").split("|")))))
    return out


def _check_cell(cell: str, value, fmt_name: str) -> None:
    if value is None:
        assert cell == "-"
        return
    pattern, factor, tol = PARSE[fmt_name]
    m = re.fullmatch(pattern, cell)
    assert m, f"cell {cell!r} does not look like {fmt_name}"
    assert abs(float(m.group(1)) - value * factor) <= tol + 1e-12, (cell, value)


def test_markdown_numbers_match_json(bench_doc, tmp_path):
    written = write_report(tmp_path, bench=bench_doc)
    md = (tmp_path / "report.md").read_text()
    table = _md_table(md, "row")
    assert [r["row"] for r in table] == ["bf16", "int8", "awq-w4"]
    json_rows = {r["name"]: r for r in bench_doc["results"]["rows"]}
    checked = 0
    for cells in table:
        row = json_rows[cells["row"]]
        assert cells["status"] == row["status"]
        for c in COLUMNS:
            if row["status"] != "ok":
                assert cells[c.header] == "-"
                continue
            _check_cell(cells[c.header], row.get(c.key), c.fmt.__name__)
            checked += 1
    assert checked == 2 * len(COLUMNS)
    assert "awq-w4: unavailable - NotImplementedError: x" in md
    assert str(tmp_path / "pareto.png") in written["files"]


def test_claims_sit_beside_ours_and_are_labelled(bench_doc, tmp_path):
    write_report(tmp_path, bench=bench_doc)
    md = (tmp_path / "report.md").read_text()
    claims = {r["row"]: r for r in _md_table(md, "row | claimed for")}
    assert set(claims) == {"int8", "awq-w4"}
    c = claims["int8"]
    assert c["claimed for"] == "INT8 (claim)"
    _check_cell(c["claimed memory saved"], CLAIMS["int8"].memory_reduction, "pct")
    _check_cell(c["claimed accuracy"], CLAIMS["int8"].accuracy, "pct")
    _check_cell(c["claimed speed"], CLAIMS["int8"].speedup, "times")
    _check_cell(c["our memory saved"], 0.45678, "pct")
    _check_cell(c["our decode b1"], 0.87654, "times")
    assert claims["awq-w4"]["our memory saved"] == "unavailable"
    assert claims["awq-w4"]["claimed accuracy"] == "99.9%"


def test_html_is_self_contained_and_has_the_same_cells(bench_doc, tmp_path):
    write_report(tmp_path, bench=bench_doc)
    page = (tmp_path / "report.html").read_text()
    assert not re.search(r"(src|href)=['\"](?!data:)", page), "HTML must not reference external files"
    assert "<script" not in page and "<link" not in page
    imgs = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    assert imgs and base64.b64decode(imgs[0])[:8] == b"\x89PNG\r\n\x1a\n"
    md_cells = [c for r in _md_table((tmp_path / "report.md").read_text(), "row")[:3] for c in r.values()]
    html_cells = re.findall(r"<td>(.*?)</td>", page)
    for c in md_cells:
        assert c in html_cells


def test_pareto_front():
    pts = [(1, 5), (2, 3), (3, 4), (4, 1), (2, 3.5)]
    assert pareto_front(pts) == [0, 1, 3]


def _write_run(run):
    run.mkdir()
    recs = [{"generation": g, "accepted": g != 2, "parent": g - 1, "wall_s": 10.0,
             "headline": 0.2 + 0.1 * g, "retention": 0.9, "refusal_rate": 0.5 - 0.01 * g} for g in range(4)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return recs


def test_evolution_curves_from_run_dir(tmp_path, bench_doc):
    recs = _write_run(tmp_path / "run")
    xs, series = evolution_series(recs)
    assert xs == [0, 1, 2, 3]
    assert series["held-out accuracy"] == pytest.approx([0.2, 0.3, 0.4, 0.5])
    assert series["refusal rate"] == pytest.approx([0.5, 0.49, 0.48, 0.47])
    nested = [{"generation": 0, "gate": {"heldout": {"accuracy": 0.7}, "retention": {"accuracy": 0.6}}}]
    assert evolution_series(nested)[1]["held-out accuracy"] == [0.7]
    assert evolution_series(nested)[1]["retention"] == [0.6]
    written = write_report(tmp_path / "rep", bench=bench_doc, run=tmp_path / "run")
    md = (tmp_path / "rep" / "report.md").read_text()
    gens = _md_table(md, "generation")
    assert [g["headline"] for g in gens] == ["0.200", "0.300", "0.400", "0.500"]
    assert gens[2]["accepted"] == "False"
    assert any(f.endswith("evolution.png") for f in written["files"])


def test_evolution_table_orders_lengths_as_numbers():
    from leanlm.report.render import evolution_table

    recs = [{"generation": 0, "accepted": True, "heldout": {f"tinyadd:{d}": d / 20 for d in (10, 2, 1, 12)}}]
    headers, rows = evolution_table(recs)
    assert [h for h in headers if "tinyadd" in h] == [f"heldout.tinyadd:{d}" for d in (1, 2, 10, 12)]
    assert rows[0][headers.index("heldout.tinyadd:10")] == "0.500"


def test_report_cli_end_to_end(bench_doc, tmp_path):
    from leanlm.cli import main

    _write_run(tmp_path / "run")
    (tmp_path / "b.json").write_text(json.dumps(bench_doc))
    assert main(["report", "--bench", str(tmp_path / "b.json"), "--run", str(tmp_path / "run"),
                 "-o", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "report.html").is_file()
    (tmp_path / "bad.json").write_text(json.dumps({**bench_doc, "kind": "eval"}))
    assert main(["report", "--bench", str(tmp_path / "bad.json"), "-o", str(tmp_path / "o2")]) == 2


def test_blocks_need_something():
    with pytest.raises(ValueError, match="nothing to report"):
        write_report("/nonexistent/never", bench=None)
    assert "leanlm report" in to_html(build_blocks())


def test_bench_cli_writes_json_and_report(tmp_path):
    from leanlm.cli import main

    rc = main(["bench", "tiny-llama", "--rows", "bf16", "--max-tokens", "200", "--context", "64", "--stride", "64",
               "--n", "1", "--tasks", "add:1", "--max-new-tokens", "4", "--speed-repeats", "1",
               "--speed-prompt-len", "8", "--speed-decode-tokens", "2", "--no-progress",
               "--json", str(tmp_path / "b.json"), "--report", str(tmp_path / "rep")])
    doc = json.loads((tmp_path / "b.json").read_text())
    assert rc == 0 and doc["results"]["rows"][0]["status"] == "ok" and doc["protocol"]["n"] == 1
    assert f"| {doc['results']['original']['perplexity']:.3f} |" in (tmp_path / "rep" / "report.md").read_text()
