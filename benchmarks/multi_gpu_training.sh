#!/usr/bin/env bash
# Multi-GPU training on one host (issue 11): examples/train_hybrid_370m.toml for 200 steps on 1 GPU,
# with DDP on 2 and with FSDP2 on 2 (same global batch, same data order), then the FSDP2 step-100
# checkpoint resumed on 1 GPU, then (stage fp32, not by default) 10-step fp32 runs of the three that show the losses agree where
# bf16 rounding does not blur them. Each run's metrics.jsonl and log are packed into
# $OUT/multi_gpu.tgz; benchmarks/multi_gpu_report.py turns them into the JSON, table and plot.
#   bash benchmarks/multi_gpu_training.sh "bf16 resume fp32"     # stages, in order (fp32: ~15x slower per step)
#   SMOKE=1 bash benchmarks/multi_gpu_training.sh                # the same on 2 CPU processes, tiny
# NVLink multicast stays off (the device notes: it can take the host's shared GPUs out of service).
set -u
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT_DIR="${OUT:-/tmp/out}"
RUNS=/tmp/mgpu-runs
rm -rf "$RUNS"
R="$OUT_DIR/r"
mkdir -p "$R" "$RUNS"
NGPU=$(python -c "import torch; print(torch.cuda.device_count())")
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$R/gpu.txt" 2>&1
nvidia-smi topo -m >> "$R/gpu.txt" 2>&1
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'gpus', torch.cuda.device_count())" >> "$R/gpu.txt" 2>&1
STDLIB=$(python -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')
CFG=examples/train_hybrid_370m.toml
COMMON=(--data.path "$STDLIB" --data.cache_dir /tmp/mgpu-tokens --train.progress false)
STEPS=200 FP32_STEPS=10 PAIR=$NGPU
if [ "${SMOKE:-0}" = 1 ]; then  # checks this script on the CPU: gloo processes, a tiny model, few steps
    STEPS=6 FP32_STEPS=3 PAIR=2
    COMMON+=(--model.preset hybrid-tiny --model.vocab_size 256 --train.seq_len 64 --train.batch_size 4
             --train.eval_every 3 --train.eval_rows 4 --checkpoint.every 3)
fi
COMMON+=(--train.steps $STEPS)
HALF=$(printf "%07d" $((STEPS / 2)))

run() {  # name, nproc, extra overrides...
    local name=$1 nproc=$2; shift 2
    local t0=$SECONDS
    if [ "$nproc" = 1 ]; then
        python -m mambakit.cli train $CFG "${COMMON[@]}" --out_dir "$RUNS/$name" "$@" > "$R/$name.log" 2>&1
    else
        torchrun --standalone --nproc_per_node "$nproc" -m mambakit.cli train $CFG "${COMMON[@]}" \
            --out_dir "$RUNS/$name" "$@" > "$R/$name.log" 2>&1
    fi
    local rc=$?
    cp "$RUNS/$name/metrics.jsonl" "$R/$name.metrics.jsonl" 2>/dev/null
    echo "$name nproc=$nproc rc=$rc $((SECONDS - t0)) s" | tee -a "$R/stages.txt"
}

for s in ${1:-bf16 resume}; do
    case $s in
        bf16)
            run bf16-1gpu 1 --checkpoint.every 0
            [ "$PAIR" -ge 2 ] && run bf16-2gpu-ddp 2 --train.distributed ddp --checkpoint.every 0
            [ "$PAIR" -ge 2 ] && run bf16-2gpu-fsdp 2 --train.distributed fsdp --checkpoint.every $((STEPS / 2)) ;;
        resume)  # a 2-GPU FSDP2 checkpoint continued on 1 GPU
            run bf16-fsdp-resumed-1gpu 1 --resume "$RUNS/bf16-2gpu-fsdp/checkpoints/step-$HALF" ;;
        fp32)
            F=(--train.precision fp32 --train.steps $FP32_STEPS --train.eval_every 0 --checkpoint.every 0)
            run fp32-1gpu 1 "${F[@]}"
            [ "$PAIR" -ge 2 ] && run fp32-2gpu-ddp 2 --train.distributed ddp "${F[@]}"
            [ "$PAIR" -ge 2 ] && run fp32-2gpu-fsdp 2 --train.distributed fsdp "${F[@]}" ;;
    esac
done
tar czf "$OUT_DIR/multi_gpu.tgz" -C "$R" .
cat "$R/stages.txt"
