#!/bin/bash
# GPU host, call 2 (and 3: the same command resumes): the sweep; its directory comes back as a tarball.
set -u
T0=$(date +%s)
[ -f /root/site/vllm/__init__.py ] && [ -f /root/model/config.json ] || { echo "COLD: redo step 1"; exit 3; }
if [ ! -f /root/site/vllm/_C_stable_libtorch.abi3.so ]; then
  rm -f /root/site/vllm/_C_stable_libtorch.py
  python3 -c "import lzma,shutil; shutil.copyfileobj(lzma.open('.s2/C_stable.so.xz'), open('/root/site/vllm/_C_stable_libtorch.abi3.so','wb'))"
fi
export PYTHONPATH=/root/mrwsite:/root/site HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1
mkdir -p /root/tr && cp -n .s2/traces/*.json.gz /root/tr/
cd /root && timeout -s INT ${BUDGET:-480} python3 -m mrw sweep /root/tr/cop-x6.json.gz \
  --model /root/model --batch 8,32 --cap none,200 --out-scale 0.5,1,2 --time-scale 0 \
  --max-model-len 32768 --gpu-memory-utilization 0.85 --engine-arg=--attention-backend --engine-arg=FLASH_ATTN -o /root/sw-cop -q
echo "sweep rc=$? after $(( $(date +%s) - T0 )) s"
nvidia-smi --query-gpu=power.limit,power.default_limit --format=csv
python3 -c "
import json; m = json.load(open('/root/sw-cop/sweep.json'))
from collections import Counter; print(Counter(p['status'] for p in m['points']))
" 2>&1 | tail -2
tar czf $OUT/sw-cop.tgz -C /root sw-cop && ls -la $OUT
