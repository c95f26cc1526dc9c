#!/usr/bin/env bash
# One device-machine session: the CUDA tests and the GPU benchmarks, each under its own time
# limit, logs and JSON results packed into $OUT/results.tgz (the device tool returns few files).
#   bash benchmarks/device_run.sh "tests kernels scan"      # stages, in order
#   stages: tests scantests kernels scan profile train generation decodeprofile gemvtune gemvall gemvb4 gemvrows steps
#   (scantests: only tests/gpu/test_selective_scan_triton.py, for a change to the Mamba-1 kernels;
#    gemvtune: sweeps the fused decode GEMV's configs for the projections of a Mamba-2 and an MLP
#    layer, then profiles whole decode steps at 1K and 64K with the defaults and with the best
#    ones: the open question of sessions 8 and 9;
#    gemvall: the fused GEMV's and the graphs' GPU tests, its calls at 1 and 4 rows, steps with the
#    default tiles (Mamba-2 1K at batch 1 and 4, hybrid and Transformer 64K), the RB sweep and steps
#    with its best tiles, then generate() at 1K and 64K (session 13; it replaced sessions 10-11's
#    decodecheck and gemvrb stages, of which it runs everything but the 64K batch-4 step, in gemvb4);
#    gemvb4: the tile sweep at 4 rows (session 13: the (2, 512, 2) tiles of the wide k 2048 forms re-read
#    x from L2 twice the weights' bytes at 4 rows), then batch-4 steps with the defaults and the sweep's best;
#    gemvrows: session 14's several-row tiles: their GPU tests, the one-row and new tiles at 2 and 4 rows,
#    the hybrid at 64K, batch 4; steps: Mamba-2 1K steps at batch 1, 2 (default and one-row tiles) and 4)
# TRAIN_ARGS adds arguments to the train stage (e.g. --backends triton torch+ckpt). TESTS_ARGS adds pytest arguments to the tests stage (e.g. --ignore=... after a gemvall); TESTS_PATHS
# replaces its paths (default tests). In one process the whole CUDA suite needed more than one 10-minute
# command (session 14: 131 of 201 tests in 540 s); with the 8 workers below all 232 ran in 156 s
# (session 15), so one command holds it and the split (TESTS_PATHS) is for a single file's rerun.
# Measured on an H100 (session 2): the whole CUDA suite needs more than 210 s (compiles included),
# kernels --sweep --warm ~235 s, scan --quick ~30 s, train (3 models x 2 backends) over 180 s.
# Each device command may run 10 minutes: split the stages over two or three commands.
set -u
# mamba_ssm and mambapy travel in .carry (git-ignored); the generation stage leaves mamba_ssm out
# so that transformers runs its own PyTorch path (mamba_ssm's decode kernel fails under triton 3.6)
PEERS=".carry:.carry/mambapy_pkg:."
export PYTHONPATH="$PEERS"
R="${OUT:-/tmp/out}/r"
mkdir -p "$R"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$R/gpu.txt" 2>&1
python -c "import torch, triton; print(torch.__version__, triton.__version__)" >> "$R/gpu.txt" 2>&1
# The CUDA tests spend most of their time compiling kernels, one at a time in one process: with
# pytest-xdist (in the device image) TESTS_WORKERS processes (default 8 of the 16 cores) compile side by
# side, sharing the GPU and triton's on-disk cache. TESTS_WORKERS=0: one process.
XDIST=""
if [ "${TESTS_WORKERS:-8}" != 0 ] && python -c "import xdist" 2>/dev/null; then XDIST="-n ${TESTS_WORKERS:-8}"; fi
stage() {  # name, seconds, command...
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" > "$R/$name.log" 2>&1
    echo "$name rc=$? $((SECONDS - t0)) s" | tee -a "$R/stages.txt"
    tar czf "${OUT:-/tmp/out}/results.tgz" -C "$R" .  # after every stage: a run cut short keeps what it made
}
for s in ${1:-tests kernels scan}; do
    case $s in
        tests) stage tests "${TESTS_S:-420}" python -m pytest -q -m cuda ${TESTS_PATHS:-tests} $XDIST ${TESTS_ARGS:-} -p no:cacheprovider -rfEs --durations=15 ;;
        scantests) stage scantests "${TESTS_S:-300}" python -m pytest -q tests/gpu/test_selective_scan_triton.py -p no:cacheprovider -rfE ;;
        kernels) stage kernels "${KERNELS_S:-240}" python benchmarks/gpu_kernels.py --sweep --warm --out "$R" ;;
        scan) stage scan "${SCAN_S:-120}" python benchmarks/gpu_selective_scan.py --quick --out "$R" ;;
        train) stage train "${TRAIN_S:-200}" python benchmarks/gpu_training_step.py --out "$R" ${TRAIN_ARGS:-} ;;
        profile) stage profile "${PROFILE_S:-90}" python benchmarks/gpu_profile_ssd.py --out "$R" ;;
        decodeprofile) PYTHONPATH=. stage decodeprofile "${DPROF_S:-150}" python benchmarks/gpu_profile_decode.py --out "$R" ${DPROF_ARGS:-} ;;
        gemvtune) stage gemv_sweep "${GEMV_S:-100}" python benchmarks/gpu_gemv.py --rows 1 --sweep \
                      --forms in_proj,up,out_proj,down --best-out "$R/gemv_best.json" --out "$R/gemv"
                  for ctx in 1024 65536; do  # the defaults, then the sweep's best configs, in one run
                      PYTHONPATH=. stage prof_default_$ctx 45 python benchmarks/gpu_profile_decode.py \
                          --out "$R/prof_default_$ctx" --models mamba2,hybrid,transformer --context $ctx --iters 10
                      PYTHONPATH=. stage prof_tuned_$ctx 40 python benchmarks/gpu_profile_decode.py \
                          --out "$R/prof_tuned_$ctx" --models mamba2,hybrid --context $ctx --iters 10 \
                          --gemv-configs "$R/gemv_best.json"
                  done ;;
        gemvall) stage decode_tests 150 python -m pytest -q -p no:cacheprovider -rfE tests/gpu/test_fused_gemv.py \
                     tests/gpu/test_graphs_attention.py tests/gpu/test_layers_triton.py::test_cuda_graph_generation_matches_eager
                 stage gemv_rows 40 python benchmarks/gpu_gemv.py --rows 1,4 --out "$R/gemv_rows"
                 PYTHONPATH=. stage prof_1k_b1_default 30 python benchmarks/gpu_profile_decode.py --out "$R/prof_1k_b1_default" \
                     --models mamba2 --iters 10
                 PYTHONPATH=. stage prof_64k_b1_default 45 python benchmarks/gpu_profile_decode.py --out "$R/prof_64k_b1_default" \
                     --models hybrid,transformer --context 65536 --iters 10
                 PYTHONPATH=. stage prof_1k_b4 30 python benchmarks/gpu_profile_decode.py --out "$R/prof_1k_b4" \
                     --models mamba2 --batch 4 --iters 10
                 stage gemv_rb_sweep 100 python benchmarks/gpu_gemv.py --rows 1 --sweep --sweep-rb-only \
                     --forms in_proj,up,out_proj,down --best-out "$R/gemv_best.json" --out "$R/gemv_rb"
                 PYTHONPATH=. stage prof_1k_b1_tuned 30 python benchmarks/gpu_profile_decode.py --out "$R/prof_1k_b1_tuned" \
                     --models mamba2 --iters 10 --gemv-configs "$R/gemv_best.json"
                 PYTHONPATH=. stage prof_64k_b1_tuned 45 python benchmarks/gpu_profile_decode.py --out "$R/prof_64k_b1_tuned" \
                     --models hybrid,transformer --context 65536 --iters 10 --gemv-configs "$R/gemv_best.json"
                 PYTHONPATH=. stage gen_b1 60 python benchmarks/gpu_generation.py --models mamba2,hybrid,transformer \
                     --batches 1 --prompts 1024,65536 --graphs on --no-hf --new-tokens 64 --out "$R/gen_b1" ;;
        gemvb4) stage gemv_b4_sweep 150 python benchmarks/gpu_gemv.py --rows 4 --sweep \
                    --forms in_proj,up,out_proj,down --best-out "$R/gemv_best_b4.json" --out "$R/gemv_b4"
                for t in default tuned; do
                    G=""; [ $t = tuned ] && G="--gemv-configs $R/gemv_best_b4.json"
                    PYTHONPATH=. stage prof_1k_b4_$t 30 python benchmarks/gpu_profile_decode.py --out "$R/prof_1k_b4_$t" \
                        --models mamba2 --batch 4 --iters 10 $G
                    PYTHONPATH=. stage prof_64k_b4_$t 50 python benchmarks/gpu_profile_decode.py --out "$R/prof_64k_b4_$t" \
                        --models hybrid,transformer --context 65536 --batch 4 --iters 10 $G
                done ;;
        gemvrows) stage gemv_rows_tests 150 python -m pytest -q -p no:cacheprovider -rfE tests/gpu/test_fused_gemv.py \
                      -k "model_widths or config5"
                  stage gemv_rows_sweep 100 python benchmarks/gpu_gemv.py --rows 2,4 --sweep --out "$R/gemv_rows24" \
                      --configs "2,512,2;8,2048,8;4,256,2;16,256,4;4,512,4"
                  # then the steps stage: whole steps with these tiles and the one-row ones
                  PYTHONPATH=. stage prof_64k_b4_default 45 python benchmarks/gpu_profile_decode.py \
                      --out "$R/prof_64k_b4_default" --models hybrid --context 65536 --batch 4 --iters 10 ;;
        steps) # session 14's last default tiles as whole Mamba-2 1K steps at batch 1, 2 and 4, and batch 2 with the
               # one-row tiles (the comparison session 14's run could not make)
               echo '{"8512,2048,2": [2, 512, 2], "2048,4096,2": [8, 2048, 8], "8192,2048,2": [2, 512, 2],
                      "2048,8192,2": [8, 2048, 8], "2048,2048,2": [8, 2048, 8]}' > "$R/one_row_tiles_b2.json"
               for b in 1 2 4; do
                   PYTHONPATH=. stage prof_1k_b${b}_default 30 python benchmarks/gpu_profile_decode.py \
                       --out "$R/prof_1k_b${b}_default" --models mamba2 --batch $b --iters 10
               done
               PYTHONPATH=. stage prof_1k_b2_one_row_tiles 30 python benchmarks/gpu_profile_decode.py \
                   --out "$R/prof_1k_b2_one_row_tiles" --models mamba2 --batch 2 --iters 10 \
                   --gemv-configs "$R/one_row_tiles_b2.json" ;;
        generation) PYTHONPATH=. stage generation "${GEN_S:-300}" python benchmarks/gpu_generation.py --out "$R" ${GEN_ARGS:-} ;;
    esac
done
cat "$R/stages.txt"
