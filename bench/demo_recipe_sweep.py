"""Try demo-training recipes side by side (used once, on a lent GPU, to pick
the shipped recipe; the chosen one is TrainConfig's default and trains on CPU).

    python bench/demo_recipe_sweep.py OUTDIR RECIPES [--device cuda]

RECIPES: JSON ``{"name": {TrainConfig overrides, "model": inline config}}``
or a .json file holding it.

Each recipe runs in its own process; its log and training.json land in
OUTDIR/NAME/. Prints one line per recipe: final truth-based quality.
"""
import json
import subprocess
import sys
from pathlib import Path

out = Path(sys.argv[1])
recipes = json.loads(Path(sys.argv[2]).read_text() if sys.argv[2].endswith(".json") else sys.argv[2])
device = sys.argv[sys.argv.index("--device") + 1] if "--device" in sys.argv else "cpu"
procs = {}
for name, over in recipes.items():
    d = out / name
    d.mkdir(parents=True, exist_ok=True)
    over = {"device": device, "threads": 2, **over}
    if "model" in over:          # an inline open_clip model config
        cfg_file = d / f"{name}.json"
        cfg_file.write_text(json.dumps(over.pop("model")))
        over["config_path"] = str(cfg_file)
    procs[name] = subprocess.Popen(
        [sys.executable, "-m", "clipgeom.demo.train", str(d), json.dumps(over)],
        stdout=open(d / "log.jsonl", "w"), stderr=subprocess.STDOUT)
for name, p in procs.items():
    p.wait()
    log = (out / name / "log.jsonl").read_text().splitlines()
    evals = [json.loads(l) for l in log if l.startswith("{") and '"eval"' in l]
    print(name, "rc", p.returncode, json.dumps(evals[-1] if evals else log[-3:]), flush=True)
