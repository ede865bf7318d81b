#!/usr/bin/env bash
# SGLang's own client benchmark against a qwen1m server (issue 15): the bundled tiny DCA model, 4K-token prompts
# (4x its training length), 32 prompts, 4 at a time. Usage (GPU host, repo root, after `source scripts/gpu/prologue.sh`):
#   bash scripts/gpu/bench_serving_smoke.sh OUT_DIR
set -uo pipefail
out="${1:?usage: bench_serving_smoke.sh OUT_DIR}"; mkdir -p "$out"
model=sgl_qwen1m/data/tiny-dca; port=30000
setsid python3 -m sglang.launch_server --model-path "$model" --attention-backend qwen1m --port "$port" \
    > "$out/bench_serving_server.log" 2>&1 &
pid=$!
for _ in $(seq 1 180); do
    python3 -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=2)" "http://127.0.0.1:$port/health" 2>/dev/null && break
    kill -0 "$pid" 2>/dev/null || { echo "server exited"; tail -n 30 "$out/bench_serving_server.log"; exit 1; }
    sleep 1
done
python3 -m sglang.bench_serving --backend sglang --base-url "http://127.0.0.1:$port" \
    --model "$model" --tokenizer "$model" --dataset-name random-ids --random-input-len 4096 \
    --random-output-len 32 --random-range-ratio 1.0 --num-prompts 32 --max-concurrency 4 \
    --output-file "$out/bench_serving.jsonl" > "$out/bench_serving.log" 2>&1
rc=$?
kill -TERM -- -"$pid" 2>/dev/null; sleep 3; kill -KILL -- -"$pid" 2>/dev/null
echo "bench_serving rc=$rc"; grep -E "Successful requests|Benchmark duration|throughput|TTFT|ITL" "$out/bench_serving.log" | head -20
exit $rc
