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
cells = json.load(open(sys.argv[1]))["cells"]
text = "\n".join("".join(o.get("text", "")) + "".join(o.get("data", {}).get("text/plain", ""))
                 for c in cells for o in c.get("outputs", []))
if "DATOS DE DEMOSTRACIÓN" in text:
    print("NOTE: ran on the generated DEMO dataset (no competition data found): its scores say nothing about real photos")
for pattern in (r"escrito (\S+?\.csv): (\d+) filas, válido",
                r"Dice de validación a tamaño completo \(Kaggle\)\s+[\d.]+ ± [\d.]+"):
    m = re.search(pattern, text)
    if m:
        print(re.sub(r"\s+", " ", m.group(0)))
PY
echo "executed notebook: $out"
