# Continue the SmolLM2 code run with the smaller preset: generation 0 (measurement only) does not depend on
# any field that differs, so it is kept; run.json is rewritten by loop.resume's overrides.
import dataclasses, json
from leanlm.evolve import lineage, loop
from leanlm.evolve.config import preset
out = "benchmarks/results/evolve_runs/smollm2-code"
old, new = lineage.load_config(out), preset("smollm2-135m", recipe="code")
diff = {f.name: getattr(new, f.name) for f in dataclasses.fields(new) if getattr(new, f.name) != getattr(old, f.name)}
print("changed:", {k: (getattr(old, k), v) for k, v in diff.items()})
assert set(diff) <= {"problems", "steps", "lr", "replay", "propose", "generations"}, diff
from leanlm.config import to_dict
from leanlm.fileio import atomic_write_json
from pathlib import Path
atomic_write_json(Path(out) / "run.json", {"format": lineage.RUN_FORMAT, "version": lineage.RUN_VERSION,
                                           "config": to_dict(dataclasses.replace(old, **diff))})
assert lineage.load_config(out) == new
print("run.json now holds the preset")
