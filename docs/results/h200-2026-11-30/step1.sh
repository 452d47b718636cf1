#!/bin/bash
# GPU host, call 1: vLLM 0.26 into /root/site, random 1B Llama into /root/model, mrw into /root/mrwsite.
set -u
bash .s1/unpack-vllm.sh 2>&1 | tail -25
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /root/mrwsite .s1/whl/*.whl && echo "mrw installed"
python3 - <<'PY'
import json; p = "/root/model/config.json"; c = json.load(open(p)); c["max_position_embeddings"] = 32768; json.dump(c, open(p, "w"), indent=1)
print("max_position_embeddings", c["max_position_embeddings"])
PY
nvidia-smi --query-gpu=name,power.limit,power.default_limit,power.min_limit,power.max_limit --format=csv
PYTHONPATH=/root/mrwsite:/root/site python3 -m mrw --version
