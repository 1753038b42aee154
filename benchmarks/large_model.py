"""Pruning a model above the protobuf limit (2 GiB) end to end, with the command line.

    python benchmarks/large_model.py [--dir DIR] [--keep] [--max-rss-gb 12] [--ratio 0.5]

Generates a CNN of a few very wide 3x3 convs (3 -> 2048 -> 4096 -> 4096 -> 4096 -> 4096 -> 1024,
then global pooling and a 1024 -> 10 Gemm; 566M parameters, 2.27 GB of weights, beyond the 2 GiB
protobuf can serialize) as `large.onnx` + `large.onnx.data`. The weights are written straight
into the data file through a numpy memmap, chunk by chunk (He-initialised random values), so
generating it never holds the model in memory. Then runs

    python -m onnxprune large.onnx --criterion l1 --ratio 0.5 -o pruned.onnx --report report.json

(verification on: the checker and both models in onnxruntime) and prints the wall time, the
stage times from the report, the pruning process's peak RSS (`resource.getrusage` of the child)
and the sizes of the files read and written. A watchdog kills the run if its resident memory
goes above `--max-rss-gb` (default 12), and says so instead of taking the machine down.
It needs about 5 GB free in DIR (default: a temporary folder under $TMPDIR, removed afterwards).

Figures (2 shared CPU cores, 24 GB RAM, onnxruntime 1.32; the machine was busy with other work):
    --ratio 0.5:  109 s (analyse 14, score 5, rewrite 14, verify 53), peak RSS 9.2 GB;
                  output 566 MB in one file (below the limit), 25% of the parameters kept.
    --ratio 0.02: 126 s, peak RSS 10.8 GB; output 2.4 kB + 2.18 GB `pruned.onnx.data`.
Verification dominates: the original is written to a temporary file for onnxruntime (~12 s) and
onnxruntime's layout optimisations of 2 GB of conv weights take ~10 s. The peak is the
original (2.3 GB), its normalised copy (2.3 GB), the pruned model, and onnxruntime building the
original's session (~1.7x the weights, transiently).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

CONVS = [(3, 2048), (2048, 4096), (4096, 4096), (4096, 4096), (4096, 4096), (4096, 1024)]
CLASSES = 10
INPUT = [1, 3, 4, 4]
ALIGN = 65536


def generate(folder: str, seed: int = 0) -> str:
    """Write `large.onnx` + `large.onnx.data` into `folder`; return the .onnx path."""
    import onnx
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(seed)
    path = os.path.join(folder, "large.onnx")
    location = "large.onnx.data"
    offsets, offset = [], 0
    for c_in, c_out in CONVS:
        offset += -offset % ALIGN
        offsets.append(offset)
        offset += c_out * c_in * 9 * 4
    data = np.memmap(os.path.join(folder, location), dtype=np.uint8, mode="w+", shape=(offset,))
    inits, nodes, x = [], [], "input"
    for i, ((c_in, c_out), start) in enumerate(zip(CONVS, offsets)):
        weight = data[start:start + c_out * c_in * 9 * 4].view(np.float32).reshape(c_out, c_in * 9)
        std = np.float32(np.sqrt(2.0 / (c_in * 9)))
        for row in range(0, c_out, 256):   # ~37 MB at a time
            block = rng.standard_normal((min(256, c_out - row), c_in * 9), dtype=np.float32)
            block *= std * rng.uniform(0.2, 1.0, size=(block.shape[0], 1)).astype(np.float32)   # varied filter norms
            weight[row:row + block.shape[0]] = block
        stub = onnx.TensorProto(name=f"conv{i}.weight", data_type=onnx.TensorProto.FLOAT, dims=[c_out, c_in, 3, 3])
        for key, value in (("location", location), ("offset", start), ("length", c_out * c_in * 9 * 4)):
            entry = stub.external_data.add()
            entry.key, entry.value = key, str(value)
        stub.data_location = onnx.TensorProto.EXTERNAL
        inits.append(stub)
        inits.append(numpy_helper.from_array(rng.normal(0, 0.01, c_out).astype(np.float32), f"conv{i}.bias"))
        nodes.append(helper.make_node("Conv", [x, f"conv{i}.weight", f"conv{i}.bias"], [f"conv{i}"],
                                      name=f"conv{i}", kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"conv{i}"], [f"relu{i}"], name=f"relu{i}"))
        x = f"relu{i}"
    data.flush()
    del data
    c_last = CONVS[-1][1]
    inits.append(numpy_helper.from_array(
        (rng.standard_normal((CLASSES, c_last)) / np.sqrt(c_last)).astype(np.float32), "fc.weight"))
    inits.append(numpy_helper.from_array(np.zeros(CLASSES, np.float32), "fc.bias"))
    nodes += [helper.make_node("GlobalAveragePool", [x], ["pool"], name="pool"),
              helper.make_node("Flatten", ["pool"], ["flat"], name="flatten"),
              helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["output"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "large", [helper.make_tensor_value_info("input", 1, INPUT)],
                              [helper.make_tensor_value_info("output", 1, [1, CLASSES])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    with open(path, "wb") as f:
        f.write(model.SerializeToString())
    return path


def rss_bytes(pid: int) -> int:
    """Resident set size of process `pid` (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_watched(cmd: list[str], max_rss: int) -> tuple[int, float, int, bool]:
    """Run `cmd`; kill it if its RSS goes above `max_rss`. Returns (exit code, seconds, max sampled RSS, killed)."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd)
    sampled, killed = [0], [False]

    def watch():
        while proc.poll() is None:
            rss = rss_bytes(proc.pid)
            sampled[0] = max(sampled[0], rss)
            if rss > max_rss:
                killed[0] = True
                proc.kill()
                return
            time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    code = proc.wait()
    watcher.join()
    return code, time.perf_counter() - t, sampled[0], killed[0]


def size(path: str) -> int:
    return os.path.getsize(path) if os.path.exists(path) else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", help="work folder (default: a temporary one, removed afterwards)")
    ap.add_argument("--keep", action="store_true", help="keep the generated and pruned files")
    ap.add_argument("--max-rss-gb", type=float, default=12.0)
    ap.add_argument("--ratio", type=float, default=0.5)
    args = ap.parse_args()

    folder = args.dir or tempfile.mkdtemp(prefix="onnxprune-large-")
    os.makedirs(folder, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if free < 5e9:
        print(f"not run: {free / 1e9:.1f} GB free in {folder}, about 5 GB needed")
        return 1
    try:
        t = time.perf_counter()
        model = generate(folder)
        print(f"generated {model} in {time.perf_counter() - t:.1f} s: .onnx {size(model):,} B + "
              f".data {size(model + '.data'):,} B ({sum(c * o * 9 for c, o in CONVS) / 1e6:.0f}M conv parameters)")
        out, report = os.path.join(folder, "pruned.onnx"), os.path.join(folder, "report.json")
        cmd = [sys.executable, "-m", "onnxprune", model, "--criterion", "l1", "--ratio", str(args.ratio),
               "-o", out, "--report", report]
        print("running:", " ".join(cmd), flush=True)
        code, seconds, sampled, killed = run_watched(cmd, int(args.max_rss_gb * 1e9))
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024   # Linux: KiB
        if killed:
            print(f"stopped: resident memory went above {args.max_rss_gb:g} GB after {seconds:.1f} s "
                  f"(peak RSS {peak / 1e9:.2f} GB)")
            return 1
        print(f"exit code {code}, wall time {seconds:.1f} s, peak RSS {peak / 1e9:.2f} GB "
              f"(sampled max {sampled / 1e9:.2f} GB)")
        if code != 0:
            return code
        rep = json.load(open(report))
        print("stage seconds:", rep.get("seconds"))
        print(f"verification: valid={rep['verification']['valid']} {rep['verification']['outputs']}")
        print(f"params kept {rep['params_kept']:.3f}, MACs kept {rep['macs_kept']:.3f}")
        print(f"input  {size(model):,} B + {size(model + '.data'):,} B")
        print(f"output {size(out):,} B + {size(out + '.data'):,} B "
              f"(files: {sorted(p for p in os.listdir(folder) if p.startswith('pruned'))})")
        import onnx

        graph_only = onnx.load(out, load_external_data=False)
        locations = sorted({e.value for t in graph_only.graph.initializer for e in t.external_data if e.key == "location"})
        print(f"output external-data locations: {locations or 'none (below the limit: one file)'}")
        return 0
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
