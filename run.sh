#!/usr/bin/env bash
# The main job: install into .venv, execute obligatorio.ipynb headless, write a submission CSV.
# Extra arguments go to papermill, e.g.   bash run.sh -p DATA_DIR data -p EPOCHS 40
set -euo pipefail
cd "$(dirname "$0")"
source scripts/venv.sh requirements.txt
mkdir -p outputs
out="outputs/obligatorio_$(date +%Y%m%d-%H%M%S).ipynb"
python -m papermill obligatorio.ipynb "$out" "$@"
python - "$out" <<'PY'
import json, re, sys
text = json.dumps(json.load(open(sys.argv[1])))
if "DEMO DATASET" in text:
    print("NOTE: ran on the generated DEMO dataset (no competition data found): its scores say nothing about real photos")
for pattern in (r"wrote (\S+?\.csv): (\d+) rows, valid", r"val Dice @ full size \(Kaggle metric\)\s+([\d.]+)"):
    m = re.search(pattern, text)
    if m:
        print(re.sub(r"\s+", " ", m.group(0)))
PY
echo "executed notebook: $out"
