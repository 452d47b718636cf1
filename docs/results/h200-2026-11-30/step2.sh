#!/bin/bash
# GPU host, call 2 (and 3: the same command resumes): a sweep; its directory comes back as a tarball.
#   sweep 1: bash .s2/step2.sh                          (both traces, --max-model-len 16384, /root/sw)
#   sweep 2: TRACES=cop-x6 LEN=32768 DIR=sw-cop bash .s2/step2.sh
# BUDGET: seconds before the sweep is interrupted (SIGINT: the point in flight is marked, the
# cap restored), so that the call ends inside the device's 10-minute limit; rerun to resume.
set -u
T0=$(date +%s)
[ -f /root/site/vllm/__init__.py ] && [ -f /root/model/config.json ] || { echo "COLD: redo step 1"; exit 3; }
if [ ! -f /root/site/vllm/_C_stable_libtorch.abi3.so ]; then
  rm -f /root/site/vllm/_C_stable_libtorch.py
  python3 -c "import lzma,shutil; shutil.copyfileobj(lzma.open('.s2/C_stable.so.xz'), open('/root/site/vllm/_C_stable_libtorch.abi3.so','wb'))"
fi
export PYTHONPATH=/root/mrwsite:/root/site HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1
mkdir -p /root/tr && cp .s2/traces/*.json.gz /root/tr/
DIR=${DIR:-sw}
# cd /root: the checkout's own mrw/ folder would shadow the installed package
cd /root && timeout -s INT ${BUDGET:-480} python3 -m mrw sweep $(for t in ${TRACES:-sum-x8 cop-x6}; do echo /root/tr/$t.json.gz; done) \
  --model /root/model --batch 8,32 --cap none,200 --out-scale 0.5,1,2 --time-scale 0 \
  --max-model-len ${LEN:-16384} --gpu-memory-utilization 0.85 --engine-arg=--attention-backend --engine-arg=FLASH_ATTN -o /root/$DIR -q
echo "sweep rc=$? after $(( $(date +%s) - T0 )) s"
nvidia-smi --query-gpu=power.limit,power.default_limit --format=csv
tar czf $OUT/$DIR.tgz -C /root $DIR && ls -la $OUT
