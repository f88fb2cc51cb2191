#!/usr/bin/env bash
# Build the libFuzzer harnesses (clang, ASan) and run each for a while from a tiny generated seed
# corpus. Usage: scripts/fuzz.sh [seconds per harness, default 180] [harness names...]
# Crashes land in build-fuzz/artifacts/; the grown corpora stay in build-fuzz/corpus/.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
secs=${1:-180}
shift || true
harnesses=("$@")
[ ${#harnesses[@]} -eq 0 ] && harnesses=(fuzz_gguf fuzz_safetensors)
build="$root/build-fuzz"

if ! ls /usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a >/dev/null 2>&1; then
  echo "fuzz: libFuzzer runtime missing; install it with: apt-get install -y libclang-rt-14-dev" >&2
  exit 1
fi
cmake -S "$root" -B "$build" -G Ninja -DLIZARD_FUZZ=ON -DLIZARD_CUDA=OFF -DLIZARD_TESTS=OFF -DLIZARD_BENCH=OFF \
  -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_C_COMPILER=clang >/dev/null
ninja -C "$build" -j2 "${harnesses[@]}"

# Seeds: a small valid GGUF (every metadata kind, a few tensor types) and a small safetensors file.
mkdir -p "$build/corpus/fuzz_gguf" "$build/corpus/fuzz_safetensors" "$build/artifacts"
python3 - "$build/corpus" <<'PY'
import json, struct, sys
out = sys.argv[1]
def s(x):
    b = x.encode()
    return struct.pack('<Q', len(b)) + b
def kv(key, t, payload):
    return s(key) + struct.pack('<I', t) + payload
kvs = [
    kv('general.architecture', 8, s('llama')),
    kv('general.alignment', 4, struct.pack('<I', 32)),
    kv('llama.block_count', 4, struct.pack('<I', 1)),
    kv('llama.rope.freq_base', 6, struct.pack('<f', 10000.0)),
    kv('x.f64', 12, struct.pack('<d', 0.5)),
    kv('x.i64', 11, struct.pack('<q', -3)),
    kv('x.bool', 7, b'\x01'),
    kv('tokenizer.ggml.tokens', 9, struct.pack('<IQ', 8, 3) + s('a') + s('b') + s('<s>')),
    kv('tokenizer.ggml.scores', 9, struct.pack('<IQ', 6, 2) + struct.pack('<ff', 0.0, -1.0)),
    kv('x.nested', 9, struct.pack('<IQ', 9, 2) + struct.pack('<IQ', 8, 1) + s('p') + struct.pack('<IQ', 8, 1) + s('q')),
]
tensors = [('a', [4, 2], 0, 4 * 2 * 4), ('q', [32, 1], 8, 34), ('h', [3], 1, 6)]
head = b'GGUF' + struct.pack('<IQQ', 3, len(tensors), len(kvs)) + b''.join(kvs)
off, offs = 0, []
for name, dims, t, nb in tensors:
    head += s(name) + struct.pack('<I', len(dims)) + b''.join(struct.pack('<Q', d) for d in dims)
    head += struct.pack('<IQ', t, off)
    offs.append(off)
    off += (nb + 31) // 32 * 32
head += b'\0' * (-len(head) % 32)
data = bytearray(off)
for (name, dims, t, nb), o in zip(tensors, offs):
    data[o:o + nb] = bytes((i * 7 + 1) & 0xff for i in range(nb))
open(f'{out}/fuzz_gguf/seed.gguf', 'wb').write(head + bytes(data))

hdr = {'__metadata__': {'format': 'pt'},
       'w': {'dtype': 'F32', 'shape': [2, 3], 'data_offsets': [0, 24]},
       'b': {'dtype': 'BF16', 'shape': [3], 'data_offsets': [24, 30]},
       'h': {'dtype': 'F16', 'shape': [], 'data_offsets': [30, 32]}}
h = json.dumps(hdr, separators=(',', ':')).encode()
h += b' ' * (-(8 + len(h)) % 8)
open(f'{out}/fuzz_safetensors/seed.safetensors', 'wb').write(struct.pack('<Q', len(h)) + h + bytes(range(32)))
PY

for h in "${harnesses[@]}"; do
  echo "fuzz: $h for ${secs}s"
  log="$build/$h.log"
  "$build/$h" "$build/corpus/$h" -max_total_time="$secs" -max_len=4096 -timeout=10 -rss_limit_mb=2048 \
    -artifact_prefix="$build/artifacts/$h-" -print_final_stats=1 >"$log" 2>&1 || {
    echo "fuzz: $h FAILED; see $log and $build/artifacts/" >&2
    tail -40 "$log" >&2
    exit 1
  }
  grep -E "^Done|stat::number_of_executed_units|stat::peak_rss_mb" "$log" | sed "s/^/fuzz: $h: /"
done
