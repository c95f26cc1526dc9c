#!/usr/bin/env bash
# Issue 9's missing task results (and issue 10's NIAH worked example) in one GPU command, inside a
# hard wall-clock limit (TOTAL_S, default 450 s, compiles included). From the repo root:
#   PYTHONPATH=. bash benchmarks/device_tasks.sh              # on the GPU machine
#   SMOKE=1 PYTHON=/work/venv/bin/python bash benchmarks/device_tasks.sh   # CPU plumbing check, minutes
# Tiny models on a GPU are bound by kernel launches (Python), not FLOPs, so the stages run as
# parallel processes on the one GPU, and training is bounded in time (--train-seconds: the cosine
# ends with the slot; the JSON records the steps done), so no stage can eat another's time:
#   phase 1 (parallel): induction heads Mamba-1, Mamba-2, Transformer (train at 256, eval 2^6..2^20);
#                       phonebook Mamba-2, hybrid, Transformer (same data, num_entries 20)
#   phase 2 (parallel): MQAR Mamba-1 n=4,16,64 and Mamba-2 n=16,64,128; NIAH (phonebook template)
#                       of the three phonebook models, heatmaps side by side
# Each run writes $OUT/tasks/<run>/{results.json,*.png,log.txt}; merged tables/plots go to
# $OUT/tasks/{induction_heads,phonebook,mqar,niah}/; stages.txt has rc and seconds per run.
# Models are saved under $WORK (3 levels down) and packed too. Everything is packed into
# $OUT/tasks.tgz and, since few files come back from $OUT, the $OUT/tasks tree is then removed
# (KEEP_TREE=1 keeps it); $OUT/tasks_stages.txt stays beside the archive.
set -u
PY=${PYTHON:-python3}
export PYTHONPATH="${PYTHONPATH:-.}" PYTHONUNBUFFERED=1 TQDM_MININTERVAL=${TQDM_MININTERVAL:-10}
O="${OUT:-/tmp/out}"
T="$O/tasks"
W="${WORK:-/tmp/mambakit_tasks}"
rm -rf "$W" && mkdir -p "$T" "$W"
START=$SECONDS
TOTAL=${TOTAL_S:-450}   # the script is done (archive written) by then
[ "${SMOKE:-0}" = 1 ] && TOTAL=${TOTAL_S:-1200}
PACK=${PACK_S:-15}      # seconds kept for merging and packing
SMOKE=${SMOKE:-0}

if [ "$SMOKE" = 1 ]; then  # CPU, one thread, a few steps: checks every command end to end
    DEV=cpu; STEPS=6; PAR=0; THREADS=1
    IH_S=2; IHT_S=2; PB_S=2; MQ_S=2; P1_S=${P1_S:-300}; WORKERS=1
    IH_EVAL="--values 64,256,4096,65536 --eval-examples 8 --eval-token-budget 65536 --eval-max-batch-tokens 262144 --chunk-len 4096"
    IH_BATCH=8; PB_BATCH=4; MQ_BATCH=8
    PB_EVAL="--values 5,20 --eval-examples 8"; MQ_EVAL="--values 4,32 --eval-examples 8"
    NIAH="--lengths 256,512 --depths 0,1 --examples 2 --batch-size 2"
else
    DEV=cuda; STEPS=1000000; PAR=${PAR:-1}; THREADS=1   # PAR=0: one run at a time (the time slices then do not fit)
    IH_S=${IH_S:-150}; IHT_S=${IHT_S:-120}; PB_S=${PB_S:-150}; MQ_S=${MQ_S:-100}; P1_S=${P1_S:-270}
    WORKERS=2
    # 256 examples per length up to 2^16, then 2^24 tokens: 128, 64, 32, 16 examples at 2^17..2^20;
    # a 2^20-token batch of 16 streams through the cache 16384 tokens at a time
    IH_EVAL="--eval-examples 256 --eval-token-budget 16777216 --eval-max-batch-tokens 16777216 --chunk-len 16384"
    IH_BATCH=${IH_BATCH:-256}; PB_BATCH=${PB_BATCH:-64}; MQ_BATCH=${MQ_BATCH:-128}
    PB_EVAL="--values 5,10,20,40,80,160 --eval-examples 256"
    MQ_EVAL="--values 4,8,16,32,64 --eval-examples 256"
    NIAH="--lengths 256,512,1024,2048,4096,8192 --depths 0,0.25,0.5,0.75,1 --examples 32 --batch-size 32"
fi
PB_ENTRIES=${PB_ENTRIES:-20}   # phonebook training book: ~600 bytes
MQ_PARAMS=${MQ_PARAMS:-"--param vocab_size=8192 --param length=256 --param num_pairs=32"}
COMMON="--device $DEV --threads $THREADS --steps $STEPS"
echo "device_tasks: smoke=$SMOKE device=$DEV total=${TOTAL}s out=$T work=$W" | tee "$T/stages.txt"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | head -3
  $PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" 2>&1
  git log -1 --format='commit %H' 2>/dev/null; nproc; } > "$T/machine.txt"

left() { echo $((TOTAL - PACK - (SECONDS - START))); }
# stage NAME LIMIT CMD...: runs CMD under timeout (capped by the time left), log and results to $T/NAME
stage() {
    local name=$1 limit=$2; shift 2
    local cap; cap=$(left); [ "$cap" -lt "$limit" ] && limit=$cap
    if [ "$limit" -lt 10 ]; then echo "$name skipped: no time left" | tee -a "$T/stages.txt"; return; fi
    local t0=$SECONDS
    timeout -k 5 "$limit" "$@" > "$W/$name.log" 2>&1
    local rc=$?
    mkdir -p "$T/$name"
    cp "$W/$name.log" "$T/$name/log.txt"
    cp "$W/$name"/*.json "$W/$name"/*.png "$T/$name/" 2>/dev/null
    echo "$name rc=$rc $((SECONDS - t0)) s (limit $limit s)" | tee -a "$T/stages.txt"
}
bg() { if [ "$PAR" = 1 ]; then stage "$@" & else stage "$@"; fi; }
# the echoed words are split again by the caller: no argument may hold a space
task() { echo $PY -m mambakit.cli task train $COMMON "$@"; }

# --- phase 1: induction heads (priority 1) and phonebook (priority 2) ----------------------------
IH="--task induction_heads --param length=256 --batch-size $IH_BATCH --lr 2e-3 --warmup-steps 100 $IH_EVAL"
bg ih-mamba1 "$P1_S" $(task $IH --model mamba-tiny --name Mamba-1 --train-seconds "$IH_S" --out "$W/ih-mamba1")
bg ih-mamba2 "$P1_S" $(task $IH --model mamba2-tiny --name Mamba-2 --train-seconds "$IH_S" --out "$W/ih-mamba2")
bg ih-transformer "$P1_S" $(task $IH --model transformer-tiny --name Transformer --train-seconds "$IHT_S" \
    --max-attention-length 16384 --out "$W/ih-transformer")
PB="--task phonebook --param num_entries=$PB_ENTRIES --batch-size $PB_BATCH --lr 2e-3 --warmup-steps 100 \
    --data-workers $WORKERS --train-seconds $PB_S $PB_EVAL"
for m in mamba2 hybrid transformer; do
    bg "pb-$m" "$P1_S" $(task $PB --model "$m-tiny" --name "$m-tiny" --out "$W/pb-$m")
done
wait

# --- phase 2: MQAR at three state sizes per family (priority 3), NIAH of the phonebook models (4) --
P2_S=$(left)
MQ="--task mqar $MQ_PARAMS --batch-size $MQ_BATCH --lr 2e-3 --warmup-steps 100 --data-workers 1 \
    --train-seconds $MQ_S $MQ_EVAL"
for n in 4 16 64; do
    bg "mqar-m1-n$n" "$P2_S" $(task $MQ --model mamba-tiny --set mamba1.d_state=$n --name "Mamba-1-n$n" \
        --out "$W/mqar-m1-n$n")
done
for n in 16 64 128; do
    bg "mqar-m2-n$n" "$P2_S" $(task $MQ --model mamba2-tiny --set mamba2.d_state=$n --name "Mamba-2-n$n" \
        --out "$W/mqar-m2-n$n")
done
niah() {
    for m in mamba2 hybrid transformer; do
        if [ -d "$W/pb-$m/model" ]; then
            $PY -m mambakit.cli eval needle --model "$W/pb-$m/model" --template phonebook $NIAH --device $DEV \
                --threads $THREADS --no-progress --name "$m-tiny (phonebook $PB_ENTRIES)" --out "$W/niah/$m" \
                || echo "niah $m failed"
        else
            echo "niah $m: no model at $W/pb-$m/model (phonebook stage did not finish training)"
        fi
    done
    local js; js=$(ls "$W"/niah/*/needle.json 2>/dev/null)
    [ -n "$js" ] && $PY -m mambakit.cli eval needle --plot-from $js --out "$W/niah/needle-phonebook.png"
    mkdir -p "$W/niah"; for f in "$W"/niah/*/needle.json; do [ -f "$f" ] && cp "$f" "$W/niah/needle-$(basename "$(dirname "$f")").json"; done
    true
}
export -f niah; export PY W NIAH DEV THREADS PB_ENTRIES
bg niah "$P2_S" bash -c niah
wait

# --- merge each task's runs into one table and plot, then pack ----------------------------------
timeout 60 $PY - "$W" "$T" <<'EOF' >> "$T/stages.txt" 2>&1
import json, sys
from pathlib import Path
from mambakit.tasks import report
work, out = Path(sys.argv[1]), Path(sys.argv[2])
groups = {"induction_heads": ["ih-mamba1", "ih-mamba2", "ih-transformer"],
          "phonebook": ["pb-mamba2", "pb-hybrid", "pb-transformer"],
          "mqar": ["mqar-m1-n4", "mqar-m1-n16", "mqar-m1-n64", "mqar-m2-n16", "mqar-m2-n64", "mqar-m2-n128"]}
for task, runs in groups.items():
    parts = [json.loads((work / r / "results.json").read_text()) for r in runs if (work / r / "results.json").exists()]
    models = [m for p in parts for m in p["models"] if m.get("eval")]
    if not models:
        print(f"{task}: no results"); continue
    merged = {**parts[0], "models": models, "merged_from": runs}
    report.write_json(merged, out / task / "results.json")
    table = report.format_table(merged)
    (out / task / "table.md").write_text(table + "\n")
    report.plot(merged, out / task / f"{task}.png")
    trained = ", ".join(f"{m['name']}: {m['train']['steps_done']} steps in {m['train']['seconds']} s"
                        for m in models if "train" in m)
    print(f"{task} ({trained})\n{table}")
EOF
mkdir -p "$T/niah"; cp "$W"/niah/*.json "$W"/niah/*.png "$T/niah/" 2>/dev/null
echo "total $((SECONDS - START)) s" | tee -a "$T/stages.txt"
cp "$T/stages.txt" "$O/tasks_stages.txt"
# the induction-heads and phonebook models (about 0.3 MB each; for later evaluation on a CPU) go in
# the archive; the MQAR ones (2.4 MB each, a 8192-token embedding) would take it near 16 MB: left out
mkdir -p "$W/.models"; for d in "$W"/ih-*/model "$W"/pb-*/model; do [ -d "$d" ] && cp -r "$d" "$W/.models/$(basename "$(dirname "$d")")"; done
if tar czf "$O/tasks.tgz" -C "$O" tasks -C "$W" .models && tar tzf "$O/tasks.tgz" > /dev/null; then
    [ "${KEEP_TREE:-0}" = 1 ] || rm -rf "$T"
fi
ls -la "$O/tasks.tgz"
cat "$O/tasks_stages.txt"
