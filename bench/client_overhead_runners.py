"""The scripts bench/client_overhead.py runs in each tool's own venv, and the answer counters.

Each runner gets a JSON config as argv[1]: base_url, prompts (a JSONL file of {"prompt"}),
concurrency, answers (where to write {"prompt", "answer"} lines) and tool-specific keys. It prints
one line "BENCH_REPORT {json}" with t_import (seconds to import the tool), t_run (wall of the
generation itself) and cpu_run (this process's CPU during it).
"""

from __future__ import annotations

import json
from pathlib import Path

RUNNER_PRELUDE = """\
import json, sys, time
_T0 = time.perf_counter()
"""

# The end of the two bare asyncio loops: time `main()`, write the answers, report.
RUNNER_ASYNC_FINISH = '''

c0, w0 = time.process_time(), time.perf_counter()
answers = asyncio.run(main())
t_run, cpu_run = time.perf_counter() - w0, time.process_time() - c0
with open(cfg["answers"], "w") as f:
    for p, a in zip(prompts, answers):
        f.write(json.dumps({"prompt": p, "answer": a}) + "\\n")
print("BENCH_REPORT " + json.dumps({"t_import": T_IMPORT, "t_run": t_run, "cpu_run": cpu_run}))
'''

RUNNER_AIOHTTP = RUNNER_PRELUDE + '''
import asyncio
import aiohttp

T_IMPORT = time.perf_counter() - _T0
cfg = json.loads(sys.argv[1])
prompts = [json.loads(line)["prompt"] for line in open(cfg["prompts"])]


async def main():
    semaphore = asyncio.Semaphore(cfg["concurrency"])
    url = cfg["base_url"] + "/chat/completions"
    async with aiohttp.ClientSession() as session:

        async def one(prompt):
            body = {"model": "bench", "messages": [{"role": "user", "content": prompt}]}
            async with semaphore:
                async with session.post(url, json=body) as response:
                    response.raise_for_status()
                    data = await response.json()
            return data["choices"][0]["message"]["content"]

        return await asyncio.gather(*(one(p) for p in prompts))

''' + RUNNER_ASYNC_FINISH

RUNNER_OPENAI = RUNNER_PRELUDE + '''
import asyncio
import openai

T_IMPORT = time.perf_counter() - _T0
cfg = json.loads(sys.argv[1])
prompts = [json.loads(line)["prompt"] for line in open(cfg["prompts"])]


async def main():
    semaphore = asyncio.Semaphore(cfg["concurrency"])
    client = openai.AsyncOpenAI(base_url=cfg["base_url"], api_key="dummy")

    async def one(prompt):
        async with semaphore:
            response = await client.chat.completions.create(
                model="bench", messages=[{"role": "user", "content": prompt}]
            )
        return response.choices[0].message.content

    try:
        return await asyncio.gather(*(one(p) for p in prompts))
    finally:
        await client.close()

''' + RUNNER_ASYNC_FINISH

RUNNER_STILLROOM_API = RUNNER_PRELUDE + '''
import os
from stillroom import api

T_IMPORT = time.perf_counter() - _T0
cfg = json.loads(sys.argv[1])
backend = api.backend_config("bench", base_url=cfg["base_url"], concurrency=cfg["concurrency"],
                             client=cfg["client"])
options = dict(progress=False, use_cache=cfg["cache"], overwrite=True,
               diversity_embeddings=cfg["embeddings"])
# Warm-up: the lazy imports (aiohttp, pyarrow's writer, the report) and the first connections.
w = time.perf_counter()
api.complete(cfg["warmup_prompts"], cfg["warmup_out"], backend=backend,
             cache_dir=cfg["warmup_cache_dir"], **options)
t_warmup = time.perf_counter() - w
c0, w0 = time.process_time(), time.perf_counter()
result = api.complete(cfg["prompts"], cfg["out"], backend=backend, cache_dir=cfg["cache_dir"], **options)
t_run, cpu_run = time.perf_counter() - w0, time.process_time() - c0
print("BENCH_REPORT " + json.dumps({"t_import": T_IMPORT, "t_warmup": t_warmup, "t_run": t_run,
                                    "cpu_run": cpu_run, "counts": result.counts}))
'''

RUNNER_DISTILABEL = RUNNER_PRELUDE + '''
import os
from distilabel.models import OpenAILLM
from distilabel.pipeline import Pipeline
from distilabel.steps import LoadDataFromDicts, StepResources
from distilabel.steps.tasks import TextGeneration

T_IMPORT = time.perf_counter() - _T0
cfg = json.loads(sys.argv[1])
prompts = [json.loads(line)["prompt"] for line in open(cfg["prompts"])]

if __name__ == "__main__":
    c0, w0 = time.process_time(), time.perf_counter()
    with Pipeline(name="bench-client-overhead") as pipeline:
        load = LoadDataFromDicts(
            data=[{"instruction": p} for p in prompts], batch_size=cfg["load_batch_size"]
        )
        generate = TextGeneration(
            llm=OpenAILLM(model="bench", base_url=cfg["base_url"], api_key="dummy"),
            # OpenAILLM (an AsyncLLM) sends the rows of one batch concurrently and batches one
            # after another: input_batch_size is the number in flight (per replica).
            input_batch_size=cfg["concurrency"] // cfg["replicas"],
            resources=StepResources(replicas=cfg["replicas"]),
        )
        load >> generate
    distiset = pipeline.run(use_cache=False)
    t_run, cpu_run = time.perf_counter() - w0, time.process_time() - c0
    rows = distiset["default"]["train"]
    with open(cfg["answers"], "w") as f:
        for row in rows:
            f.write(json.dumps({"prompt": row["instruction"], "answer": row["generation"]}) + "\\n")
    print("BENCH_REPORT " + json.dumps({"t_import": T_IMPORT, "t_run": t_run, "cpu_run": cpu_run}))
'''

RUNNER_CURATOR = RUNNER_PRELUDE + '''
from bespokelabs import curator

T_IMPORT = time.perf_counter() - _T0
cfg = json.loads(sys.argv[1])
prompts = [json.loads(line)["prompt"] for line in open(cfg["prompts"])]


class Echo(curator.LLM):
    def prompt(self, row):
        return row["prompt"]

    def parse(self, row, response):
        return {"prompt": row["prompt"], "answer": response}


c0, w0 = time.process_time(), time.perf_counter()
llm = Echo(
    model_name="bench",
    backend="openai",
    backend_params={
        "base_url": cfg["base_url"],
        "api_key": "dummy",
        "max_concurrent_requests": cfg["concurrency"],
        # High enough never to throttle: the only limit is max_concurrent_requests.
        "max_requests_per_minute": 10_000_000,
        "max_tokens_per_minute": 1_000_000_000_000,
    },
)
response = llm([{"prompt": p} for p in prompts], working_dir=cfg["working_dir"])
t_run, cpu_run = time.perf_counter() - w0, time.process_time() - c0
dataset = response.dataset
with open(cfg["answers"], "w") as f:
    for row in dataset:
        f.write(json.dumps({"prompt": row["prompt"], "answer": row["answer"]}) + "\\n")
print("BENCH_REPORT " + json.dumps({"t_import": T_IMPORT, "t_run": t_run, "cpu_run": cpu_run}))
'''

# Counts a stillroom output folder's answers; run with stillroom's python (it has pyarrow).
COUNT_STILLROOM = """\
import glob, json, sys
import pyarrow.parquet as pq
ok = total = 0
for path in sorted(glob.glob(sys.argv[1] + "/data/*.parquet")):
    table = pq.read_table(path, columns=["prompt", "completion"])
    for prompt, answer in zip(table.column("prompt").to_pylist(), table.column("completion").to_pylist()):
        total += 1
        ok += answer == "echo: " + prompt
print(json.dumps({"ok": ok, "total": total}))
"""


def count_answers_jsonl(path: Path) -> dict[str, int]:
    ok = total = 0
    if path.exists():
        for line in path.open():
            row = json.loads(line)
            total += 1
            ok += row["answer"] == "echo: " + row["prompt"]
    return {"ok": ok, "total": total}
